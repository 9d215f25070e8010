"""Names a user types: one spelling rule everywhere (case-insensitive, llama.cpp's aliases accepted)
and a "did you mean" on a miss."""

from __future__ import annotations

import difflib
from typing import Iterable

from imp_gguf.errors import BadInput

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
