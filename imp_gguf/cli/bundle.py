"""`imp-gguf bundle`: wiring only; the work is in imp_gguf.runtime.bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from imp_gguf.cli._common import echo, info, print_json
from imp_gguf.runtime.bundle import make_bundle
from imp_gguf.errors import BadInput


def bundle_cmd(
    out: Path = typer.Argument(None, help="Folder to write; OUT.tar.gz is written beside it (or use -o)."),
    outdir: Path = typer.Option(None, "--outdir", "-o", help="The same folder, as every command names it."),
    model: Path = typer.Option(..., "--model", "-m", help="Language-model GGUF."),
    mmproj: Path = typer.Option(..., "--mmproj", help="mmproj GGUF (vision tower + projector)."),
    target: str = typer.Option("linux-arm64", "--target",
                               help="Build whose tools to ship: linux-arm64, android-arm64 or host."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT and OUT.tar.gz."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    profile: Path = typer.Option(None, "--profile",
                                 help="Device profile from `bench --sweep`: its threads, CPU mask and flags go "
                                      "into run.sh (default: the SoC table, chosen on the phone)."),
) -> None:
    """Write a folder + tarball with the static tools, the models, run.sh, chat.sh and serve.sh, for adb push or
    Termux.

    MODEL and MMPROJ are checked first: a language model and its own mmproj (same width, same checkpoint).
    """
    if (out is None) == (outdir is None):
        raise BadInput("bundle: give the folder to write once, as OUT or as -o/--outdir")
    out = out or outdir
    prof = None
    if profile is not None:
        from imp_gguf.speed.sweep import load_profile

        prof = load_profile(profile) | {"_path": profile.name}
    result = make_bundle(out, model=model, mmproj=mmproj, target=target, force=force, profile=prof)
    if json_out:
        print_json({"folder": str(result.folder), "tarball": str(result.tarball), **result.manifest})
    else:
        echo(f"wrote {result.folder}/")
        echo(f"wrote {result.tarball}")
        info('on the phone: sh run.sh IMAGE "QUESTION", sh chat.sh IMAGE, sh serve.sh (see README.txt in the bundle)')


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle_cmd)
