"""`imp-gguf card`: wiring only; the work is in imp_gguf.share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from imp_gguf.cli._common import STATE, echo, info, print_json

if TYPE_CHECKING:
    from imp_gguf.share.card import CardResult

HELP = """Make a folder of converted GGUFs ready to share: write a model card (README.md) and an ollama Modelfile.

Both are read from the GGUFs in FOLDER (and from report.json where `recipes compare` measured them): the card
lists every GGUF with its recipe, size, bits per weight, KL and accuracy, and says how to run it (llama-server,
llama-mtmd-cli, ollama, LM Studio, imp-gguf bundle) and how to prepare images. Run it again after adding a
recipe. Its own earlier README.md and Modelfile are replaced; other files of those names only with --force.

Upload with huggingface_hub's CLI:  hf upload YOU/NAME-GGUF FOLDER

The paths written go to stdout (with --json, the whole result).

Examples:

\b
  imp-gguf card out
  imp-gguf card out --publisher me --lmstudio ~/.lmstudio/models
"""


def write_and_show(folder: Path, *, publisher: str = "local", force: bool = False, lmstudio: Path | None = None,
                   json_out: bool = False, quiet: bool = False) -> CardResult:
    """Write the card; unless json_out, print the paths written (stdout) and the notes (stderr)."""
    from imp_gguf.share.card import write_card

    result = write_card(folder, publisher=publisher, force=force, lmstudio=lmstudio)
    if json_out:
        return result
    for path in (result.card, result.modelfile, result.lmstudio):
        if path:
            echo(str(path) if quiet else f"wrote {path}")
    for note in result.notes:
        info(f"  note: {note}")
    return result


def card_cmd(
    folder: Path = typer.Argument(..., help="Folder holding the language-model and mmproj GGUFs."),
    publisher: str = typer.Option("local", "--publisher",
                                  help="Your hub user or organization: names the upload command and the LM "
                                       "Studio folder."),
    lmstudio: Optional[Path] = typer.Option(None, "--lmstudio", metavar="MODELS_DIR",
                                            help="Also lay the GGUFs out for LM Studio: MODELS_DIR/PUBLISHER/"
                                                 "<name>-GGUF/ (hard links; e.g. ~/.lmstudio/models)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace a README.md or Modelfile not written by "
                                                            "imp-gguf, and files in the LM Studio folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    result = write_and_show(folder, publisher=publisher, force=force, lmstudio=lmstudio, json_out=json_out,
                            quiet=STATE["quiet"])
    if json_out:
        print_json(result.to_dict())


def register(app: typer.Typer) -> None:
    app.command("card", help=HELP)(card_cmd)
