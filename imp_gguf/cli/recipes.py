"""`imp-gguf recipes list|show|compare`: wiring only; the work is in imp_gguf.quant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from imp_gguf.cli._common import echo, info, print_json, typer_factory
from imp_gguf.errors import BadInput


def register(app: typer.Typer) -> None:
    sub = typer_factory("Quantization recipes (quant_recipes/*.toml): list them, show one, compare them on a checkpoint.")

    @sub.command("list")
    def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print the recipes as JSON on stdout.")) -> None:
        """List the shipped recipes on stdout: bits per weight and size on the released 3B model, size, KL,
        accuracy and speed measured on the tiny Imp, the recommended one, and the names --quant accepts."""
        from imp_gguf.quant.catalog import aliases, catalog, render

        rows = catalog()
        if json_out:
            print_json({"recipes": rows, "aliases": aliases()})
            return
        for line in render(rows):
            echo(line)

    @sub.command("show")
    def show_cmd(
        name: str = typer.Argument(..., help="Recipe name (see `recipes list`) or a path to a recipe .toml."),
        plan: Optional[Path] = typer.Option(None, "--plan", help="An F16 GGUF (model or mmproj): print the type "
                                            "each tensor gets, with llama.cpp's shape fallbacks."),
        json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
    ) -> None:
        """Show one recipe on stdout: its settings, its trade-off and (with --plan) the per-tensor result."""
        from imp_gguf.gguf_info import read_gguf_meta, tensor_table
        from imp_gguf.quant.recipes import load_recipe
        from imp_gguf.quant.rules import expected_types

        from imp_gguf.quant.released import released_fallbacks

        recipe = load_recipe(name)
        out = recipe.to_dict()
        out["released_fallbacks"] = released_fallbacks(recipe)
        if plan is not None:
            meta = read_gguf_meta(plan)
            arch = meta.get("general.architecture")
            part = "mmproj" if arch == "clip" else "lm"
            n_layer = 0 if part == "mmproj" else int(meta.get(f"{arch}.block_count") or 0)
            choices = expected_types(recipe, tensor_table(plan), n_layer, part=part)
            out["plan"] = {"file": str(plan), "part": part, "tensors": [c.to_dict() for c in choices]}
        if json_out:
            print_json(out)
            return
        src = recipe.path or "(built in)"
        lines = [f"{recipe.name}: {recipe.description}", f"  file:       {src}",
                 f"  lm ftype:   {recipe.lm.ftype} (base {recipe.lm.base_type}{', pure' if recipe.lm.pure else ''})",
                 f"  output:     {recipe.lm.output or 'llama.cpp mixture'}",
                 f"  token_embd: {recipe.lm.token_embd or 'llama.cpp mixture'}",
                 f"  overrides:  {', '.join(f'{p}={t}' for p, t in recipe.lm.overrides) or 'none'}",
                 f"  mmproj:     {recipe.mmproj.ftype} (rows not divisible by 32 stay F16)",
                 f"  file names: <model>-{recipe.encoding}.gguf, mmproj-<model>-{recipe.mmproj_encoding}.gguf"]
        lines.append("  shape fallbacks on the released Imp models (llama.cpp's rules, predicted):")
        for model, rows in out["released_fallbacks"].items():
            lines.append(f"    {model}: {'; '.join(rows) if rows else 'none'}")
        for line in lines:
            echo(line)
        if plan is not None:
            # Plain aligned lines: tensor names must not be wrapped or cut in logs.
            echo(f"\n{Path(plan).name} ({out['plan']['part']}): tensor, row width, recipe's type -> written type, why")
            for c in out["plan"]["tensors"]:
                mark = "  <- shape fallback" if c["fallback"] else ""
                echo(f"  {c['name']:<36} {c['ne0']:>6}  {c['wanted']:>6} -> {c['type']:<6} {c['rule']}{mark}")

    @sub.command("compare")
    def compare_cmd(
        checkpoint: str = typer.Argument(..., help="Imp checkpoint folder."),
        recipes: Optional[str] = typer.Option(None, "--recipes", "-r", help="Comma-separated recipe names or "
                                              ".toml paths (default: every shipped recipe)."),
        out: Path = typer.Option(Path("recipe-compare"), "--outdir", "-o", help="Folder for the GGUFs and the report."),
        out_old: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Old spelling of --outdir."),
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Fail (exit 1) if a recipe's KL, size or "
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

        out = out_old if out_old is not None else out
        names = [n.strip() for n in recipes.split(",") if n.strip()] if recipes else None
        if recipes is not None and not names:
            raise BadInput("--recipes is empty")
        report = compare_recipes(checkpoint, names, out, runs=runs, force=force, n_threads=threads,
                                 log=lambda m: info(f" -- {m}"), keep_files=not clean)
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

    app.add_typer(sub, name="recipes")
