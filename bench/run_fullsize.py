"""Full-size speed figures on this machine (driver for bench/run_fullsize.sh).

Steps:
  1. random-weight full-size checkpoints: Imp-v1.5-3B-196 (196 px) and imp-v1-3b (384 px, 729 tokens),
     kept in IMP_FULLSIZE_WORK between runs
  2. the 196 px one through quant's recipe runner: F16 once, then the q4_k, q4_0 and q3_k recipes
  3. the 384 px mmproj alone to F16 then Q8_0 (its LM has the same Phi-2 shapes as the 196 one)
  4. `imp-gguf bench --protocol paper` on the three 196 models, then q4_k with the 384 px mmproj,
     then `--protocol llama-bench` on q4_k; JSON rows + a chart + RESULTS.md in bench/results/
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from imp_gguf.quant.catalog import SPEED

WORK = Path(os.environ.get("IMP_FULLSIZE_WORK", "/tmp/imp-fullsize"))
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = int(os.environ.get("IMP_FULLSIZE_RUNS", "3"))
RECIPES = os.environ.get("IMP_FULLSIZE_RECIPES", "q4_k q4_0 q3_k").split()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def checkpoint(variant: str) -> Path:
    from imp_gguf.synthetic_checkpoints.fullsize import make_fullsize

    dest = WORK / variant
    if not (dest / "config.json").is_file():
        log(f"writing full-size {variant} checkpoint")
        make_fullsize(variant, dest, force=True)
    return dest


def recipes_196() -> dict[str, tuple[Path, Path]]:
    """The 196 px model converted once to F16, then each recipe applied (quant's one recipe runner)."""
    from imp_gguf.quant.quantize import run_recipes
    from imp_gguf.quant.recipes import load_recipe

    _, rows = run_recipes(checkpoint("Imp-v1.5-3B-196"), WORK / "Imp-v1.5-3B-196", [load_recipe(r) for r in RECIPES],
                          log=log)
    return {rc: (r.model, r.mmproj) for rc, (r, _) in zip(RECIPES, rows)}


def mmproj_384_q8() -> Path:
    """Only the 384 px mmproj is needed (its LM has the 196 one's shapes): F16, then Q8_0 as the recipes do."""
    from imp_gguf.convert import convert
    from imp_gguf.quant.quantize import quantize_file
    from imp_gguf.quant.recipes import load_recipe

    dst = WORK / "mmproj-imp-v1-3b-384-Q8_0.gguf"
    if not dst.is_file():
        r = convert(checkpoint("imp-v1-3b"), WORK / "imp-v1-3b-f16", outtype="f16", force=True)
        r.model.unlink()
        log("quantizing the 384 px mmproj to Q8_0")
        tmp = dst.with_name(dst.name + ".tmp")
        quantize_file(r.mmproj, tmp, load_recipe("q4_k").mmproj)
        tmp.replace(dst)
    return dst


def result_file(kind: str) -> Path:
    """The 196-px rows are what `imp-gguf recipes list` shows as tok/s: they ship inside the package."""
    return SPEED if kind == "196" else RESULTS / f"fullsize-{kind}.json"


def bench(args: list[str], json_out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "imp_gguf.cli.main", "bench", *args, "--out", str(json_out)]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads(json_out.read_text())


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Before any llama.cpp run: other work on the machine (the runs' own threads raise the load later).
    (RESULTS / "fullsize-env.json").write_text(json.dumps(
        {"load_avg_before": os.getloadavg(), "cpu_count": os.cpu_count(),
         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    models = recipes_196()
    mm384 = mmproj_384_q8()
    threads = os.environ.get("IMP_FULLSIZE_THREADS", str(os.cpu_count() or 2))
    common = ["--runs", str(RUNS), "--threads", threads]
    rows = bench([*sum((["--model", str(m[0])] for m in models.values()), []),
                  "--mmproj", str(models[RECIPES[0]][1]), "--chart", str(RESULTS / "fullsize-196.png"), *common],
                 result_file("196"))
    rows384 = bench(["--model", str(models[RECIPES[0]][0]), "--mmproj", str(mm384), *common,
                     "--no-bandwidth"], result_file("384"))
    rows_lb = bench(["--model", str(models[RECIPES[0]][0]), "--mmproj", str(models[RECIPES[0]][1]),
                     "--protocol", "llama-bench", *common], result_file("llama-bench"))
    write_markdown(rows, rows384, rows_lb)


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _load_note(rows: list[dict]) -> str:
    """How busy the machine was: the numbers are only as clean as the cores were free."""
    env_file = RESULTS / "fullsize-env.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    before = env.get("load_avg_before")
    during = [x for r in rows for x in (r.get("load_avg_1m") or []) if x is not None]
    cores = env.get("cpu_count") or os.cpu_count()
    parts = []
    if before:
        parts.append(f"Load average before the session: {before[0]:.2f} (1 min), {before[1]:.2f} (5 min) on {cores} cores")
    if during:
        parts.append(f"1-minute load before each measured run: {min(during):.1f}-{max(during):.1f} "
                     f"(this includes the benchmark's own {rows[0]['n_threads']} threads from the run before)")
    if not parts:
        return "Machine load was not recorded for these rows."
    busy = before is not None and before[0] > 0.5 * cores  # half the cores taken by other work
    return ("; ".join(parts) + ". " + ("Other work was running when the session started: treat absolute "
            "numbers as lower bounds and the ratios as the result." if busy else
            "The machine was otherwise idle: these are this host's numbers, still from a 2-core VM, not a phone."))


def write_markdown(rows: list[dict], rows384: list[dict], rows_lb: list[dict]) -> None:
    from imp_gguf.speed.report import markdown

    r0 = rows[0]
    lines = [
        "# Full-size figures on this machine (random weights, real shapes)",
        "",
        f"Written by `bench/run_fullsize.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Device: {r0['device']} ({r0.get('cpu_info')}), {r0['n_threads']} threads, llama.cpp "
        f"{r0.get('build_commit')} (host build, GGML_NATIVE). Paper protocol: {r0['n_text_tokens']} text tokens + "
        f"{r0['n_image_tokens']} image tokens, {r0['n_gen']} generated, greedy, EOS ignored; median of "
        f"{r0['runs']} runs after one warm-up ([min-max]).",
        "",
        _load_note(rows + rows384 + rows_lb),
        "",
        f"Measured stream-read bandwidth: **{_f(r0.get('bandwidth_gbps'))} GB/s** "
        f"({r0['n_threads']} threads). System: `{r0.get('system_info')}`.",
        "",
        "## Imp-v1.5-3B-196 (196 px), paper protocol",
        "",
        markdown(rows),
        "| recipe | model MB | bytes/token (MB) | achieved GB/s | ceiling tok/s | decode tok/s | decode / ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model_filename']} | {r['model_size'] / 1e6:.0f} | {r['bytes_per_token'] / 1e6:.0f} | "
                     f"{_f(r.get('achieved_gbps'))} | {_f(r.get('ceiling_tps'))} | {_f(r.get('decode_tps'))} | "
                     f"{_f(r.get('decode_efficiency'), '.0%') if r.get('decode_efficiency') is not None else '-'} |")
    lines += ["", "Against the paper's Snapdragon 8 Gen 3 row (Imp-3B@196 4-bit: T_VE 2.10 s, prompt 15.64 tok/s, "
              "decode 12.73 tok/s, total 22.72 s), measured / paper:", "",
              "| model | T_VE | prompt | decode | total |", "|---|---|---|---|---|"]
    for r in rows:
        p = r["paper"]
        lines.append(f"| {r['model_filename']} | x{_f(p['vision_encode_ratio'])} | x{_f(p['prompt_tps_ratio'])} | "
                     f"x{_f(p['decode_tps_ratio'])} | x{_f(p['total_s_ratio'])} |")
    lines += ["", "## Image encode at 196 vs 384 px (q4_k LM, Q8_0 mmproj)", "",
              "| image | image tokens | T_VE s | prompt tok/s | total s |", "|---|---|---|---|---|"]
    for r in [rows[0], *rows384]:
        px = f"{r['image_size']} px" + (" (384-px variants: 27x27 patches of 14)" if r["n_image_tokens"] == 729 else "")
        lines.append(f"| {px} | {r['n_image_tokens']} | {_f(r['vision_encode_ms'] / 1000)} | "
                     f"{_f(r.get('prompt_tps'))} | {_f(r.get('total_s'))} |")
    ratio = rows384[0]["vision_encode_ms"] / rows[0]["vision_encode_ms"] if rows[0].get("vision_encode_ms") else None
    lines += ["", f"T_VE(384) / T_VE(196) = {_f(ratio)} (paper on SD 8 Gen 3: 8.88 / 2.10 = 4.23; FLOPs ratio "
              "about 4.1).", "", "## llama-bench (q4_k; pp/tg at a depth equal to the image tokens)", "",
              markdown(rows_lb) if rows_lb else "(not run: out of time; `bench/run_fullsize.sh` runs it)",
              "", "llama-bench ran in its own session, so its bandwidth probe and load differ from the paper-protocol "
              f"session above (its ceiling uses {_f(rows_lb[0].get('bandwidth_gbps')) if rows_lb else '-'} GB/s).",
              "", "Files: `imp_gguf/data/measured/fullsize-196.json`, `fullsize-384.json`, `fullsize-llama-bench.json` (rows: llama-bench "
              "JSON fields + imp-gguf's), `fullsize-196.png`.", ""]
    (RESULTS / "RESULTS.md").write_text("\n".join(lines))
    log(f"wrote {RESULTS / 'RESULTS.md'}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown-only"]:  # rewrite RESULTS.md from the JSON files already written
        write_markdown(*(json.loads(result_file(k).read_text()) if result_file(k).is_file() else []
                         for k in ("196", "384", "llama-bench")))
    else:
        main()
