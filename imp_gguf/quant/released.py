"""Tensor shapes of the released Imp models, so `recipes show` can say what a recipe becomes on them
(shape fallbacks included) without the multi-GB files. Only widths and counts matter to the rules.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from imp_gguf.converters.base import T, gguf_name
from imp_gguf.quant.recipes import Recipe
from imp_gguf.quant.rules import estimated_bytes, expected_types, fallbacks

# name: (n_embd, n_ff, n_layer, n_vocab, fused_qkv)  -- from the checkpoints' configs
LANGUAGE_MODELS: dict[str, tuple[int, int, int, int, bool]] = {
    "Phi-2 (imp-v1-3b, Imp-v1.5-3B-196, Imp-v1.5-3B-Phi2)": (2560, 10240, 32, 51200, True),
    "Qwen1.5-1.8B (Imp-v1.5-2B-Qwen1.5)": (2048, 5504, 24, 151936, False),
    "Phi-3-mini (Imp-v1.5-4B-Phi3)": (3072, 8192, 32, 32064, True),
}
SIGLIP = (1152, 4304, 26)  # width, FFN, blocks run by Imp


def lm_tensors(n_embd: int, n_ff: int, n_layer: int, n_vocab: int, fused_qkv: bool) -> list[dict[str, Any]]:
    ts = [{"name": gguf_name(T.TOKEN_EMBD), "type": "F16", "shape": [n_embd, n_vocab]},
          {"name": gguf_name(T.OUTPUT), "type": "F16", "shape": [n_embd, n_vocab]},
          {"name": gguf_name(T.OUTPUT_NORM), "type": "F32", "shape": [n_embd]}]
    sq = [n_embd, n_embd]
    attn = [(T.ATTN_QKV, [n_embd, 3 * n_embd])] if fused_qkv else [(t, sq) for t in (T.ATTN_Q, T.ATTN_K, T.ATTN_V)]
    return ts + _f16_blocks(n_layer, [*attn, (T.ATTN_OUT, sq), (T.FFN_UP, [n_embd, n_ff]), (T.FFN_DOWN, [n_ff, n_embd])])


def mmproj_tensors(n_embd_lm: int) -> list[dict[str, Any]]:
    width, ff, blocks = SIGLIP
    ts = [{"name": gguf_name(T.V_MMPROJ).format(bid=i), "type": "F16", "shape": shape}
          for i, shape in ((0, [width, n_embd_lm]), (2, [n_embd_lm, n_embd_lm]))]
    attn = [(t, [width, width]) for t in (T.V_ENC_ATTN_Q, T.V_ENC_ATTN_K, T.V_ENC_ATTN_V, T.V_ENC_ATTN_O)]
    return ts + _f16_blocks(blocks, [*attn, (T.V_ENC_FFN_UP, [width, ff]), (T.V_ENC_FFN_DOWN, [ff, width])])


def _f16_blocks(n_layer: int, kinds: list[tuple[T, list[int]]]) -> list[dict[str, Any]]:
    return [{"name": gguf_name(t).format(bid=i), "type": "F16", "shape": shape}
            for i in range(n_layer) for t, shape in kinds]


def _role(name: str) -> str:
    parts = name.split(".")
    return ".".join(p if not p.isdigit() else "*" for p in parts)


def released_fallbacks(recipe: Recipe) -> dict[str, list[str]]:
    """{model: ["blk.*.ffn_down.weight x12: Q4_K -> Q5_0", ...]}; an empty list means no fallback."""
    out: dict[str, list[str]] = {}
    for model, (n_embd, n_ff, n_layer, n_vocab, fused) in LANGUAGE_MODELS.items():
        lm = fallbacks(expected_types(recipe, lm_tensors(n_embd, n_ff, n_layer, n_vocab, fused), n_layer))
        counts = Counter((_role(c.name), c.wanted, c.type) for c in lm)
        out[model] = [f"{role} x{n}: {a} -> {b}" for (role, a, b), n in counts.items()]
    mm = fallbacks(expected_types(recipe, mmproj_tensors(2560), 0, part="mmproj"))
    counts = Counter((_role(c.name), c.wanted, c.type) for c in mm)
    out["SigLIP mmproj (all variants)"] = [f"{role} x{n}: {a} -> {b}" for (role, a, b), n in counts.items()]
    return out



def released_size(recipe: Recipe, model: str = "Phi-2 (imp-v1-3b, Imp-v1.5-3B-196, Imp-v1.5-3B-Phi2)") -> tuple[float, int]:
    """(bits per weight, tensor bytes) of a released language model quantized by `recipe`, predicted by
    llama.cpp's rules (shape fallbacks included): exact for the tensor data, no file needed."""
    n_embd, n_ff, n_layer, n_vocab, fused = LANGUAGE_MODELS[model]
    tensors = lm_tensors(n_embd, n_ff, n_layer, n_vocab, fused)
    nbytes, n_params = estimated_bytes(expected_types(recipe, tensors, n_layer), tensors)
    return 8.0 * nbytes / n_params, nbytes
