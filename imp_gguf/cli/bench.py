"""`imp-gguf bench`: wiring only; the work is in imp_gguf.bench.

Exit status: 0, or 1 when a device result (adb/ssh on an aarch64 device) misses --target-tps, so a
device runner in CI can gate on it. Off-device (local host, qemu) results never fail: they only say what
they measured. 2 for bad input, as everywhere.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rich.console import Console

from imp_gguf.cli._common import info as _log, print_json


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        model: list[Path] = typer.Option(..., "--model", "-m", help="Language-model GGUF; repeat to compare several."),
        mmproj: list[Path] = typer.Option(..., "--mmproj", help="mmproj GGUF: one for all models, or one per --model."),
        image: Path = typer.Option(None, "--image", help="Image (default: a built-in synthetic photo)."),
        device: str = typer.Option("local", "--device", "-d",
                                   help="local | qemu | adb[:SERIAL] | ssh://user@host[:port]"),
        threads: int = typer.Option(0, "--threads", "-t", help="Threads (default: all cores, minus 2 on 8+ cores)."),
        runs: int = typer.Option(5, "--runs", "-r", help="Measured runs (after one discarded warm-up)."),
        target_tps: float = typer.Option(13.0, "--target-tps", help="Decode tokens/s a device must reach."),
        protocol: str = typer.Option("paper", "--protocol", help="paper (llama-mtmd-cli, Table 4) | llama-bench"),
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
    ) -> None:
        """Benchmark models where they run: T_VE, prompt and decode tok/s, TTFT, peak RSS, bandwidth roofline.

        --protocol paper reproduces the Imp paper's Table 4 (41 text tokens + one image, 64 generated tokens,
        greedy) with llama-mtmd-cli and compares with its Snapdragon 8 Gen 3 row; --protocol llama-bench runs
        llama-bench -p <text+image> -n 64 -d <image tokens>. Several --model options are benched in one
        session and charted together.

        The table (or, with --json, the rows) goes to stdout, progress to stderr.
        """
        from imp_gguf.bench import BenchConfig, bench, exit_code
        from imp_gguf.bench.plot import available, plot_rows
        from imp_gguf.bench.report import print_table, write_json

        opts = list(ssh_option)
        if ssh_key is not None:
            opts = ["-i", str(ssh_key), *opts]
        cfg = BenchConfig(protocol=protocol, runs=runs, threads=threads or None, target_tps=target_tps,
                          n_text=n_text, n_gen=n_gen, image=image, bandwidth=not no_bandwidth)
        rows = bench(model, mmproj, device=device, cfg=cfg, ssh_options=opts, remote_target=remote_target,
                     remote_dir=remote_dir, log=_log)
        if json_out:
            print_json(rows)
        else:
            print_table(rows, Console(highlight=False))
        if out_file is not None:
            write_json(rows, out_file)
            _log(f"wrote {out_file}")
        if chart is None and out_file is not None and len(model) > 1:
            chart = out_file.with_suffix(".png")
        if chart is not None:
            if available():
                plot_rows([r for r in rows if r.get("decode_tps") is not None] or rows, chart)
                _log(f"wrote {chart}")
            else:
                _log("matplotlib is not installed: no chart (pip install 'imp-gguf[plot]')")
        code = exit_code(rows)
        if code:
            raise typer.Exit(code)
