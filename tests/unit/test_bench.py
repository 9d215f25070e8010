"""imp-gguf bench without running anything: the log parsers, the roofline, verdicts and exit codes, the
report table (moved from tests/e2e/test_bench.py, which runs the built tools)."""

from __future__ import annotations

import json

from types import SimpleNamespace

import pytest

from imp_gguf.runtime.devices import Device
from imp_gguf.runtime.parse import (cpu_features, parse_bandwidth, parse_llama_bench, parse_mtmd, parse_time_v,
                                  parse_version)
from imp_gguf.runtime.runner import LocalRunner
from imp_gguf.speed.protocols import exit_code, paper_comparison, spread, verdict
from imp_gguf.speed.roofline import LmTraffic, roofline


PLAIN_LOG = """\
encoding mtmd batch, n_chunks = 1 (done = 1, total = 3)
image slice encoded in 2100 ms
decoding image batch 1/1, n_tokens_batch = 196
image decoded (batch 1/1) in 9000 ms
llama_perf_context_print:        load time =    1234.00 ms
llama_perf_context_print: prompt eval time =   15150.00 ms /   237 tokens (   63.92 ms per token,    15.64 tokens per second)
llama_perf_context_print:        eval time =    4949.00 ms /    63 runs   (   78.56 ms per token,    12.73 tokens per second)
llama_perf_context_print:       total time =   22000.00 ms /   300 tokens
"""


def _jl(t, level, msg):
    return json.dumps({"type": "log", "time": t, "level": level, "msg": msg})


def test_parse_plain_perf_lines():
    r = parse_mtmd("", PLAIN_LOG)
    assert r.vision_encode_ms == 2100 and r.image_decode_ms == 9000
    assert (r.prompt_eval_ms, r.prompt_tokens, r.eval_ms, r.eval_runs) == (15150, 237, 4949, 63)
    assert abs(r.prompt_tps - 15.64) < 0.01 and abs(r.decode_tps - 12.73) < 0.01
    assert abs(r.total_s - (2.1 + 15.15 + 4.949)) < 1e-6
    assert r.load_ms == 1234 and r.timings_source == "perf"


def test_parse_jsonl_falls_back_to_token_timestamps():
    """The async logger can lose the perf lines at exit: rebuild decode speed from the token timestamps."""
    lines = [_jl(1000, "info", "encoding mtmd batch, n_chunks = 1 (done = 1, total = 3)\n"),
             _jl(2000, "info", "mtmd batch encoding done in 1 ms\n"),
             _jl(3000, "info", "image decoded (batch 1/1) in 1 ms\n"),
             _jl(4000, "none", "\n")]
    lines += [_jl(10_000 + 2000 * i, "none", f" tok{i}") for i in range(11)]
    r = parse_mtmd("\n".join(lines) + "\nnot json\n")
    assert r.n_generated == 11 and r.text.startswith(" tok0")
    assert r.timings_source == "timestamps"
    assert r.eval_runs == 10 and r.eval_ms == 20.0 and r.decode_tps == 500.0
    assert r.ttft_ms == 9.0 and r.vision_encode_ms == 1.0
    assert r.prompt_eval_ms == pytest.approx(7.0 + 1.0)


