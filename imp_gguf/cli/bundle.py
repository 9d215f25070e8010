"""`imp-gguf bundle`: wiring only; the work is in imp_gguf.runtime.bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from imp_gguf.cli._common import echo, info, print_json
from imp_gguf.errors import BadInput
from imp_gguf.runtime.bundle import make_bundle
from imp_gguf.runtime.webui import ui_for_bundle


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
    no_ui: bool = typer.Option(False, "--no-ui",
                               help="Leave out llama.cpp's web UI (otherwise built once with npm from the pinned "
                                    "source, ~10 MB in ui/, served by serve.sh at /)."),
) -> None:
    """Write a folder + tarball with the static tools, the models, run.sh, chat.sh and serve.sh (with llama.cpp's
    web UI at /), for adb push or Termux.

    MODEL and MMPROJ are checked first: a language model and its own mmproj (same width, same checkpoint).
    Without npm (or when its build fails) the bundle is made without the web UI, with a warning.
    """
    if (out is None) == (outdir is None):
        raise BadInput("bundle: give the folder to write once, as OUT or as -o/--outdir")
    out = out or outdir
    prof = None
    if profile is not None:
        from imp_gguf.speed.sweep import load_profile

        prof = load_profile(profile) | {"_path": profile.name}
    result = make_bundle(out, model=model, mmproj=mmproj, target=target, force=force, profile=prof,
                         ui="made with --no-ui" if no_ui else _web_ui)
    if json_out:
        print_json(result.to_dict())
    else:
        echo(f"wrote {result.folder}/")
        echo(f"wrote {result.tarball}")
        serve = "sh serve.sh (its web UI at /)" if result.manifest.web_ui.key is not None else "sh serve.sh"
        info(f'on the phone: sh run.sh IMAGE "QUESTION", sh chat.sh IMAGE, {serve} (see README.txt in the bundle)')


def _web_ui():
    """llama.cpp's web UI for the bundle (built the first time, then reused), or why there is none."""
    def started(log: Path) -> None:
        info(f"building llama.cpp's web UI with npm (once per pinned llama.cpp, about 2-3 min; log: {log})")

    ui, warning, reason = ui_for_bundle(on_start=started, progress=lambda step: info(f"  web UI: {step}"))
    if ui is None:
        info(f"warning: the bundle has no web UI: {warning}")
        return reason
    return ui


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle_cmd)
