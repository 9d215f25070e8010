"""Phi-2 (Imp-3B): both tensor layouts of the published checkpoints.

Layout A, phi-msft names under `transformer.` (imp-v1-3b, Imp-v1.5-3B-196), and layout B,
transformers-Phi names under `model.` (Imp-v1.5-3B-Phi2). Same maths: a parallel attention+MLP
block off one LayerNorm, partial NeoX RoPE, GELU (tanh), biased lm_head.
"""

from __future__ import annotations

from typing import Any

from imp_gguf.errors import BadInput
from imp_gguf.families import register
from imp_gguf.families.base import LMFamily, LMHparams, TensorRule as R, embd, ffn_down, ffn_up, find, rope_param, square, vec


def _qkv(h: LMHparams) -> tuple[int, ...]:
    return (3 * h.n_embd, h.n_embd)


def _qkv_b(h: LMHparams) -> tuple[int, ...]:
    return (3 * h.n_embd,)


def _up_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_ff,)


def _vocab_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_vocab,)


def _mlp(block: str) -> list[R]:
    """fc1/fc2 keep their names in both layouts; only the block prefix differs."""
    return [
        R(block + "mlp.fc1.weight", "blk.{bid}.ffn_up.weight", ffn_up),
        R(block + "mlp.fc1.bias", "blk.{bid}.ffn_up.bias", _up_b),
        R(block + "mlp.fc2.weight", "blk.{bid}.ffn_down.weight", ffn_down),
        R(block + "mlp.fc2.bias", "blk.{bid}.ffn_down.bias", vec),
    ]


class _Phi2Common(LMFamily):
    arch = "phi2"
    model_types = ("imp", "phi", "phi-msft")
    hf_architecture = "PhiForCausalLM"
    tokenizer_kind = "gpt2"
    tokenizer_pre = "phi-2"
    chat_template = "imp_phi2"
    stop_token = "</s>"
    embedding_name: str

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        n_embd = int(find(config, ("n_embd", "hidden_size"), what="hidden size"))
        n_head = int(find(config, ("n_head", "num_attention_heads"), what="head count"))
        n_layer = int(find(config, ("n_layer", "num_hidden_layers"), what="layer count"))
        if n_head <= 0 or n_embd % n_head:
            raise BadInput(f"config.json: hidden size {n_embd} is not divisible by {n_head} heads")
        head_dim = n_embd // n_head
        if config.get("rotary_dim") is not None:  # phi-msft keys
            rope_dims = int(config["rotary_dim"])
        else:
            rope_dims = int(float(rope_param(config, "partial_rotary_factor", 0.4)) * head_dim)
        n_ff = config.get("n_inner") or config.get("intermediate_size") or 4 * n_embd
        emb = tensors.get(cls.embedding_name)
        n_vocab = int(emb.shape[0]) if emb is not None else int(find(config, ("vocab_size",)))
        return LMHparams(
            arch=cls.arch, n_vocab=n_vocab, n_embd=n_embd, n_ff=int(n_ff), n_layer=n_layer,
            n_head=n_head, n_head_kv=n_head,
            n_ctx=int(find(config, ("n_positions", "max_position_embeddings"), 2048)),
            rope_dims=rope_dims, rope_theta=float(rope_param(config, "rope_theta", 10000.0)),
            norm_eps=float(find(config, ("layer_norm_epsilon", "layer_norm_eps"), 1e-5)),
        )

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        super().add_arch_kv(writer, hp)
        writer.add_layer_norm_eps(hp.norm_eps)
        writer.add_rope_dimension_count(hp.rope_dims)

    @classmethod
    def reference_config(cls, hp: LMHparams) -> dict[str, Any]:
        return {
            "architectures": ["PhiForCausalLM"], "model_type": "phi",
            "vocab_size": hp.n_vocab, "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
            "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head, "num_key_value_heads": hp.n_head,
            "max_position_embeddings": hp.n_ctx, "partial_rotary_factor": hp.rope_dims / hp.head_dim,
            "rope_theta": hp.rope_theta, "layer_norm_eps": hp.norm_eps, "hidden_act": "gelu_new",
            "qk_layernorm": False, "tie_word_embeddings": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attention_dropout": 0.0,
        }


@register
class Phi2Msft(_Phi2Common):
    name = "phi2_msft"
    description = "Phi-2, phi-msft layout (imp-v1-3b, Imp-v1.5-3B-196)"
    prefix = "transformer."
    marker = "transformer.embd.wte.weight"
    embedding_name = "transformer.embd.wte.weight"
    rules = [
        R("transformer.embd.wte.weight", "token_embd.weight", embd),
        R("transformer.h.{bid}.ln.weight", "blk.{bid}.attn_norm.weight", vec),
        R("transformer.h.{bid}.ln.bias", "blk.{bid}.attn_norm.bias", vec),
        R("transformer.h.{bid}.mixer.Wqkv.weight", "blk.{bid}.attn_qkv.weight", _qkv),
        R("transformer.h.{bid}.mixer.Wqkv.bias", "blk.{bid}.attn_qkv.bias", _qkv_b),
        R("transformer.h.{bid}.mixer.out_proj.weight", "blk.{bid}.attn_output.weight", square),
        R("transformer.h.{bid}.mixer.out_proj.bias", "blk.{bid}.attn_output.bias", vec),
        *_mlp("transformer.h.{bid}."),
        R("lm_head.ln.weight", "output_norm.weight", vec),
        R("lm_head.ln.bias", "output_norm.bias", vec),
        R("lm_head.linear.weight", "output.weight", embd),
        R("lm_head.linear.bias", "output.bias", _vocab_b),
    ]


@register
class Phi2(_Phi2Common):
    name = "phi2"
    description = "Phi-2, transformers layout (Imp-v1.5-3B-Phi2)"
    prefix = "model."
    marker = "model.final_layernorm.weight"
    embedding_name = "model.embed_tokens.weight"
    rules = [
        R("model.embed_tokens.weight", "token_embd.weight", embd),
        R("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", vec),
        R("model.layers.{bid}.input_layernorm.bias", "blk.{bid}.attn_norm.bias", vec),
        *[R(f"model.layers.{{bid}}.self_attn.{p}_proj.{k}", f"blk.{{bid}}.attn_{p}.{k}", square if k == "weight" else vec)
          for p in "qkv" for k in ("weight", "bias")],
        R("model.layers.{bid}.self_attn.dense.weight", "blk.{bid}.attn_output.weight", square),
        R("model.layers.{bid}.self_attn.dense.bias", "blk.{bid}.attn_output.bias", vec),
        *_mlp("model.layers.{bid}."),
        R("model.final_layernorm.weight", "output_norm.weight", vec),
        R("model.final_layernorm.bias", "output_norm.bias", vec),
        R("lm_head.weight", "output.weight", embd),
        R("lm_head.bias", "output.bias", _vocab_b),
    ]
