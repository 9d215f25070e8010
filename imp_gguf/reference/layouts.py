"""Renaming between transformers' own module names and Imp's checkpoint layouts.

Fixtures are built with transformers classes and saved in Imp's layout; the reference model loads
Imp's layout back into transformers classes. Only layout A (phi-msft) differs in more than a prefix.
"""

from __future__ import annotations

import re
from typing import Any

import torch

VISION = "vision_tower.vision_tower.vision_model."


# transformers Phi prefix <-> phi-msft prefix ({i}: block index). q/k/v <-> Wqkv is handled apart.
_PHI_RENAMES = [
    ("model.embed_tokens.", "transformer.embd.wte."),
    ("model.layers.{i}.input_layernorm.", "transformer.h.{i}.ln."),
    ("model.layers.{i}.self_attn.dense.", "transformer.h.{i}.mixer.out_proj."),
    ("model.layers.{i}.mlp.", "transformer.h.{i}.mlp."),
    ("model.final_layernorm.", "lm_head.ln."),
    ("lm_head.", "lm_head.linear."),
]


def _rename(name: str, to_msft: bool) -> str:
    for hf, msft in _PHI_RENAMES:
        src, dst = (hf, msft) if to_msft else (msft, hf)
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
    """transformers LLM state dict -> Imp checkpoint names (fusing Wqkv for layout A)."""
    if family != "phi2_msft":
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        m = re.match(r"^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
            continue
        out[_rename(name, to_msft=True)] = t
    for (bid, kind), parts in qkv.items():
        out[f"transformer.h.{bid}.mixer.Wqkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def lm_from_checkpoint(family: str, state: dict[str, torch.Tensor], n_embd: int) -> dict[str, torch.Tensor]:
    """Imp checkpoint names -> transformers LLM names (vision and projector tensors dropped)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if ".vision_tower." in name or ".mm_projector." in name:
            continue
        if family != "phi2_msft":
            out[name] = t
            continue
        m = re.match(r"^transformer\.h\.(\d+)\.mixer\.Wqkv\.(weight|bias)$", name)
        if m:
            for i, p in enumerate("qkv"):
                out[f"model.layers.{m.group(1)}.self_attn.{p}_proj.{m.group(2)}"] = t[i * n_embd:(i + 1) * n_embd]
            continue
        out[_rename(name, to_msft=False)] = t
    return out


def vision_prefix(family: str) -> str:
    return ("transformer." if family == "phi2_msft" else "model.") + VISION


def projector_prefix(family: str) -> str:
    return ("transformer." if family == "phi2_msft" else "model.") + "mm_projector."