def test_parse_misc():
    assert parse_time_v("\tMaximum resident set size (kbytes): 204800\n") == 200.0
    assert parse_time_v("nothing") is None
    assert parse_time_v("Real time (s): 1.2\nMax RSS (KiB): 1024\n") == 1.0  # toybox (Android)
    v = parse_version("version: 0.5.0-dev (build 1, commit 0c1e570)\nbuilt with GNU 12.2.0 for Linux x86_64")
    assert v == {"version": "0.5.0-dev", "build_number": 1, "build_commit": "0c1e570",
                 "built_with": "GNU 12.2.0 for Linux x86_64"}
    si = "n_threads = 6 / 8 | CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | MATMUL_INT8 = 1 | SVE = 0 | REPACK = 1 |"
    assert cpu_features(si) == ["NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "MATMUL_INT8", "REPACK"]
    rows = parse_llama_bench('log noise\n[{"n_prompt": 237, "n_gen": 0, "avg_ts": 15.6}, {"n_gen": 64, "avg_ts": 12.7}]')
    assert [r["avg_ts"] for r in rows] == [15.6, 12.7]
    assert parse_bandwidth('x\n{"gbps": 60.5, "threads": 6}\n')["gbps"] == 60.5


def test_roofline_and_spread():
    t = LmTraffic(weight_bytes=1_700_000_000, embd_bytes=100_000_000, embd_row_bytes=2_000,
                  kv_bytes_per_pos=327_680, n_layer=32, n_params=2_700_000_000)
    bpt = t.bytes_per_token(269)
    assert bpt == 1_600_000_000 + 2_000 + 327_680 * 269
    r = roofline(12.73, 60.0, t, 269)
    assert r.ceiling_tps == round(60e9 / bpt, 2)
    assert r.decode_efficiency == round(12.73 * bpt / 60e9, 3)
    assert roofline(None, None, t, 0).ceiling_tps is None
    s = spread([3.0, 1.0, 2.0, None])
    assert (s.median, s.min, s.max, s.n) == (2.0, 1.0, 3.0, 3)
    p = paper_comparison(vision_encode_ms=4200.0, prompt_tps=15.64, decode_tps=25.46, total_s=11.36)
    assert (p.vision_encode_ratio, p.prompt_tps_ratio, p.decode_tps_ratio, p.total_s_ratio) == (2.0, 1.0, 2.0, 0.5)


def _dev(kind, arch, emulated=False):
    return Device(kind, LocalRunner(), "host", None, {}, arch, 8, emulated=emulated)


def test_verdicts_and_exit_code():
    text, ok = verdict(_dev("local", "x86_64"), 21.3, 13)
    assert ok is None and text == "host x86_64: 21.3 tok/s - not a device result"
    text, ok = verdict(_dev("qemu", "aarch64", emulated=True), 0.4, 13)
    assert ok is None and "emulated" in text and "meaningless" in text
    assert verdict(_dev("ssh", "aarch64"), 14.0, 13)[1] is True
    text, ok = verdict(_dev("adb", "aarch64"), 9.0, 13)
    assert ok is False and text.startswith("MISS")
    assert verdict(_dev("ssh", "x86_64"), 9.0, 13)[1] is None  # an x86 ssh host is not a device
    assert exit_code([SimpleNamespace(passed=None), SimpleNamespace(passed=True)]) == 0  # type: ignore[list-item]
    assert exit_code([SimpleNamespace(passed=True), SimpleNamespace(passed=False)]) == 3  # type: ignore[list-item]  # a check that ran and failed (docs/exit-codes.md)


def test_report_table_and_markdown():
    import io

    from rich.console import Console

    from imp_gguf.speed.report import markdown, print_table

    row = {"protocol": "paper", "model_filename": "m-Q4_K_M.gguf", "model_size": 1_790_000_000,
           "vision_encode_ms": 2100.0, "vision_encode_ms_min": 2000.0, "vision_encode_ms_max": 2200.0,
           "prompt_tps": 15.64, "decode_tps": 12.73, "decode_tps_min": 12.5, "decode_tps_max": 13.0,
           "total_s": 22.7, "ttft_ms": 17300.0, "peak_rss_mb": 2100.0, "ceiling_tps": 35.2,
           "decode_efficiency": 0.36, "device": "adb SM-S928B (aarch64)", "n_threads": 6, "build_commit": "0c1e570",
           "bandwidth_gbps": 60.1, "verdict": "MISS: ...", "passed": False, "n_gen": 64,
           "paper": paper_comparison(vision_encode_ms=2100.0, prompt_tps=15.64, decode_tps=12.73,
                                     total_s=22.7).to_dict()}
    buf = io.StringIO()
    print_table([row], Console(file=buf, width=80))
    text = buf.getvalue()
    assert "12.73 [12.50-13.00]" in text and "2.10 [2.00-2.20]" in text and "36%" in text and "MISS" in text
    md = markdown([row])
    assert md.splitlines()[0].startswith("| model |") and "m-Q4_K_M.gguf" in md
