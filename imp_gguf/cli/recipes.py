"""`imp-gguf recipes list|show|compare`: wiring only; the work is in imp_gguf.quant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from imp_gguf.cli._common import STATE, ProgressLines, echo, info, print_json, show_bars, typer_factory
from imp_gguf.errors import BadInput


def _print(as_json: Any, lines: Callable[[], list[str]]) -> None:
    """The result on stdout: as JSON when given, else as text lines."""
    if as_json is not None:
        print_json(as_json)
        return
    for line in lines():
        echo(line)


sub = typer_factory("Quantization recipes (quant_recipes/*.toml): list them, show one, compare them on a checkpoint.")


@sub.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print the recipes as JSON on stdout.")) -> None:
    """List the shipped recipes on stdout: bits per weight, size and decode speed on the released 3B model,
    size, KL (with its spread over seeds) and accuracy measured on the tiny Imp, whether KL falls as bits
    rise, the recommended one, and the names --quant accepts."""
    from imp_gguf.quant.catalog import recipe_listing, render

    listing = recipe_listing()
    _print(listing.to_dict() if json_out else None, lambda: render(listing.rows))


@sub.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Recipe name (see `recipes list`) or a path to a recipe .toml."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="An F16 GGUF (model or mmproj): print the type "
                                        "each tensor gets, with llama.cpp's shape fallbacks."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """Show one recipe on stdout: its settings, its trade-off and (with --plan) the per-tensor result."""
    from imp_gguf.quant.catalog import recipe_card, render_card

    card = recipe_card(name, plan)
    _print(card.to_dict() if json_out else None, lambda: render_card(card))


@sub.command("compare")
def compare_cmd(
    checkpoint: str = typer.Argument(..., help="Imp checkpoint folder or hub repo id (as for convert)."),
    recipes: Optional[str] = typer.Option(None, "--recipes", "-r", help="Comma-separated recipe names or "
                                          ".toml paths (default: every shipped recipe)."),
    out: Path = typer.Option(Path("recipe-compare"), "--outdir", "-o", help="Folder for the GGUFs and the report."),
    out_old: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Old spelling of --outdir."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Fail (exit 3) if a recipe's KL, size or "
                                            "held-out accuracy regresses beyond this baseline's tolerance."),
    write_baseline: Optional[Path] = typer.Option(None, "--write-baseline", help="Write a baseline from this run."),
    runs: int = typer.Option(3, "--runs", help="Speed runs per recipe (the median is reported)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
    clean: bool = typer.Option(False, "--clean", help="Delete each recipe's GGUFs once measured (keep the report)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report (and --write-baseline file)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Convert once to F16, quantize by each recipe, and report size, fidelity (KL vs F16) and speed (and,
    for a tiny Imp, held-out accuracy next to PyTorch's: see `imp-gguf eval`).

    The report goes to stdout (and OUTDIR/report.md, report.json), progress to stderr.
    """
    from imp_gguf.quant.compare import BaselineRegression, apply_baseline, compare_recipes
    from imp_gguf.quant.compare import write_baseline as save_baseline
    from imp_gguf.tiny_imp.evaluate import accuracy_scorer

    out = out_old if out_old is not None else out
    names = [n.strip() for n in recipes.split(",") if n.strip()] if recipes else None
    if recipes is not None and not names:
        raise BadInput("--recipes is empty")
    # Each step is logged; on a pipe or log a long one (the F16 reference, a recipe) also ticks every few seconds.
    with ProgressLines(enabled=not (show_bars() or STATE["quiet"])) as ticker:
        def log(m: str) -> None:
            info(f" -- {m}")
            ticker.phase(m, announce=False)

        report = compare_recipes(checkpoint, names, out, runs=runs, force=force, n_threads=threads, log=log,
                                 keep_files=not clean, verbose=STATE["verbose"],
                                 scorers=[accuracy_scorer(checkpoint, n_threads=threads)]).to_dict()
    problems = apply_baseline(report, baseline, out) if baseline else []
    if write_baseline:
        save_baseline(report, write_baseline, force=force)
        info(f"wrote baseline {write_baseline}")
    if json_out:
        print_json(report)
    else:
        sys.stdout.write((out / "report.md").read_text())
    if problems:
        raise BaselineRegression("baseline regression: " + "; ".join(problems))


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="recipes")
