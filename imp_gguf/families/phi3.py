"""Phi-3-mini (Imp-4B): fused qkv_proj and gate_up_proj, SentencePiece tokenizer, BOS added."""

from __future__ import annotations

from typing import Any

from imp_gguf.families import register
from imp_gguf.families.base import LMFamily, LMHparams, TensorRule as R, embd, ffn_down, find, rope_param, square, vec


def _qkv(h: LMHparams) -> tuple[int, ...]:
    return ((h.n_head + 2 * h.n_head_kv) * h.head_dim, h.n_embd)


def _gate_up(h: LMHparams) -> tuple[int, ...]:
    return (2 * h.n_ff, h.n_embd)


@register
class Phi3(LMFamily):
    name = "phi3"
    arch = "phi3"
    model_types = ("imp_phi3", "phi3")
    hf_architecture = "Phi3ForCausalLM"
    description = "Phi-3-mini (Imp-v1.5-4B-Phi3)"
    prefix = "model."
    marker = "model.layers.0.self_attn.qkv_proj.weight"
    tokenizer_kind = "llama"
    tokenizer_pre = "default"
    chat_template = "imp_phi3"
    add_bos = True
    stop_token = "<|end|>"
    rules = [
        R("model.embed_tokens.weight", "token_embd.weight", embd),
        R("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", vec),
        R("model.layers.{bid}.self_attn.qkv_proj.weight", "blk.{bid}.attn_qkv.weight", _qkv),
        R("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", square),
        R("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", vec),
        # llama.cpp's phi3 graph splits the fused gate‖up itself: keep it fused.
        R("model.layers.{bid}.mlp.gate_up_proj.weight", "blk.{bid}.ffn_up.weight", _gate_up),
        R("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", ffn_down),
        R("model.norm.weight", "output_norm.weight", vec),
        R("lm_head.weight", "output.weight", embd),
    ]

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        n_embd = int(find(config, ("hidden_size",)))
        n_head = int(find(config, ("num_attention_heads",)))
        n_ctx = int(find(config, ("max_position_embeddings",), 4096))
        prf = float(rope_param(config, "partial_rotary_factor", 1.0))
        emb = tensors.get("model.embed_tokens.weight")
        return LMHparams(
            arch=cls.arch,
            n_vocab=int(emb.shape[0]) if emb is not None else int(find(config, ("vocab_size",))),
            n_embd=n_embd, n_ff=int(find(config, ("intermediate_size",))),
            n_layer=int(find(config, ("num_hidden_layers",))), n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head), n_ctx=n_ctx,
            rope_dims=int(prf * n_embd) // n_head,
            rope_theta=float(rope_param(config, "rope_theta", 10000.0)),
            norm_eps=float(find(config, ("rms_norm_eps",), 1e-5)),
            extra={
                "orig_ctx": int(rope_param(config, "original_max_position_embeddings", n_ctx)),
                "sliding_window": int(config.get("sliding_window") or 0),
            },
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
