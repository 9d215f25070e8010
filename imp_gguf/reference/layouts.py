"""Renaming between transformers' own module names and Imp's checkpoint layouts.

Fixtures are built with transformers classes and saved in Imp's layout; the reference model loads
Imp's layout back into transformers classes. Only layout A (phi-msft) differs in more than a prefix.
"""

from __future__ import annotations

import re

import torch

VISION = "vision_tower.vision_tower.vision_model."


def _msft_from_hf(name: str) -> str | None:
    rules = [
        (r"^model\.embed_tokens\.", "transformer.embd.wte."),
        (r"^model\.layers\.(\d+)\.input_layernorm\.", r"transformer.h.\1.ln."),
        (r"^model\.layers\.(\d+)\.self_attn\.dense\.", r"transformer.h.\1.mixer.out_proj."),
        (r"^model\.layers\.(\d+)\.mlp\.", r"transformer.h.\1.mlp."),
        (r"^model\.final_layernorm\.", "lm_head.ln."),
        (r"^lm_head\.", "lm_head.linear."),
    ]
    for pat, rep in rules:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    return None


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
        new = _msft_from_hf(name)
        if new is None:
            raise KeyError(name)
        out[new] = t
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
        inv = [
            (r"^transformer\.embd\.wte\.", "model.embed_tokens."),
            (r"^transformer\.h\.(\d+)\.ln\.", r"model.layers.\1.input_layernorm."),
            (r"^transformer\.h\.(\d+)\.mixer\.out_proj\.", r"model.layers.\1.self_attn.dense."),
            (r"^transformer\.h\.(\d+)\.mlp\.", r"model.layers.\1.mlp."),
            (r"^lm_head\.ln\.", "model.final_layernorm."),
            (r"^lm_head\.linear\.", "lm_head."),
        ]
        for pat, rep in inv:
            if re.match(pat, name):
                out[re.sub(pat, rep, name)] = t
                break
        else:
            raise KeyError(name)
    return out


def vision_prefix(family: str) -> str:
    return ("transformer." if family == "phi2_msft" else "model.") + VISION


def projector_prefix(family: str) -> str:
    return ("transformer." if family == "phi2_msft" else "model.") + "mm_projector."
