"""One set of timings for `imp-gguf run`, whichever backend answered: the same fields from the Python
session and from llama-mtmd-cli's log, rounded once, and printed from those same numbers.

    encode_ms      the image: vision encoder + its tokens into the language model (0: none this turn)
    prefill_ms     the text part of the prompt
    prompt_tokens  prompt tokens evaluated (text + image); a follow-up turn: its new text only
    cached_tokens  tokens already in the context, reused (earlier turns of a conversation, image included)
    decode_ms      generation
    decode_tokens  generated tokens
    decode_tps     decode_tokens / decode_ms

A field the backend did not report is None and left out of the JSON. A conversation is a list of `Turn`s
(question, answer, timings); `RunResult` is what `run --json` prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imp_gguf.runtime.parse import parse_mtmd

KEYS = ("encode_ms", "prefill_ms", "prompt_tokens", "cached_tokens", "decode_ms", "decode_tokens", "decode_tps")


@dataclass(frozen=True)
class Timings:
    """One turn's figures, as reported: ms to 0.1, token counts as integers (see the module's docstring)."""

    encode_ms: float | None = None
    prefill_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    decode_ms: float | None = None
    decode_tokens: int | None = None
    decode_tps: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        """The JSON object: the reported fields in KEYS order, the others left out."""
        return {k: v for k in KEYS if (v := getattr(self, k)) is not None}

    def text(self) -> str:
        """One line for stderr, from exactly the numbers the JSON holds."""
        parts = []
        if self.cached_tokens:
            parts.append(f"{self.cached_tokens} tokens reused from the conversation")
        if self.encode_ms is not None and (self.encode_ms or not self.cached_tokens):
            parts.append(f"image encode {self.encode_ms} ms")
        if self.prefill_ms is not None:
            tokens = "?" if self.prompt_tokens is None else self.prompt_tokens
            parts.append(f"prompt {tokens} tokens, text prefill {self.prefill_ms} ms")
        if self.decode_ms is not None:
            rate = f" ({self.decode_tps} tok/s)" if self.decode_tps is not None else ""
            parts.append(f"{self.decode_tokens or 0} tokens in {self.decode_ms} ms{rate}")
        return ", ".join(parts) if parts else "no timings reported"


def normalize(raw: Mapping[str, float | int | None]) -> Timings:
    """Raw figures (Session.last_timings, a log's) as reported: ms to 0.1, token counts as integers,
    decode_tps derived; missing ones None."""

    def ms(key: str) -> float | None:
        v = raw.get(key)
        return None if v is None else round(float(v), 1)

    def count(key: str) -> int | None:
        v = raw.get(key)
        return None if v is None else int(v)

    decode_ms, decode_tokens = ms("decode_ms"), count("decode_tokens")
    tps = round(1000.0 * decode_tokens / decode_ms, 1) if decode_ms and decode_tokens else None
    return Timings(encode_ms=ms("encode_ms"), prefill_ms=ms("prefill_ms"), prompt_tokens=count("prompt_tokens"),
                   cached_tokens=count("cached_tokens"), decode_ms=decode_ms, decode_tokens=decode_tokens,
                   decode_tps=tps)


def from_mtmd_log(stdout: str, stderr: str) -> Timings:
    """llama-mtmd-cli's own figures (its "image slice encoded" and llama_perf lines)."""
    r = parse_mtmd(stdout, stderr)
    image = None if r.vision_encode_ms is None else r.vision_encode_ms + (r.image_decode_ms or 0.0)
    text = None if r.prompt_eval_ms is None else max(0.0, r.prompt_eval_ms - (r.image_decode_ms or 0.0))
    return normalize({"encode_ms": image, "prefill_ms": text, "prompt_tokens": r.prompt_tokens,
                      "decode_ms": r.eval_ms, "decode_tokens": r.eval_runs})


def text(t: Timings) -> str:
    """One line for stderr, from exactly the numbers the JSON holds."""
    return t.text()


@dataclass(frozen=True)
class Turn:
    """One question of a conversation: the answer as printed (stripped) and its timings."""

    question: str
    answer: str
    timings: Timings

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "timings": self.timings.to_dict()}


@dataclass(frozen=True)
class RunResult:
    """What `run` answered: the backend and every turn (the last one's answer and timings repeated at the
    top of the JSON)."""

    backend: str
    turns: list[Turn] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        last = self.turns[-1]
        return {"answer": last.answer, "backend": self.backend, "timings": last.timings.to_dict(),
                "turns": [t.to_dict() for t in self.turns]}
