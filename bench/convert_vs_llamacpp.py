"""Conversion against llama.cpp's own converter, side by side in one run (issue 14).

Inputs: `imp-gguf fixtures published imp-v1-3b` at full size (transformers-Phi layout, fp16, 7 shards,
LM + SigLIP; random data unless --data zeros), and the same language-model tensors staged as a plain
`PhiForCausalLM` checkpoint (bytes copied, names kept) for llama.cpp's `convert_hf_to_gguf.py` from the
pinned tree. Every step runs as its own process, its inputs read once just before (page cache warm);
earlier outputs are deleted and flushed (sync) first; time is wall clock, peak RSS is the process's own
(GNU time -v), and the load average is recorded with each.

Steps: the copy floor (`cat` of the input shards, and the same plus fsync, since imp-gguf fsyncs before
its rename), F16 by both converters (alternated, --reps each), Q4_K_M (llama.cpp: convert + llama-quantize;
imp-gguf: convert --quant q4_k, which also writes the Q8_0 mmproj), and imp-gguf's F16 peak RSS on a
second, smaller model (--second, sparse zeros: memory only). Writes bench/results/convert-vs-llamacpp.json.

Usage: python bench/convert_vs_llamacpp.py [--work DIR] [--reps 2] [--data random|zeros] [--no-quant]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR, LC_F16, IG_F16 = "copy floor (cat)", "llama.cpp convert_hf_to_gguf.py f16", "imp-gguf convert f16"
LC_QUANT, IG_QUANT = "llama-quantize Q4_K_M", "imp-gguf convert --quant q4_k"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(argv: list[str], label: str, *, stdout: int | None = subprocess.DEVNULL,
            env: dict[str, str] | None = None) -> dict:
    """Run one process to completion: wall seconds, its own peak RSS (GNU time -v: a child's ru_maxrss
    would start at this driver's), the load average around it."""
    before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], stdout=stdout, stderr=subprocess.PIPE, env=env,
                          check=False)
    seconds = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{err[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", err).group(1))
    row = {"step": label, "seconds": round(seconds, 2), "peak_rss_mb": round(rss_kb / 1024, 1),
           "load_avg_before": [round(x, 2) for x in before], "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
    log(f"{label}: {row['seconds']} s, {row['peak_rss_mb']} MB peak RSS, load {row['load_avg_before'][0]}")
    return row


def warm(paths: list[Path]) -> None:
    """Flush what earlier steps left to write (each step starts with no writeback of another's output),
    then read the inputs once so every measured step starts with them in the page cache."""
    os.sync()
    with open(os.devnull, "wb") as null:
        for p in paths:
            with open(p, "rb") as f:
                size, done = os.fstat(f.fileno()).st_size, 0
                while done < size:
                    n = os.sendfile(null.fileno(), f.fileno(), done, min(1 << 30, size - done))
                    if n == 0:
                        break
                    done += n


def fsync_time(path: Path) -> float:
    """Seconds until a file just written is on disk (what imp-gguf waits for before it renames)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return round(time.perf_counter() - t0, 2)


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def size_of(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def stage_plain_lm(ckpt: Path, dest: Path) -> Path:
    """The language model alone as a plain transformers checkpoint: each shard's LM tensors with their
    names and bytes (copied file to file), an index, a transformers config and the tokenizer files."""
    from imp_gguf.checkpoint import open_checkpoint
    from imp_gguf.converters.registry import detect_family

    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    c = open_checkpoint(ckpt)
    family = detect_family(c.config, set(c.tensors))
    by_file: dict[Path, list] = {}
    for name, ref in c.tensors.items():
        if not family.is_vision_or_projector(name):
            by_file.setdefault(ref.path, []).append(ref)
    weight_map = {}
    for path, refs in sorted(by_file.items()):
        refs.sort(key=lambda r: r.offset)
        header, pos = {}, 0
        for r in refs:
            header[r.name] = {"dtype": r.dtype, "shape": list(r.shape), "data_offsets": [pos, pos + r.nbytes]}
            pos += r.nbytes
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "rb") as src, open(tmp / path.name, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            out.flush()
            for r in refs:
                done = 0
                while done < r.nbytes:
                    done += os.copy_file_range(src.fileno(), out.fileno(), r.nbytes - done, r.offset + done)
        weight_map.update({r.name: path.name for r in refs})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps(family.reference_config(family.hparams(c.config, c.tensors))))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.json", "merges.txt"):
        if (ckpt / name).is_file():
            shutil.copy(ckpt / name, tmp / name)
    tmp.rename(dest)
    return dest


def upstream_argv(staged: Path, outfile: Path, outtype: str) -> list[str]:
    """llama.cpp's convert_hf_to_gguf.py from the pinned tree, with its vendored gguf-py (the shim only
    names the pre-tokenizer: the fixture's tokenizer is synthetic, so its hash is unknown)."""
    from imp_gguf.reference.upstream import _SHIM
    from imp_gguf.runtime.source import ensure_source

    root = ensure_source().llama_cpp
    code = _SHIM.format(root=str(root), pre="phi-2", args=[str(staged), "--outfile", str(outfile),
                                                           "--outtype", outtype])
    return [sys.executable, "-c", code]


def imp_gguf_argv(*args: str) -> list[str]:
    exe = shutil.which("imp-gguf")
    return [exe, *args] if exe else [sys.executable, "-m", "imp_gguf.cli.main", *args]


def fixture(name: str, dest: Path, data: str) -> Path:
    if not (dest / "config.json").is_file():
        log(f"writing the published {name} ({data})")
        subprocess.run(imp_gguf_argv("fixtures", "published", name, str(dest), "--data", data, "--force"),
                       check=True)
    return dest


def copy_floor(inputs: list[Path], out: Path, *, fsync: bool) -> dict:
    """`cat` of the input shards into one new file (optionally followed by fsync), as a process."""
    quoted = " ".join(f"'{p}'" for p in inputs)
    script = f"cat {quoted} > '{out}'" + (f" && python3 -c \"import os; f=os.open('{out}', os.O_RDONLY); "
                                          "os.fsync(f)\"" if fsync else "")
    warm(inputs)
    row = measure(["sh", "-c", script], FLOOR + (" + fsync" if fsync else ""))
    row["bytes_written"] = out.stat().st_size
    out.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/imp-gguf-convert-bench"))
    ap.add_argument("--variant", default="imp-v1-3b")
    ap.add_argument("--second", default="Imp-v1.5-2B-Qwen1.5", help="second model size, imp-gguf F16 RSS only")
    ap.add_argument("--data", default="random", choices=["random", "zeros"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-quant", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "convert-vs-llamacpp.json")
    ap.add_argument("--summarize", type=Path, help="only recompute the summary and RESULTS.md from a saved JSON")
    a = ap.parse_args()
    if a.summarize:
        result = json.loads(a.summarize.read_text())
        result["summary"] = summarize(result["rows"])
        a.summarize.write_text(json.dumps(result, indent=2) + "\n")
        update_results_md(result, RESULTS / "RESULTS.md", a.summarize.name)
        print(json.dumps(result["summary"], indent=2))
        return
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    ckpt = fixture(a.variant, work / a.variant, a.data)
    staged = stage_plain_lm(ckpt, work / f"{a.variant}-plain-lm")
    ours_in, theirs_in = shards(ckpt), shards(staged)
    rows: list[dict] = []
    result = {"recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variant": a.variant,
              "data": a.data, "cpu_count": os.cpu_count(), "input_bytes_imp_gguf": size_of(ours_in),
              "input_bytes_llama_cpp": size_of(theirs_in), "rows": rows}
    rows.append(copy_floor(ours_in, work / "floor.bin", fsync=False))
    rows.append(copy_floor(ours_in, work / "floor.bin", fsync=True))
    lc16, ig16 = work / "llama-cpp-F16.gguf", work / "imp-gguf-f16"
    for rep in range(a.reps):
        for who in ("llama.cpp", "imp-gguf"):
            if who == "llama.cpp":
                lc16.unlink(missing_ok=True)
                warm(theirs_in)
                row = measure(upstream_argv(staged, lc16, "f16"), LC_F16,
                              env=dict(os.environ, NO_LOCAL_GGUF="1"))
                row["bytes_written"] = lc16.stat().st_size
                row["fsync_seconds"] = fsync_time(lc16)  # imp-gguf fsyncs before its rename; llama.cpp does not
            else:
                shutil.rmtree(ig16, ignore_errors=True)
                warm(ours_in)
                row = measure(imp_gguf_argv("convert", str(ckpt), "-o", str(ig16), "--outtype", "f16", "-q"),
                              IG_F16)
                row["bytes_written"] = size_of(list(ig16.glob("*.gguf")))
            rows.append(row | {"rep": rep})
    shutil.rmtree(ig16, ignore_errors=True)
    if not a.no_quant:
        from imp_gguf.runtime.build import where

        quantize = where("host").bin_dir / "llama-quantize"
        lcq = work / "llama-cpp-Q4_K_M.gguf"
        lcq.unlink(missing_ok=True)
        warm([lc16])
        row = measure([str(quantize), str(lc16), str(lcq), "Q4_K_M"], LC_QUANT)
        rows.append(row | {"bytes_written": lcq.stat().st_size, "threads": "llama-quantize default (all cores)"})
        lcq.unlink()
        igq = work / "imp-gguf-q4_k"
        shutil.rmtree(igq, ignore_errors=True)
        warm(ours_in)
        row = measure(imp_gguf_argv("convert", str(ckpt), "-o", str(igq), "--quant", "q4_k", "-q"),
                      IG_QUANT)
        rows.append(row | {"bytes_written": size_of(list(igq.glob("*.gguf")))})
        shutil.rmtree(igq)
    lc16.unlink(missing_ok=True)
    if a.second:
        second = fixture(a.second, work / a.second, "zeros")
        out2 = work / "imp-gguf-second"
        shutil.rmtree(out2, ignore_errors=True)
        warm(shards(second))
        row = measure(imp_gguf_argv("convert", str(second), "-o", str(out2), "--outtype", "f16", "-q"),
                      f"{IG_F16} ({a.second}, zeros: memory only)")
        rows.append(row | {"bytes_written": size_of(list(out2.glob("*.gguf"))), "input_bytes": size_of(shards(second))})
        shutil.rmtree(out2)
    result["summary"] = summarize(rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    update_results_md(result, RESULTS / "RESULTS.md", a.out.name)
    print(json.dumps(result["summary"], indent=2))


START, END = "<!-- convert-vs-llamacpp -->", "<!-- /convert-vs-llamacpp -->"


def update_results_md(result: dict, md: Path, json_name: str) -> None:
    """The section between the markers in RESULTS.md, rewritten from this run."""
    s, rows = result["summary"], result["rows"]
    lines = [START, "## Conversion: imp-gguf vs llama.cpp's convert_hf_to_gguf.py (same run)", "",
             f"Written by `bench/convert_vs_llamacpp.py` on {result['recorded']}: published-form {result['variant']} "
             f"({result['data']} data, fp16, 7 shards; llama.cpp gets the same LM tensors as a plain PhiForCausalLM "
             f"checkpoint), {result['cpu_count']} cores, inputs warm in the page cache, earlier outputs flushed "
             "before each step. Every step, in order:", "",
             "| step | s | peak RSS MB | GB written | s per GB written | 1-min load before |", "|---|---|---|---|---|---|"]
    for r in rows:
        gb = r.get("bytes_written", 0) / 1e9
        sync = f" (+{r['fsync_seconds']} s fsync)" if "fsync_seconds" in r else ""
        lines.append(f"| {r['step']}{' #' + str(r['rep'] + 1) if 'rep' in r else ''} | {r['seconds']}{sync} | "
                     f"{r['peak_rss_mb']} | {gb:.2f} | {r['seconds'] / gb if gb else 0:.2f} | {r['load_avg_before'][0]} |")
    f = s["f16_seconds_per_output_gb"]
    lines += ["", f"F16, best of the repetitions, seconds per GB written: imp-gguf {f['imp-gguf']} (fsync included), "
              f"llama.cpp {f['llama.cpp']} (no fsync; {f['llama.cpp+fsync']} until its file is on disk), cat "
              f"{f['copy']}, cat + fsync {f['copy+fsync']}. imp-gguf / llama.cpp: "
              f"**{s['f16_time_per_byte_vs_llama_cpp']}x** time per byte "
              f"({s['f16_time_per_byte_vs_llama_cpp_fsync']}x against llama.cpp + fsync); imp-gguf / copy: "
              f"{s['f16_time_per_byte_vs_copy']}x (with fsync, which imp-gguf does before its rename: "
              f"{s['f16_time_per_byte_vs_copy_fsync']}x). Peak RSS: imp-gguf {s['f16_peak_rss_mb']['imp-gguf']} MB, "
              f"llama.cpp {s['f16_peak_rss_mb']['llama.cpp']} MB (**{s['f16_peak_rss_vs_llama_cpp']}x**)."]
    if "f16_peak_rss_mb_second_model" in s:
        sm = s["f16_peak_rss_mb_second_model"]
        lines.append(f"Second size (imp-gguf F16 only, memory): {sm['model_bytes'] / 1e9:.2f} GB written with "
                     f"{sm['peak_rss_mb']} MB peak RSS, against {sm['first_model_bytes'] / 1e9:.2f} GB with "
                     f"{s['f16_peak_rss_mb']['imp-gguf']} MB.")
    if "q4_k_m" in s:
        q = s["q4_k_m"]
        lines.append(f"Q4_K_M: llama.cpp convert + llama-quantize {q['llama.cpp_convert_plus_quantize_s']} s (LM only), "
                     f"imp-gguf `convert --quant q4_k` {q['imp-gguf_s']} s (LM + Q8_0 mmproj): **{q['ratio_time']}x**; "
                     f"peak RSS {q['peak_rss_mb']['llama.cpp']} vs {q['peak_rss_mb']['imp-gguf']} MB.")
    lines += ["", f"File: `{json_name}`.", END, ""]
    text = md.read_text() if md.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    md.write_text(text)


def summarize(rows: list[dict]) -> dict:
    """Ratios from the same run: best of the repetitions for time, largest for peak RSS."""
    def pick(step: str) -> list[dict]:
        return [r for r in rows if r["step"] == step]

    def best(prefix: str) -> dict | None:
        found = pick(prefix)
        return min(found, key=lambda r: r["seconds"]) if found else None

    def per_gb(r: dict, extra: str | None = None) -> float:
        return (r["seconds"] + (r.get(extra) or 0.0)) / (r["bytes_written"] / 1e9)

    lc, ig = best(LC_F16), best(IG_F16)
    lc_sync = min(pick(LC_F16), key=lambda r: per_gb(r, "fsync_seconds"))
    floor, floor_sync = best(FLOOR), best(FLOOR + " + fsync")
    s: dict = {
        "f16_seconds_per_output_gb": {"llama.cpp": round(per_gb(lc), 3), "imp-gguf": round(per_gb(ig), 3),
                                      "llama.cpp+fsync": round(per_gb(lc_sync, "fsync_seconds"), 3),
                                      "copy": round(per_gb(floor), 3), "copy+fsync": round(per_gb(floor_sync), 3)},
        "f16_time_per_byte_vs_llama_cpp": round(per_gb(ig) / per_gb(lc), 3),
        "f16_time_per_byte_vs_llama_cpp_fsync": round(per_gb(ig) / per_gb(lc_sync, "fsync_seconds"), 3),
        "f16_time_per_byte_vs_copy": round(per_gb(ig) / per_gb(floor), 3),
        "f16_time_per_byte_vs_copy_fsync": round(per_gb(ig) / per_gb(floor_sync), 3),
        "f16_peak_rss_mb": {"llama.cpp": max(r["peak_rss_mb"] for r in pick(LC_F16)),
                            "imp-gguf": max(r["peak_rss_mb"] for r in pick(IG_F16))},
    }
    s["f16_peak_rss_vs_llama_cpp"] = round(s["f16_peak_rss_mb"]["imp-gguf"] / s["f16_peak_rss_mb"]["llama.cpp"], 3)
    second = [r for r in rows if r["step"].startswith(IG_F16 + " (")]
    if second:
        s["f16_peak_rss_mb_second_model"] = {"model_bytes": second[0]["bytes_written"],
                                             "peak_rss_mb": second[0]["peak_rss_mb"],
                                             "first_model_bytes": ig["bytes_written"]}
    lq, iq = best(LC_QUANT), best(IG_QUANT)
    if lq and iq:
        total = lc["seconds"] + lq["seconds"]
        s["q4_k_m"] = {"llama.cpp_convert_plus_quantize_s": round(total, 2), "imp-gguf_s": iq["seconds"],
                       "ratio_time": round(iq["seconds"] / total, 3),
                       "peak_rss_mb": {"llama.cpp": max(lc["peak_rss_mb"], lq["peak_rss_mb"]),
                                       "imp-gguf": iq["peak_rss_mb"]},
                       "bytes_written": {"llama.cpp": lq["bytes_written"], "imp-gguf": iq["bytes_written"]}}
    return s


if __name__ == "__main__":
    main()
