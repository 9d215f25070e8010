"""`imp-gguf demo`: the whole pipeline on the embedded tiny Imp, no downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from imp_gguf.cli._common import info, print_json


def demo_cmd(
    outdir: Path = typer.Option(Path("imp-gguf-demo"), "--outdir", "-o", help="Where the GGUF files go."),
    quant: str = typer.Option("q4_k", "--quant", "-q", help="Recipe for the demo (use 'none' for F16)."),
    force: bool = typer.Option(True, "--force/--no-force", help="Overwrite the demo's previous outputs."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Convert the bundled tiny Imp, quantize it, and answer questions about bundled images it never saw."""
    from imp_gguf.demo import run_demo

    log = (lambda m: None) if json_out else info
    result = run_demo(outdir, quant=None if quant == "none" else quant, force=force, log=log)
    if json_out:
        print_json(result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
