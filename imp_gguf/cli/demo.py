"""`imp-gguf demo`: the whole pipeline on the embedded tiny Imp, no downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from imp_gguf.cli._common import STATE, echo, info, print_json


def demo_cmd(
    outdir: Path = typer.Option(Path("imp-gguf-demo"), "--outdir", "-o", help="Where the GGUF files go."),
    quant: str = typer.Option("q4_k", "--quant",
                              help="Recipe for the demo, as convert --quant takes it (none: F16)."),
    force: bool = typer.Option(True, "--force/--no-force", help="Overwrite the demo's previous outputs."),
    json_out: bool = typer.Option(False, "--json", help="Print the files and answers as JSON on stdout."),
) -> None:
    """Convert the bundled tiny Imp, quantize it, and answer questions about bundled images it never saw.

    The files and the answers go to stdout, progress to stderr.
    """
    from imp_gguf.demo import run_demo

    quiet = lambda m: None  # noqa: E731
    result = run_demo(outdir, quant=quant, force=force, log=quiet if json_out else info,
                      show=quiet if json_out else echo, verbose=STATE["verbose"])
    if json_out:
        print_json(result.to_dict())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
