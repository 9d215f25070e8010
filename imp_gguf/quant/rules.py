"""Predict the type llama.cpp's quantizer gives every tensor, so a written file can be checked
against its recipe and every shape fallback is reported instead of happening silently.

A mirror of `src/llama-quant.cpp` in the pinned llama.cpp (llama-cpp-python 0.3.36, 0c1e57098):
`tensor_allows_quantization`, `llama_tensor_get_type` (token-embedding/output types, overrides, the
mixture in `llama_tensor_get_type_impl`, `tensor_type_fallback`), limited to the file types in
recipes.FTYPE_BASE and to dense (non-MoE, non-70B, non-Falcon) models. Its counters advance in the
quantizer's order (layer, then name), which is why the list is sorted the same way first.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from imp_gguf.quant.recipes import QuantSpec, Recipe, block_size, is_quantized

# tensor_type_fallback: a 256-block type whose rows do not fit falls back to a 32-block type.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}

# Name pieces that tensor_allows_quantization never quantizes (the subset that can occur here and
# in neighbouring architectures; norms, 1-D tensors and non-".weight" names are handled separately).
NEVER_QUANTIZED = ("ffn_gate_inp.weight", ".position_embd", ".patch_embd", ".patch_merger", ".rel_pos",
                   "sam.pos_embd", "sam.neck.", "sam.net_", "attn_rel_b.weight", "altup", "laurel",
                   "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight")
NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")

_BLK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class TypeChoice:
    name: str
    ne0: int  # row width: what the block size must divide
    source: str  # type in the input file
    wanted: str  # the recipe's choice (override, mixture or base type)
    type: str  # what llama.cpp writes, after its shape fallback
    rule: str  # why `wanted`, in words

    @property
    def fallback(self) -> bool:
        return self.type != self.wanted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"fallback": self.fallback}


def category(name: str) -> str:
    """tensor_get_category: broad roles by the literal name substrings llama-quant.cpp checks, in its order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def is_attn_v_like(cat: str) -> bool:
    # fused QKV counts as attn_v: the v-rules (not the unreachable QKV branch) apply to it
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def n_dims(shape: list[int]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


def allows_quantization(name: str, n_dims: int) -> bool:
    if n_dims < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    if name in NEVER_QUANTIZED_EXACT:
        return False
    return not any(piece in name for piece in NEVER_QUANTIZED)


def quantizer_order(tensors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """llama_model_loader's weight_name_comparer: by `blk.N.` prefix (-1 if none), then by name."""
    def key(t: dict[str, Any]) -> tuple[int, str]:
        m = _BLK.match(t["name"])
        return (int(m.group(1)) if m else -1, t["name"])
    return sorted(tensors, key=key)


def fallback(wanted: str, ne0: int) -> str:
    """tensor_type_fallback."""
    if ne0 % block_size(wanted) == 0:
        return wanted
    out = FALLBACK.get(wanted, wanted)
    return out if ne0 % block_size(out) == 0 else "F16"  # "must use F16 due to unusual shape"


class _Mixture:
    """llama_tensor_get_type_impl for the supported file types, with its per-category counters."""

    def __init__(self, ftype: str, n_attention_wv: int, n_layer: int, tied: bool, output_param: str | None):
        self.ftype, self.n_wv, self.n_layer, self.tied, self.output_param = ftype, n_attention_wv, n_layer, tied, output_param
        self.i_wv = self.i_down = 0

    def choose(self, cat: str, ne0: int, base: str) -> tuple[str, str]:
        f = self.ftype
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.output_param:
                return self.output_param, "recipe output type (tied embeddings)"
            if ne0 % block_size(base) != 0:
                return "Q8_0", f"output: {ne0} columns not divisible by {block_size(base)}"
            if base != "Q8_0":
                return "Q6_K", "output: Q6_K"
            return base, "output"
        if cat == "token_embd":
            return base, "base type"
        if is_attn_v_like(cat):
            i, n = self.i_wv, self.n_wv
            self.i_wv += 1
            if f == "Q3_K_M":
                return ("Q5_K", f"{f}: first 2 attn_v") if i < 2 else ("Q4_K", f"{f}: attn_v")
            if f == "Q3_K_L":
                return "Q5_K", f"{f}: attn_v"
            if f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
                return "Q6_K", f"{f}: attn_v use_more_bits({i},{n})"
            if f == "Q4_K_S" and i < 4:
                return "Q5_K", f"{f}: first 4 attn_v"
            return base, "base type"
        if cat == "ffn_down":
            i, n = self.i_down, self.n_layer
            self.i_down += 1
            if f == "Q3_K_M":
                return ("Q5_K", f"{f}: ffn_down i < n/16") if i < n // 16 else ("Q4_K", f"{f}: ffn_down")
            if f == "Q3_K_L":
                return "Q5_K", f"{f}: ffn_down"
            if f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
                return "Q6_K", f"{f}: ffn_down use_more_bits({i},{n})"
            if f == "Q4_K_S" and i < n // 8:
                return "Q5_K", f"{f}: ffn_down i < n/8"
            return base, "base type"
        if cat == "attn_output":
            if f == "Q3_K_M":
                return "Q4_K", f"{f}: attn_output"
            if f == "Q3_K_L":
                return "Q5_K", f"{f}: attn_output"
        return base, "base type"


def expected_types(recipe: Recipe | QuantSpec, tensors: list[dict[str, Any]], n_layer: int, *,
                   part: str = "lm") -> list[TypeChoice]:
    """The type of every tensor after quantizing a file with `tensors` (gguf_info.tensor_table rows:
    name, type, shape in ggml order) by the recipe's `part` ("lm" or "mmproj"), in the quantizer's order.

    n_layer is the model's block count (ffn_down counters use it); 0 for an mmproj (clip loads no hparams).
    """
    spec = recipe if isinstance(recipe, QuantSpec) else (recipe.lm if part == "lm" else recipe.mmproj)
    base = spec.base_type
    ordered = quantizer_order(tensors)
    cats = {t["name"]: category(t["name"]) for t in ordered}
    tied = "output" not in cats.values()
    mix = _Mixture(spec.ftype, sum(is_attn_v_like(c) for c in cats.values()), n_layer, tied, spec.output)
    patterns = [(re.compile(p), t, p) for p, t in spec.overrides]
    out = []
    for t in ordered:
        name, src, shape = t["name"], t["type"], [int(x) for x in t["shape"]]
        ne0, cat = shape[0], cats[name]
        if spec.is_copy or not allows_quantization(name, n_dims(shape)):
            out.append(TypeChoice(name, ne0, src, src, src, "kept (never quantized)" if not spec.is_copy else "copied"))
            continue
        if spec.token_embd and cat == "token_embd":  # returned as is: no mixture, no fallback
            out.append(TypeChoice(name, ne0, src, spec.token_embd, spec.token_embd, "recipe token_embd type"))
            continue
        if spec.output and cat == "output":
            out.append(TypeChoice(name, ne0, src, spec.output, spec.output, "recipe output type"))
            continue
        if not is_quantized(base):
            out.append(TypeChoice(name, ne0, src, base, base, "base type"))
            continue
        hit = next(((typ, pat) for rx, typ, pat in patterns if rx.search(name)), None)
        if hit:
            wanted, rule = hit[0], f"override {hit[1]!r}"
        elif spec.pure:
            wanted, rule = base, "pure"
        else:
            wanted, rule = mix.choose(cat, ne0, base)
        out.append(TypeChoice(name, ne0, src, wanted, fallback(wanted, ne0), rule))
    return out


def fallbacks(choices: list[TypeChoice]) -> list[TypeChoice]:
    return [c for c in choices if c.fallback]


def estimated_bytes(choices: list[TypeChoice], tensors: list[dict[str, Any]]) -> tuple[int, int]:
    """(tensor bytes, parameters) of a file whose `tensors` (tensor_table rows) get `choices`: exact for
    the tensor data, without writing anything."""
    n_el = {t["name"]: math.prod(int(x) for x in t["shape"]) for t in tensors}
    nbytes = 0
    for c in choices:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[c.type]]
        nbytes += n_el[c.name] // block * size
    return nbytes, sum(n_el.values())
