"""Qwen1.5-1.8B (Imp-2B): transformers Qwen2 names under `model.`; q/k/v carry biases."""

from __future__ import annotations

from typing import Any

from imp_gguf.converters.base import (ConfigDefaults, LMFamily, LMHparams, T, TensorRule as R, divide, embd, ffn_down,
                                      ffn_up, square, tensor_shape, vec)

# transformers' Qwen2Config (and MILVLG/imp's vendored copy, which ImpQwen2Config extends unchanged).
# rope_theta defaults to 10000 there: Qwen1.5's 1e6 must come from the config, never from here.
_QWEN2 = {"n_head": 32, "n_ctx": 32768, "rope_theta": 10000.0, "norm_eps": 1e-6}
QWEN2_DEFAULTS = {
    "imp_qwen2": ConfigDefaults("Imp's ImpQwen2Config (= Qwen2Config)", _QWEN2),
    "qwen2": ConfigDefaults("transformers Qwen2Config", _QWEN2),
}


def _kv(h: LMHparams) -> tuple[int, ...]:
    return (h.n_head_kv * h.head_dim, h.n_embd)


def _kv_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_head_kv * h.head_dim,)


class Qwen2(LMFamily):
    name = "qwen2"
    arch = "qwen2"
    model_types = ("imp_qwen2", "qwen2")
    hf_architecture = "Qwen2ForCausalLM"
    description = "Qwen1.5 (Imp-v1.5-2B-Qwen1.5)"
    prefix = "model."
    marker = "model.layers.0.mlp.gate_proj.weight"
    block_marker = "model.layers.{bid}.input_layernorm.weight"
    config_defaults = QWEN2_DEFAULTS
    tokenizer_kind = "gpt2"
    tokenizer_pre = "qwen2"
    chat_template = "imp_qwen2"
    stop_token = "<|im_end|>"
    rules = [
        R("model.embed_tokens.weight", T.TOKEN_EMBD, embd),
        R("model.layers.{bid}.input_layernorm.weight", T.ATTN_NORM, vec),
        R("model.layers.{bid}.self_attn.q_proj.weight", T.ATTN_Q, square),
        R("model.layers.{bid}.self_attn.q_proj.bias", T.ATTN_Q, vec),
        R("model.layers.{bid}.self_attn.k_proj.weight", T.ATTN_K, _kv),
        R("model.layers.{bid}.self_attn.k_proj.bias", T.ATTN_K, _kv_b),
        R("model.layers.{bid}.self_attn.v_proj.weight", T.ATTN_V, _kv),
        R("model.layers.{bid}.self_attn.v_proj.bias", T.ATTN_V, _kv_b),
        R("model.layers.{bid}.self_attn.o_proj.weight", T.ATTN_OUT, square),
        R("model.layers.{bid}.post_attention_layernorm.weight", T.FFN_NORM, vec),
        R("model.layers.{bid}.mlp.gate_proj.weight", T.FFN_GATE, ffn_up),
        R("model.layers.{bid}.mlp.up_proj.weight", T.FFN_UP, ffn_up),
        R("model.layers.{bid}.mlp.down_proj.weight", T.FFN_DOWN, ffn_down),
        R("model.norm.weight", T.OUTPUT_NORM, vec),
        # Qwen2 runtime ties `output` to `token_embd` when absent.
        R("lm_head.weight", T.OUTPUT, embd, optional=True),
    ]

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        rd = cls.reader(config)
        n_vocab, n_embd, n_head, head_dim = cls.read_widths(rd, tensors)
        n_ff = rd.size("as FFN width", tensor_shape(tensors, "model.layers.0.mlp.gate_proj.weight", 2, "FFN gate")[0],
                       ("intermediate_size",))
        kv_rows = tensor_shape(tensors, "model.layers.0.self_attn.k_proj.weight", 2, "attention key")[0]
        n_head_kv = rd.size("key/value heads", divide(kv_rows, head_dim, f"key rows over heads of {head_dim}"),
                            ("num_key_value_heads",))
        return LMHparams(
            arch=cls.arch, n_vocab=n_vocab, n_embd=n_embd, n_ff=n_ff, n_layer=cls.n_layer(rd, tensors),
            n_head=n_head, n_head_kv=n_head_kv,
            n_ctx=int(rd.value("n_ctx", ("max_position_embeddings",))),
            rope_dims=head_dim,
            rope_theta=float(rd.value("rope_theta", ("rope_theta",), rope=True)),
            norm_eps=float(rd.value("norm_eps", ("rms_norm_eps",))),
            defaults=rd.used, defaults_from=rd.defaults.source,
        )

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        super().add_arch_kv(writer, hp)
        writer.add_rope_freq_base(hp.rope_theta)
        writer.add_layer_norm_rms_eps(hp.norm_eps)

    @classmethod
    def reference_config(cls, hp: LMHparams) -> dict[str, Any]:
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": hp.n_vocab, "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
            "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head,
            "num_key_value_heads": hp.n_head_kv, "max_position_embeddings": hp.n_ctx,
            "rope_theta": hp.rope_theta, "rms_norm_eps": hp.norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": False, "use_sliding_window": False, "attention_dropout": 0.0,
        }
