"""`imp-gguf verify`: parity of converted files against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imp_gguf.cli._common import echo, print_json
from imp_gguf.errors import CheckFailed, ToolMissing
from imp_gguf.pair import check_pair


def verify_cmd(
    ckpt: Path = typer.Argument(..., help="The Imp checkpoint folder the files were converted from."),
    model: Path = typer.Argument(..., help="Language-model GGUF."),
    mmproj: Path = typer.Argument(..., help="mmproj GGUF."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image to test with (default: a generated one)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads for llama.cpp (default: all cores)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Run MODEL + MMPROJ in llama.cpp and the checkpoint in PyTorch; report logits, image-embedding and
    tokenizer parity on stdout. Exit 3 if parity fails (or cannot be measured: the error line says why).

    Needs the PyTorch side: pip install 'imp-gguf[reference]'.
    """
    check_pair(model, mmproj)
    try:
        from imp_gguf.reference.parity import verify
    except ImportError as exc:
        raise ToolMissing("verify needs the PyTorch reference: pip install 'imp-gguf[reference]'") from exc
    report = verify(ckpt, model, mmproj, image=image, n_threads=threads)
    if json_out:
        print_json(report.to_dict())
    else:
        for k, v in report.measurements():
            echo(f"{k:34s} {'undefined' if v is None else v}")
        echo("parity OK" if report.ok else "parity FAILED")
    if not report.ok:
        raise CheckFailed("parity failed: " + "; ".join(report.problems))


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
