"""Human output (a rich table, a markdown table for bench/results) and the JSON file.

The tables are drawn from the rows' JSON form (what `--json` prints and `--out` writes), so they show
exactly those numbers, and `markdown` works on rows read back from a results file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imp_gguf.speed.protocols import PAPER_ROW
from imp_gguf.speed.rows import BenchRow, rows_json

RowJson = Mapping[str, Any]  # a row's JSON form (BenchRow.to_dict(), or read back from a results file)


def _f(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _span(row: RowJson, key: str, spec: str = ".2f", scale: float = 1.0) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_min"), row.get(f"{key}_max")
    if v is None:
        return "-"
    s = format(v * scale, spec)
    if lo is not None and hi is not None and lo != hi:
        s += f" [{format(lo * scale, spec)}-{format(hi * scale, spec)}]"
    return s


def columns(row: RowJson) -> dict[str, str]:
    """One row of the human table (median [min-max] for repeated measurements)."""
    name = row.get("model_filename", "?")
    if row.get("protocol") == "llama-bench":
        test = f"pp{row.get('n_prompt')}" if not row.get("n_gen") else f"tg{row.get('n_gen')}"
        name += f" {test} @ d{row.get('n_depth', 0)}"
    return {
        "model": name,
        "size MB": _f((row.get("model_size") or 0) / 1e6, ".0f"),
        "T_VE s": _span(row, "vision_encode_ms", ".2f", 1e-3) if row.get("vision_encode_ms") is not None else "-",
        "prompt tok/s": _span(row, "prompt_tps") if row.get("protocol") == "paper" else _f(row.get("prompt_tps")),
        "decode tok/s": _span(row, "decode_tps") if row.get("protocol") == "paper" else _f(row.get("decode_tps")),
        "total s": _span(row, "total_s"),
        "TTFT s": _f((row["ttft_ms"] / 1000) if row.get("ttft_ms") is not None else None),
        "peak RSS MB": _f(row.get("peak_rss_mb"), ".0f"),
        "files MB": _f(row.get("model_files_mb"), ".0f"),  # model + mmproj: what the RSS is next to
        "ceiling tok/s": _f(row.get("ceiling_tps"), ".1f"),
        "efficiency": _f(row.get("decode_efficiency"), ".0%") if row.get("decode_efficiency") is not None else "-",
    }


def followup_columns(row: RowJson) -> dict[str, str]:
    """One row of the follow-up protocol's table: measured, then what the paper's rates predict."""
    p = row.get("paper_prediction") or {}
    return {
        "model": row.get("model_filename", "?"),
        "T_VE s": _span(row, "vision_encode_ms", ".2f", 1e-3) if row.get("vision_encode_ms") is not None else "-",
        "first s": _span(row, "first_total_s"),
        "follow-up s": _span(row, "followup_total_s"),
        "ratio": _span(row, "followup_ratio", ".3f"),
        "follow-up tokens": f"{row.get('followup_text_tokens')} + {row.get('n_gen')}",
        "paper rates: first s": _f(p.get("first_s")),
        "paper: follow-up s": _f(p.get("followup_s")),
        "paper: ratio": _f(p.get("ratio"), ".3f"),
    }


def print_table(given: Sequence[BenchRow | RowJson], console: Any) -> None:
    """The human table of typed rows (bench) or of their JSON form (a results file)."""
    from rich.table import Table

    if not given:
        return
    rows = [r if isinstance(r, Mapping) else r.to_dict() for r in given]
    r0 = rows[0]
    if r0.get("protocol") == "followup":
        _print_followup(rows, console)
        return
    title = (f"imp-gguf bench ({r0.get('protocol')}) on {r0.get('device')}, {r0.get('n_threads')} threads, "
             f"llama.cpp {r0.get('build_commit') or '?'}")
    table = Table(title=title, title_justify="left")
    cols = list(columns(r0))
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right", overflow="fold")
    for r in rows:
        vals = columns(r)
        table.add_row(*[vals[c] for c in cols])
    if r0.get("protocol") == "paper":
        table.add_row("paper: Imp-3B@196 4-bit, SD 8 Gen 3", "2300", _f(PAPER_ROW["vision_encode_s"]),
                      _f(PAPER_ROW["prompt_tps"]), _f(PAPER_ROW["decode_tps"]), _f(PAPER_ROW["total_s"]),
                      "-", "-", "-", "-", "-", style="dim")
    old_width = console.width
    console.width = max(old_width, 170)  # a log or pipe gets the full table, not 80 columns
    try:
        console.print(table)
    finally:
        console.width = old_width
    bw = r0.get("bandwidth_gbps")
    facts = [f"bandwidth (stream read, {r0.get('n_threads')} threads): {_f(bw)} GB/s" if bw else "bandwidth: not measured",
             f"cpu: {r0.get('cpu_info') or '?'}"]
    if r0.get("cpu_features"):
        facts.append("features: " + " ".join(r0["cpu_features"]))
    soc = r0.get("soc_choice")
    if soc:
        facts.append(f"threads {r0.get('n_threads')}, CPU mask {r0.get('cpu_mask') or 'none'}; SoC default: "
                     f"{soc['threads']} threads, mask {soc['mask'] or 'none'} ({soc['name'] or 'no table row'}, "
                     f"from {soc['how']})")
    if r0.get("device_model") or r0.get("android_version"):
        facts.append(f"device: {r0.get('device_model') or '?'}, Android {r0.get('android_version') or '?'}")
    for line in facts:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for r in rows:
        if r.get("protocol_note"):
            console.print(f"note: {r['protocol_note']}", markup=False, highlight=False, soft_wrap=True)
        if r.get("protocol") == "paper" and r.get("paper"):
            p = r["paper"]
            console.print(f"{r['model_filename']}: vs paper: T_VE x{_f(p.get('vision_encode_ratio'))}, prompt "
                          f"x{_f(p.get('prompt_tps_ratio'))}, decode x{_f(p.get('decode_tps_ratio'))}, total "
                          f"x{_f(p.get('total_s_ratio'))}", markup=False, highlight=False, soft_wrap=True)
        check = r.get("decode_check")
        if check and check.get("llama_bench_tg_tps") is not None:
            console.print(f"{r['model_filename']}: decode {_f(r.get('decode_tps'))} tok/s vs llama-bench tg"
                          f"{r.get('n_gen')} @ d{check['depth']} {_f(check['llama_bench_tg_tps'])} tok/s (same session, "
                          f"threads, flags): x{_f(check.get('ratio'))}"
                          + (f"; {check['note']}" if check.get("note") else ""), markup=False, highlight=False,
                          soft_wrap=True)
        elif check:
            console.print(f"{r['model_filename']}: decode check: {check.get('note')}", markup=False, highlight=False,
                          soft_wrap=True)
        if r.get("passed") is not None or r.get("n_gen") or r.get("protocol") == "paper":
            console.print(f"{r['model_filename']}: {r.get('verdict')}", markup=False, highlight=False, soft_wrap=True)


def markdown(rows: Sequence[RowJson]) -> str:
    if not rows:
        return ""
    cols = list(columns(rows[0]))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        v = columns(r)
        lines.append("| " + " | ".join(v[c] for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_json(rows: Sequence[BenchRow], path: Path) -> None:
    """`bench --out`: the rows as `--json` prints them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows_json(list(rows)), indent=2, default=str) + "\n")
    tmp.replace(path)


def _print_followup(rows: Sequence[RowJson], console: Any) -> None:
    from rich.table import Table

    r0 = rows[0]
    table = Table(title=f"imp-gguf bench (followup: a second question about the same image, same session) on "
                        f"{r0.get('device')}, {r0.get('n_threads')} threads, llama.cpp {r0.get('build_commit') or '?'}",
                  title_justify="left")
    cols = list(followup_columns(r0))
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right", overflow="fold")
    for r in rows:
        table.add_row(*followup_columns(r).values())
    old_width = console.width
    console.width = max(old_width, 170)
    try:
        console.print(table)
    finally:
        console.width = old_width
    for r in rows:
        console.print(f"{r['model_filename']}: {r.get('verdict')}", markup=False, highlight=False, soft_wrap=True)
