"""bench --protocol followup: the paper question, then a follow-up about the same image in one
llama-mtmd-cli chat. The parser of its turns (unit), the paper-rate prediction, and a real run of the host
build on the tiny Imp. Speeds are never asserted: only what was measured and how it is labelled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.speed.protocols import FOLLOWUP_QUESTION, followup_prediction
from imp_gguf.runtime.parse import parse_mtmd_chat


def _jl(t: int, level: str, msg: str) -> str:
    return json.dumps({"type": "log", "time": t, "level": level, "msg": msg})


def chat_log(final_prompt: bool) -> str:
    lines = [_jl(10, "none", "\n> "), _jl(20, "none", "/p.png image loaded\n"), _jl(30, "none", "\n> "),
             _jl(1_000, "info", "encoding mtmd batch, n_chunks = 1 (done = 1, total = 3)"),
             _jl(2_000_030, "info", "mtmd batch encoding done in 2000 ms"),
             _jl(3_000_030, "none", "\n"), _jl(3_500_030, "none", " A"), _jl(4_500_030, "none", " cat"),
             _jl(5_500_030, "none", "."), _jl(5_600_000, "none", "\n> "),
             _jl(5_700_000, "none", "\n"), _jl(6_000_000, "none", " It"), _jl(7_000_000, "none", " is"),
             _jl(8_000_000, "none", " red")]
    if final_prompt:
        lines += [_jl(8_000_100, "none", "\n> "), _jl(8_000_200, "none", "\n\n"),
                  _jl(8_000_300, "info", "llama_perf_context_print: prompt eval time = 1.0 ms / 9 tokens")]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("final_prompt", [True, False])
def test_chat_turns_from_the_log(final_prompt: bool) -> None:
    """Two question turns (the /image line is none), each timed from the prompt it was read at to its last
    piece, also when the asynchronous logger lost the entries after the last piece."""
    first, follow = parse_mtmd_chat(chat_log(final_prompt))
    assert first.vision_encode_ms == 2000 and follow.vision_encode_ms is None
    assert first.text == " A cat." and follow.text == " It is red"
    assert first.total_ms == pytest.approx((5_500_030 - 30) / 1000)
    assert first.ttft_ms == pytest.approx(3_500.0) and first.decode_tps == pytest.approx(1.0)
    assert follow.total_ms == pytest.approx((8_000_000 - 5_600_000) / 1000) and follow.n_generated == 3


@pytest.mark.slow
def test_bench_followup_protocol_on_the_host(host_tools: dict[str, Path], tmp_path: Path) -> None:
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path / "gguf", outtype="f16").to_dict()
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "bench", "-m", str(r["model"]), "--mmproj",
                           str(r["mmproj"]), "--protocol", "followup", "-r", "2", "-t", "2", "--no-bandwidth",
                           "--n-gen", "16", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "follow-up" in proc.stdout and "paper" in proc.stdout
    [row] = json.loads(out.read_text())
    assert row["protocol"] == "followup" and row["followup_question"] == FOLLOWUP_QUESTION
    assert row["vision_encode_ms"] > 0 and row["followup_vision_encode_ms"] == 0  # the image is encoded once
    assert 0 < row["followup_text_tokens"] < row["n_text_tokens"] + row["n_image_tokens"]
    assert row["first_total_s"] > 0 and row["followup_total_s"] > 0 and row["followup_ratio"] > 0
    assert row["runs"] == 2 and all(len(d["turns"]) == 2 for d in row["runs_detail"])
    assert all(t["n_generated"] == 16 for d in row["runs_detail"] for t in d["turns"])  # EOS ignored
    pred = row["paper_prediction"]
    assert pred == followup_prediction(row["n_image_tokens"], row["n_text_tokens"], row["followup_text_tokens"],
                                       16).to_dict()
    assert "host" in row["verdict"] and row["passed"] is None
