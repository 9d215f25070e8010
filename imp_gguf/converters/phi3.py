"""Phi-3-mini (Imp-4B): fused qkv_proj and gate_up_proj, SentencePiece tokenizer, BOS added."""

from __future__ import annotations

from typing import Any

from imp_gguf.converters.base import (ConfigDefaults, LMFamily, LMHparams, T, TensorRule as R, divide, embd, ffn_down,
                                      square, tensor_shape, vec)

# transformers' Phi3Config (MILVLG/imp vendors the same defaults; ImpPhi3Config extends it unchanged).
_PHI3 = {"n_head": 32, "n_ctx": 4096, "orig_ctx": 4096, "rope_theta": 10000.0, "norm_eps": 1e-5,
         "partial_rotary_factor": 1.0}
PHI3_DEFAULTS = {
    "imp_phi3": ConfigDefaults("Imp's ImpPhi3Config (= Phi3Config)", _PHI3),
    "phi3": ConfigDefaults("transformers Phi3Config", _PHI3),
}


def _qkv(h: LMHparams) -> tuple[int, ...]:
    return ((h.n_head + 2 * h.n_head_kv) * h.head_dim, h.n_embd)


def _gate_up(h: LMHparams) -> tuple[int, ...]:
    return (2 * h.n_ff, h.n_embd)


class Phi3(LMFamily):
    name = "phi3"
    arch = "phi3"
    model_types = ("imp_phi3", "phi3")
    hf_architecture = "Phi3ForCausalLM"
    description = "Phi-3-mini (Imp-v1.5-4B-Phi3)"
    prefix = "model."
    marker = "model.layers.0.self_attn.qkv_proj.weight"
    block_marker = "model.layers.{bid}.input_layernorm.weight"
    config_defaults = PHI3_DEFAULTS
    tokenizer_kind = "llama"
    tokenizer_pre = "default"
    chat_template = "imp_phi3"
    other_chat_templates = ("imp_phi3_nosys",)  # the 4B's template before imp@8f1784c (chat_templates.py)
    add_bos = True
    stop_token = "<|end|>"
    rules = [
        R("model.embed_tokens.weight", T.TOKEN_EMBD, embd),
        R("model.layers.{bid}.input_layernorm.weight", T.ATTN_NORM, vec),
        R("model.layers.{bid}.self_attn.qkv_proj.weight", T.ATTN_QKV, _qkv),
        R("model.layers.{bid}.self_attn.o_proj.weight", T.ATTN_OUT, square),
        R("model.layers.{bid}.post_attention_layernorm.weight", T.FFN_NORM, vec),
        # llama.cpp's phi3 graph splits the fused gate‖up itself: keep it fused.
        R("model.layers.{bid}.mlp.gate_up_proj.weight", T.FFN_UP, _gate_up),
        R("model.layers.{bid}.mlp.down_proj.weight", T.FFN_DOWN, ffn_down),
        R("model.norm.weight", T.OUTPUT_NORM, vec),
        R("lm_head.weight", T.OUTPUT, embd),
    ]

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        rd = cls.reader(config)
        n_vocab, n_embd, n_head, head_dim = cls.read_widths(rd, tensors)
        gate_up = tensor_shape(tensors, "model.layers.0.mlp.gate_up_proj.weight", 2, "fused FFN gate+up")[0]
        n_ff = rd.size("as FFN width", divide(gate_up, 2, "fused gate+up rows"), ("intermediate_size",))
        qkv_heads = divide(tensor_shape(tensors, "model.layers.0.self_attn.qkv_proj.weight", 2, "fused qkv")[0],
                           head_dim, f"fused qkv rows over heads of {head_dim}")
        n_head_kv = rd.size("key/value heads", divide(qkv_heads - n_head, 2, "fused qkv heads beyond the queries"),
                            ("num_key_value_heads",))
        n_ctx = int(rd.value("n_ctx", ("max_position_embeddings",)))
        prf = float(rd.value("partial_rotary_factor", ("partial_rotary_factor",), rope=True))
        orig_ctx = int(rd.value("orig_ctx", ("original_max_position_embeddings",), rope=True))
        sliding = config.get("sliding_window")  # Phi3Config's default is None: no window
        return LMHparams(
            arch=cls.arch, n_vocab=n_vocab, n_embd=n_embd, n_ff=n_ff, n_layer=cls.n_layer(rd, tensors),
            n_head=n_head, n_head_kv=n_head_kv, n_ctx=n_ctx,
            rope_dims=int(prf * n_embd) // n_head,
            rope_theta=float(rd.value("rope_theta", ("rope_theta",), rope=True)),
            norm_eps=float(rd.value("norm_eps", ("rms_norm_eps",))),
            extra={"orig_ctx": orig_ctx, "sliding_window": int(sliding or 0)},
            defaults=rd.used, defaults_from=rd.defaults.source,
        )

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        super().add_arch_kv(writer, hp)
        writer.add_rope_scaling_orig_ctx_len(hp.extra["orig_ctx"])
        writer.add_layer_norm_rms_eps(hp.norm_eps)
        writer.add_rope_dimension_count(hp.rope_dims)
        writer.add_rope_freq_base(hp.rope_theta)
        writer.add_sliding_window(hp.extra["sliding_window"])

    @classmethod
    def reference_config(cls, hp: LMHparams) -> dict[str, Any]:
        return {
            "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
            "vocab_size": hp.n_vocab, "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
            "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head,
            "num_key_value_heads": hp.n_head_kv, "max_position_embeddings": hp.n_ctx,
            "original_max_position_embeddings": hp.extra["orig_ctx"], "rope_theta": hp.rope_theta,
            "rms_norm_eps": hp.norm_eps, "hidden_act": "silu", "tie_word_embeddings": False,
            "sliding_window": hp.extra["sliding_window"] or None, "rope_scaling": None,
            "attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "bos_token_id": 1, "eos_token_id": None, "pad_token_id": None,
        }
