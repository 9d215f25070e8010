"""Names a user types: one spelling rule everywhere (case-insensitive, llama.cpp's aliases accepted)
and a "did you mean" on a miss."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

from imp_gguf.errors import BadInput

# The converter's own output types (--outtype), as llama.cpp's convert_hf_to_gguf.py spells them.
OUTTYPE_NAMES = ("f32", "f16", "bf16", "q8_0")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The nearest choice to `word` (case-insensitive), or None when nothing is close."""
    by_lower = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[hit[0]] if hit else None


def unknown(what: str, word: str, choices: Iterable[str], *, also: str = "") -> BadInput:
    """`unknown <what> 'x'; did you mean y? (known: ...)` as one BadInput line."""
    choices = list(choices)
    guess = closest(word, choices)
    hint = f"; did you mean {guess}?" if guess else ""
    return BadInput(f"unknown {what} {word!r}{hint} (known: {', '.join(choices)}{also})")


def resolve_outtype(spec: str) -> str:
    """--outtype in any case (F16, f16); a quantizer type names --quant instead."""
    low = spec.strip().lower()
    if low in OUTTYPE_NAMES:
        return low
    from imp_gguf.quant.recipes import is_quant_name

    if is_quant_name(low):
        raise BadInput(f"--outtype is the converter's own type ({', '.join(OUTTYPE_NAMES)}); "
                       f"{spec} is a quantizer type: use --quant {low}")
    guess = closest(spec, OUTTYPE_NAMES)
    raise BadInput(f"--outtype must be one of {', '.join(OUTTYPE_NAMES)}, not {spec!r}"
                   + (f"; did you mean {guess}?" if guess else ""))


@dataclass(frozen=True)
class ConvertOptions:
    outtype: str  # the converter's type (f16 when a recipe follows)
    recipe: Any  # a quant Recipe, or None for the converter's file as is


def resolve_recipe(quant: str | None) -> Any:
    """--quant: None or "none" -> no recipe; else the recipe (any case, llama-quantize's names too)."""
    if quant is None or quant.strip().lower() == "none":
        return None
    from imp_gguf.quant.recipes import load_recipe

    return load_recipe(quant)


def resolve_convert_options(*, outtype: str | None, quant: str | None, keep_intermediate: bool) -> ConvertOptions:
    """convert's type flags, with contradictions refused instead of one flag silently winning."""
    recipe = resolve_recipe(quant)
    kind = resolve_outtype(outtype) if outtype is not None else None
    if recipe is None:
        if keep_intermediate:
            raise BadInput("--keep-intermediate needs --quant: without a recipe the converter's files are the "
                           "result and there is no intermediate to keep")
        return ConvertOptions(kind or "f16", None)
    if kind not in (None, "f16"):
        raise BadInput(f"--outtype {outtype} contradicts --quant {quant}: --quant converts to F16 and then "
                       f"quantizes; drop one of them")
    return ConvertOptions("f16", recipe)
