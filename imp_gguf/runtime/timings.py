"""One set of timings for `imp-gguf run`, whichever backend answered: the same keys from the Python
session and from llama-mtmd-cli's log, rounded once, and printed from those same numbers.

    encode_ms      the image: vision encoder + its tokens into the language model (0: none this turn)
    prefill_ms     the text part of the prompt
    prompt_tokens  prompt tokens evaluated (text + image); a follow-up turn: its new text only
    cached_tokens  tokens already in the context, reused (earlier turns of a conversation, image included)
    decode_ms      generation
    decode_tokens  generated tokens
    decode_tps     decode_tokens / decode_ms
"""

from __future__ import annotations

from typing import Any

from imp_gguf.runtime.parse import parse_mtmd

KEYS = ("encode_ms", "prefill_ms", "prompt_tokens", "cached_tokens", "decode_ms", "decode_tokens", "decode_tps")


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """The timings as reported: ms to 0.1, token counts as integers, decode_tps derived; missing ones dropped."""
    out: dict[str, Any] = {}
    for key in KEYS[:-1]:
        v = raw.get(key)
        if v is None:
            continue
        out[key] = int(v) if key.endswith("tokens") else round(float(v), 1)
    if out.get("decode_ms") and out.get("decode_tokens"):
        out["decode_tps"] = round(1000.0 * out["decode_tokens"] / out["decode_ms"], 1)
    return out


def from_mtmd_log(stdout: str, stderr: str) -> dict[str, Any]:
    """llama-mtmd-cli's own figures (its "image slice encoded" and llama_perf lines)."""
    r = parse_mtmd(stdout, stderr)
    image = None if r.vision_encode_ms is None else r.vision_encode_ms + (r.image_decode_ms or 0.0)
    text = None if r.prompt_eval_ms is None else max(0.0, r.prompt_eval_ms - (r.image_decode_ms or 0.0))
    return normalize({"encode_ms": image, "prefill_ms": text, "prompt_tokens": r.prompt_tokens,
                      "decode_ms": r.eval_ms, "decode_tokens": r.eval_runs})


def text(t: dict[str, Any]) -> str:
    """One line for stderr, from exactly the numbers the JSON holds."""
    parts = []
    if t.get("cached_tokens"):
        parts.append(f"{t['cached_tokens']} tokens reused from the conversation")
    if "encode_ms" in t and (t["encode_ms"] or not t.get("cached_tokens")):
        parts.append(f"image encode {t['encode_ms']} ms")
    if "prefill_ms" in t:
        parts.append(f"prompt {t.get('prompt_tokens', '?')} tokens, text prefill {t['prefill_ms']} ms")
    if "decode_ms" in t:
        rate = f" ({t['decode_tps']} tok/s)" if "decode_tps" in t else ""
        parts.append(f"{t.get('decode_tokens', 0)} tokens in {t['decode_ms']} ms{rate}")
    return ", ".join(parts) if parts else "no timings reported"
