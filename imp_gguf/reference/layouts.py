"""Renaming between transformers' own module names and Imp's checkpoint layouts.

Fixtures are built with transformers classes and saved in Imp's layout; the reference model loads
Imp's layout back into transformers classes. What a layout changes is the family's own data
(imp_gguf.converters: `prefix`, `hf_renames`, `hf_fused_qkv`); only layout A (phi-msft) differs in more
than a prefix.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from imp_gguf.converters.base import LMFamily
from imp_gguf.converters.registry import FAMILIES
from imp_gguf.converters.siglip import VISION

# transformers' separate q/k/v projections, which a layout with `hf_fused_qkv` stores as one tensor
_HF_QKV = re.compile(r"^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _rename(fam: type[LMFamily], name: str, into_checkpoint: bool) -> str:
    for hf, ckpt in fam.hf_renames:
        src, dst = (hf, ckpt) if into_checkpoint else (ckpt, hf)
        pat = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        m = re.match(pat, name)
        if m:
            return dst.replace("{i}", m.group(1) if m.groups() else "") + name[m.end():]
    raise KeyError(name)


def to_checkpoint(family: str, lm: dict[str, Any], vision: dict[str, Any], projector: dict[str, Any], *,
                  vision_blocks: int | None = None, keep_post_ln_and_head: bool = False) -> dict[str, Any]:
    """The state dicts of transformers' modules -> one Imp checkpoint: the LLM renamed (Wqkv fused in
    layout A), SigLIP under the vision prefix without the blocks from `vision_blocks` on (Imp deletes the
    last) and, unless kept, without the post-LN and head Imp never runs; the projector under its prefix.
    Works on meta tensors too (shapes only)."""
    state = lm_to_checkpoint(family, {k: t for k, t in lm.items() if "rotary_emb" not in k})
    vp, pp = vision_prefix(family), projector_prefix(family)
    for k, t in vision.items():
        k = k.removeprefix("vision_model.")
        if k.endswith("position_ids") or (k.startswith(("post_layernorm.", "head.")) and not keep_post_ln_and_head):
            continue
        if vision_blocks is not None and k.startswith("encoder.layers.") and int(k.split(".")[2]) >= vision_blocks:
            continue
        state[vp + k] = t
    state.update({pp + k: t for k, t in projector.items()})
    return state


def lm_to_checkpoint(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers LLM state dict -> Imp checkpoint names (fusing q/k/v where the layout does)."""
    fam = FAMILIES[family]
    fused = fam.hf_fused_qkv
    if not fam.hf_renames and not fused:
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        m = _HF_QKV.match(name) if fused else None
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
            continue
        out[_rename(fam, name, into_checkpoint=True)] = t
    for (bid, kind), parts in qkv.items():
        assert fused is not None
        out[fused.format(bid=bid, kind=kind)] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def lm_from_checkpoint(family: str, state: dict[str, torch.Tensor], n_embd: int) -> dict[str, torch.Tensor]:
    """Imp checkpoint names -> transformers LLM names (vision and projector tensors dropped)."""
    fam = FAMILIES[family]
    fused = (re.compile("^" + re.escape(fam.hf_fused_qkv).replace(re.escape("{bid}"), r"(\d+)")
                        .replace(re.escape("{kind}"), "(weight|bias)") + "$") if fam.hf_fused_qkv else None)
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if fam.is_vision_or_projector(name):
            continue
        m = fused.match(name) if fused else None
        if m:
            for i, p in enumerate("qkv"):
                out[f"model.layers.{m.group(1)}.self_attn.{p}_proj.{m.group(2)}"] = t[i * n_embd:(i + 1) * n_embd]
            continue
        out[_rename(fam, name, into_checkpoint=False) if fam.hf_renames else name] = t
    return out


def vision_prefix(family: str) -> str:
    return FAMILIES[family].prefix + VISION


def projector_prefix(family: str) -> str:
    return FAMILIES[family].prefix + "mm_projector."
