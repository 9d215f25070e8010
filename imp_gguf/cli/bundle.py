"""`imp-gguf bundle`: wiring only; the work is in imp_gguf.runtime.bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from imp_gguf.cli._common import err_console, print_json
from imp_gguf.runtime.bundle import make_bundle


def register(app: typer.Typer) -> None:
    @app.command("bundle")
    def bundle_cmd(
        out: Path = typer.Argument(..., help="Folder to write; OUT.tar.gz is written beside it."),
        model: Path = typer.Option(..., "--model", "-m", help="Language-model GGUF."),
        mmproj: Path = typer.Option(..., "--mmproj", help="mmproj GGUF (vision tower + projector)."),
        target: str = typer.Option("linux-arm64", "--target", "-t", help="Build whose tools to ship."),
        force: bool = typer.Option(False, "--force", help="Replace an existing OUT and OUT.tar.gz."),
        json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    ) -> None:
        """Write a folder + tarball with the static tools, the models and run.sh, for adb push or Termux."""
        result = make_bundle(out, model=model, mmproj=mmproj, target=target, force=force)
        if json_out:
            print_json({"folder": str(result.folder), "tarball": str(result.tarball), **result.manifest})
        else:
            err_console.print(
                f"wrote {result.folder}/ and {result.tarball.name}; on the phone: sh run.sh IMAGE \"QUESTION\"",
                markup=False, soft_wrap=True,
            )
