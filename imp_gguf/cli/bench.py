"""`imp-gguf bench`: wiring only; the work is in imp_gguf.speed.

Exit status: 0, or 3 (a check that failed, as verify's and recipes compare --baseline's) when a device
result (adb/ssh on an aarch64 device) misses --target-tps, so a device runner in CI can gate on it. Off-device (local host, qemu) results never fail: they only say what
they measured. 2 for bad input, as everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from rich.console import Console

from imp_gguf.cli._common import info as _log, print_json
from imp_gguf.errors import BadInput, CheckFailed
from imp_gguf.runtime.runner import safe_name

if TYPE_CHECKING:
    from imp_gguf.speed.rows import PaperRow


def bench_cmd(
    model: list[Path] = typer.Option(..., "--model", "-m", help="Language-model GGUF; repeat to compare several."),
    mmproj: list[Path] = typer.Option(..., "--mmproj", help="mmproj GGUF: one for all models, or one per --model."),
    image: Path = typer.Option(None, "--image", help="Image (default: a built-in synthetic photo)."),
    device: str = typer.Option("local", "--device", "-d",
                               help="local | qemu | adb[:SERIAL] | ssh://user@host[:port]"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t",
                                          help="Threads (default: all cores, minus 2 on 8+ cores)."),
    runs: int = typer.Option(5, "--runs", "-r", help="Measured runs (after one discarded warm-up)."),
    target_tps: float = typer.Option(13.0, "--target-tps", help="Decode tokens/s a device must reach."),
    protocol: str = typer.Option("paper", "--protocol",
                                 help="paper (llama-mtmd-cli, Table 4) | llama-bench | followup (paper, then a "
                                      "second question about the same image in the same session)"),
    out_file: Path = typer.Option(None, "--out", help="Write the rows (a llama-bench JSON superset) to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout instead of the table."),
    chart: Path = typer.Option(None, "--chart",
                               help="PNG chart (default with 2+ models and --out: next to that file)."),
    ssh_option: list[str] = typer.Option([], "--ssh-option",
                                         help="Extra ssh/scp option, repeatable (e.g. -o Port=8022)."),
    ssh_key: Path = typer.Option(None, "--ssh-key", help="ssh identity file (ssh -i)."),
    remote_target: str = typer.Option(None, "--remote-target",
                                      help="Build to push to adb/ssh (default: by `uname -m`: linux-arm64 or host)."),
    remote_dir: str = typer.Option(None, "--remote-dir",
                                   help="Working folder on the device (adb: /data/local/tmp/imp-gguf, ssh: ~/imp-gguf)."),
    n_gen: int = typer.Option(64, "--n-gen", help="Generated tokens (paper: 64)."),
    n_text: int = typer.Option(41, "--n-text", help="Text-prompt tokens (paper: 41)."),
    no_bandwidth: bool = typer.Option(False, "--no-bandwidth", help="Skip the memory-bandwidth probe."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type (-ctk/-ctv): f16, q8_0 or q4_0."),
    fa: str = typer.Option(None, "--fa", help="Flash attention: on, off or auto (default: llama.cpp's, auto)."),
    cpu_mask: str = typer.Option(None, "--cpu-mask",
                                 help="Pin threads to these CPUs (hex, llama.cpp's -C; with --cpu-strict 1). "
                                      "Default on adb/ssh: the SoC's big cores."),
    mmap: bool = typer.Option(False, "--mmap/--no-mmap",
                              help="Map the model (llama.cpp's default) or read it (default here: repacked "
                                   "weights are then resident once, not twice)."),
    no_decode_check: bool = typer.Option(False, "--no-decode-check",
                                         help="Paper protocol: skip llama-bench tg at the same depth."),
    sweep: list[str] = typer.Option([], "--sweep", metavar="AXIS=V1,V2",
                                    help="Run the paper protocol per configuration: threads=2,4,6,8 fa=on,off "
                                         "mask=big,none kv=f16,q8_0; writes the best as a device profile."),
    sweep_more: list[str] = typer.Argument(None, hidden=True, metavar="AXIS=V1,V2"),
    profile_out: Path = typer.Option(None, "--profile-out",
                                     help="With --sweep: the device profile to write (default: "
                                          "profile-<device>.json here)."),
    profile: Path = typer.Option(None, "--profile", help="Bench with a device profile's flags."),
) -> None:
    """Benchmark models where they run: T_VE, prompt and decode tok/s, TTFT, peak RSS, bandwidth roofline.

    --protocol paper reproduces the Imp paper's Table 4 (41 text tokens + one image, 64 generated tokens,
    greedy) with llama-mtmd-cli and compares with its Snapdragon 8 Gen 3 row; --protocol llama-bench runs
    llama-bench -p <text+image> -n 64 -d <image tokens>; --protocol followup asks the paper's question, then
    a second one about the same image in the same llama-mtmd-cli chat (the image encoded once), and reports
    both totals, their ratio and what the paper's 8 Gen 3 rates predict for them. Several --model options are benched in one
    session and charted together. --sweep threads=2,4,6,8 fa=on,off mask=big,none runs the paper protocol
    per configuration, prints a table (--json: rows, sweep, profile) and writes the best as a device
    profile for `bundle --profile`. Without --threads or --cpu-mask, adb and ssh devices get their SoC's
    default (big cores only, pinned), read from the device (getprop ro.soc.model, /proc/cpuinfo, cpufreq).

    The table (or, with --json, the rows) goes to stdout, progress to stderr. Exit status 3 when a device
    misses --target-tps.
    """
    from imp_gguf.speed.protocols import BenchConfig, exit_code
    from imp_gguf.speed.bench import bench
    from imp_gguf.speed.plot import available, plot_rows
    from imp_gguf.speed.report import print_table, write_json
    from imp_gguf.speed.rows import PaperRow, rows_json

    from imp_gguf.speed.sweep import apply_profile, load_profile, make_profile, parse_axes, table, write_profile

    opts = list(ssh_option)
    if ssh_key is not None:
        opts = ["-i", str(ssh_key), *opts]
    if sweep_more and not sweep:
        raise BadInput(f"unexpected argument {sweep_more[0]!r} (sweep axes follow --sweep)")
    axes = parse_axes([*sweep, *(sweep_more or [])]) if sweep else None
    if axes and protocol != "paper":
        raise BadInput("--sweep runs the paper protocol: drop --protocol llama-bench")
    cfg = BenchConfig(protocol=protocol, runs=runs, threads=threads or None, target_tps=target_tps,
                      n_text=n_text, n_gen=n_gen, image=image, bandwidth=not no_bandwidth, kv_type=kv_type,
                      flash_attn=fa, cpu_mask=cpu_mask, cpu_strict=cpu_mask is not None, mmap=mmap,
                      llama_bench_check=not no_decode_check)
    if profile is not None:
        cfg = apply_profile(cfg, load_profile(profile)["args"])
    rows = bench(model, mmproj, device=device, cfg=cfg, ssh_options=opts, remote_target=remote_target,
                 remote_dir=remote_dir, log=_log, sweep=axes)
    if axes:
        swept = [r for r in rows if isinstance(r, PaperRow)]  # a sweep runs the paper protocol
        r0 = swept[0]
        assert r0.sweep_summary is not None and r0.soc_choice is not None
        summary = r0.sweep_summary
        prof = make_profile(summary, swept, r0.soc_choice)
        dest = profile_out or Path(f"profile-{_slug(r0.facts.device_model or r0.facts.device)}.json")
        write_profile(prof, dest)
        _log(f"wrote {dest} (best: {' '.join(prof.args)})")
        if json_out:
            print_json({"rows": rows_json(rows), "sweep": [s.to_dict() for s in summary], "profile": prof.to_dict()})
        else:
            _print_sweep(table(summary), r0, Console(highlight=False))
        if out_file is not None:
            write_json(rows, out_file)
        return
    if json_out:
        print_json(rows_json(rows))
    else:
        print_table(rows, Console(highlight=False))
    if out_file is not None:
        write_json(rows, out_file)
        _log(f"wrote {out_file}")
    if chart is None and out_file is not None and len(model) > 1:
        chart = out_file.with_suffix(".png")
    if chart is not None:
        if available():
            plot_rows([r for r in rows if r.decode_tps is not None] or rows, chart)
            _log(f"wrote {chart}")
        else:
            _log("matplotlib is not installed: no chart (pip install 'imp-gguf[plot]')")
    if exit_code(rows):
        missed = [f"{r.model_filename}: {r.verdict}" for r in rows if r.passed is False]
        raise CheckFailed("below --target-tps: " + "; ".join(missed))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)


def _slug(text: str | None) -> str:
    return safe_name(str(text or "device").replace(" ", "-")).lower()


def _print_sweep(lines: list[dict[str, str]], r0: PaperRow, console: Console) -> None:
    from rich.table import Table

    t = Table(title=f"imp-gguf bench --sweep (paper protocol) on {r0.facts.device}, llama.cpp "
                    f"{r0.facts.build_commit or '?'}; * = best, written as the profile", title_justify="left")
    for c in lines[0]:
        t.add_column(c, justify="right")
    for line in lines:
        t.add_row(*line.values())
    console.print(t)
    if r0.facts.device_kind in ("local", "qemu"):
        console.print(f"{r0.facts.device}: these are not phone numbers; the sweep and profile logic is the same",
                      markup=False, highlight=False)
