"""Qwen1.5-1.8B (Imp-2B): transformers Qwen2 names under `model.`; q/k/v carry biases."""

from __future__ import annotations

from typing import Any

from imp_gguf.families import register
from imp_gguf.families.base import LMFamily, LMHparams, TensorRule as R, embd, ffn_down, ffn_up, find, rope_param, square, vec


def _kv(h: LMHparams) -> tuple[int, ...]:
    return (h.n_head_kv * h.head_dim, h.n_embd)


def _kv_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_head_kv * h.head_dim,)


@register
class Qwen2(LMFamily):
    name = "qwen2"
    arch = "qwen2"
    model_types = ("imp_qwen2", "qwen2")
    hf_architecture = "Qwen2ForCausalLM"
    description = "Qwen1.5 (Imp-v1.5-2B-Qwen1.5)"
    prefix = "model."
    marker = "model.layers.0.mlp.gate_proj.weight"
    tokenizer_kind = "gpt2"
    tokenizer_pre = "qwen2"
    chat_template = "imp_qwen2"
    stop_token = "<|im_end|>"
    rules = [
        R("model.embed_tokens.weight", "token_embd.weight", embd),
        R("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", vec),
        R("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", square),
        R("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias", vec),
        R("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", _kv),
        R("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias", _kv_b),
        R("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", _kv),
        R("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias", _kv_b),
        R("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", square),
        R("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", vec),
        R("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", ffn_up),
        R("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", ffn_up),
        R("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", ffn_down),
        R("model.norm.weight", "output_norm.weight", vec),
        # Qwen2 runtime ties `output` to `token_embd` when absent.
        R("lm_head.weight", "output.weight", embd, optional=True),
    ]

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        n_head = int(find(config, ("num_attention_heads",)))
        emb = tensors.get("model.embed_tokens.weight")
        return LMHparams(
            arch=cls.arch,
            n_vocab=int(emb.shape[0]) if emb is not None else int(find(config, ("vocab_size",))),
            n_embd=int(find(config, ("hidden_size",))), n_ff=int(find(config, ("intermediate_size",))),
            n_layer=int(find(config, ("num_hidden_layers",))), n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),
            n_ctx=int(find(config, ("max_position_embeddings",), 32768)),
            rope_dims=int(find(config, ("hidden_size",))) // n_head,
            rope_theta=float(rope_param(config, "rope_theta", 1e6)),
            norm_eps=float(find(config, ("rms_norm_eps",), 1e-6)),
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
