"""Phi-2 (Imp-3B), phi-msft names under `transformer.` (layout A: Imp-v1.5-3B-196, and imp-v1-3b before
its "update phi-2 version"). Hyper-parameters and maths are those of phi2.py; only the table differs.
"""

from __future__ import annotations

from imp_gguf.converters.base import LMHparams, T, TensorRule as R, embd, square, vec
from imp_gguf.converters.phi2 import Phi2Common, mlp, vocab_b


def _qkv(h: LMHparams) -> tuple[int, ...]:
    return (3 * h.n_embd, h.n_embd)


def _qkv_b(h: LMHparams) -> tuple[int, ...]:
    return (3 * h.n_embd,)


class Phi2Msft(Phi2Common):
    name = "phi2_msft"
    description = "Phi-2, phi-msft layout (Imp-v1.5-3B-196, early imp-v1-3b revisions)"
    prefix = "transformer."
    marker = "transformer.embd.wte.weight"
    block_marker = "transformer.h.{bid}.ln.weight"
    embedding_name = "transformer.embd.wte.weight"
    fc1_name = "transformer.h.0.mlp.fc1.weight"
    hf_renames = (
        ("model.embed_tokens.", "transformer.embd.wte."),
        ("model.layers.{i}.input_layernorm.", "transformer.h.{i}.ln."),
        ("model.layers.{i}.self_attn.dense.", "transformer.h.{i}.mixer.out_proj."),
        ("model.layers.{i}.mlp.", "transformer.h.{i}.mlp."),
        ("model.final_layernorm.", "lm_head.ln."),
        ("lm_head.", "lm_head.linear."),
    )
    hf_fused_qkv = "transformer.h.{bid}.mixer.Wqkv.{kind}"
    rules = [
        R("transformer.embd.wte.weight", T.TOKEN_EMBD, embd),
        R("transformer.h.{bid}.ln.weight", T.ATTN_NORM, vec),
        R("transformer.h.{bid}.ln.bias", T.ATTN_NORM, vec),
        R("transformer.h.{bid}.mixer.Wqkv.weight", T.ATTN_QKV, _qkv),
        R("transformer.h.{bid}.mixer.Wqkv.bias", T.ATTN_QKV, _qkv_b),
        R("transformer.h.{bid}.mixer.out_proj.weight", T.ATTN_OUT, square),
        R("transformer.h.{bid}.mixer.out_proj.bias", T.ATTN_OUT, vec),
        *mlp("transformer.h.{bid}."),
        R("lm_head.ln.weight", T.OUTPUT_NORM, vec),
        R("lm_head.ln.bias", T.OUTPUT_NORM, vec),
        R("lm_head.linear.weight", T.OUTPUT, embd),
        R("lm_head.linear.bias", T.OUTPUT, vocab_b),
    ]
