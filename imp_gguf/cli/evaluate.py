"""`imp-gguf eval`: does the model still see? Held-out accuracy of the tiny Imp, PyTorch vs each recipe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from imp_gguf.cli._common import STATE, echo, err_console, info, print_json, show_bars
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.writer import atomic_outputs

if TYPE_CHECKING:
    from imp_gguf.tiny_imp.evaluate import AccuracyReport

HELP = """Held-out accuracy of a tiny Imp (the bundled one by default) in PyTorch and, through llama.cpp,
after conversion and each quant recipe: the same N questions about images it never trained on,
answers scored by exact match. Prints accuracy per question kind and how often each recipe gives
PyTorch's exact answer.

Only checkpoints trained by `python -m imp_gguf.tiny_imp.train` have a held-out set; for a real Imp,
`imp-gguf recipes compare` measures divergence from F16 instead.

Examples:

  imp-gguf eval

  imp-gguf eval --recipes f16,q4_k,q3_k -n 100 --json

  imp-gguf eval ./my-tiny-imp --plot accuracy.png --outdir eval-ggufs
"""


def _progress(enabled: bool):
    """(context manager, factory of per-runtime ticks): a rich bar on a terminal, nothing otherwise."""
    import contextlib

    if not enabled or not show_bars():
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)

    def factory(runtime: str, total: int) -> Callable[[], None]:
        task = bar.add_task(runtime, total=total)
        return lambda: bar.advance(task)

    return bar, factory


def eval_cmd(
    checkpoint: Optional[Path] = typer.Argument(None, help="Tiny Imp checkpoint folder (default: the bundled one)."),
    recipes: Optional[str] = typer.Option(None, "--recipes", "-r",
                                          help="Comma-separated recipe names or .toml paths (default: every "
                                               "shipped recipe; see `imp-gguf recipes list`)."),
    n: int = typer.Option(200, "--questions", "-n", help="Held-out questions (balanced over the question kinds)."),
    seed: int = typer.Option(1, "--seed", help="Held-out stream (never used in training)."),
    pytorch: bool = typer.Option(True, "--pytorch/--no-pytorch",
                                 help="Also answer in PyTorch (needs the [reference] extra: torch, transformers)."),
    outdir: Optional[Path] = typer.Option(None, "--outdir", "-o", help="Keep the GGUFs here (default: a temporary folder)."),
    threads: int = typer.Option(1, "--threads", "-t", help="llama.cpp threads."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of accuracy by question kind."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing --plot file or GGUFs in --outdir."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    from imp_gguf.tiny_imp.evaluate import accuracy_report, pytorch_available

    if recipes is None:
        from imp_gguf.quant.recipes import list_recipes

        names = [r.name for r in list_recipes()]
    else:
        names = [r.strip() for r in recipes.split(",") if r.strip()]
    if not names:
        raise BadInput("--recipes is empty")
    if n < 1:
        raise BadInput("--questions must be at least 1")
    if plot is not None and plot.exists() and not force:
        raise OutputExists(f"{plot} exists; pass --force to overwrite it")
    if outdir is not None and outdir.exists() and any(outdir.iterdir()) and not force:
        raise OutputExists(f"{outdir} is not empty; pass --force to reuse it")
    if pytorch and not pytorch_available():
        raise BadInput("the PyTorch side needs torch and transformers: pip install 'imp-gguf[reference]', "
                       "or pass --no-pytorch")
    say = (lambda m: None) if json_out else (lambda m: info(f" -- {m}"))
    bar, factory = _progress(not json_out)
    with bar:
        report = accuracy_report(checkpoint, names, n=n, seed=seed, pytorch=pytorch, workdir=outdir,
                                 n_threads=threads, log=say, progress=factory, verbose=STATE["verbose"])
    if plot is not None:
        from imp_gguf.quant.plot import available, plot_accuracy_by_kind

        if not available():
            raise BadInput("--plot needs matplotlib (pip install matplotlib)")
        with atomic_outputs([plot], force) as (tmp,):
            plot_accuracy_by_kind(report.to_dict(), tmp, title=Path(report.checkpoint).name)
        report = replace(report, plot=str(plot))
    if json_out:
        print_json(report.to_dict())
        return
    _show(report)


def _show(report: AccuracyReport) -> None:
    kinds = list(next(iter(report.by_kind.values())))
    table = Table(title=f"{Path(report.checkpoint).name}: {report.n} held-out questions (seed {report.seed})")
    table.box, table.padding, table.pad_edge = None, (0, 1), False  # no rules: fits 80 columns
    table.caption = ("pytorch: the checkpoint in PyTorch (f32 maths); others: llama.cpp on that recipe's GGUFs. "
                     "same: share of answers identical to PyTorch's.")
    for col in ("runtime", "all", *kinds, "same", "LM MB"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    size = {rt: report.files.get(rt, {}).get("lm_bytes", float("inf")) for rt in report.accuracy}
    for rt in sorted(report.accuracy, key=lambda r: (r != "pytorch", -size[r])):  # PyTorch, then largest first
        acc = report.accuracy[rt]
        same = report.agreement_with_pytorch.get(rt)
        table.add_row(rt, f"{acc:.3f}", *[f"{report.by_kind[rt][k]:.2f}" for k in kinds],
                      "-" if same is None else f"{same:.1%}", "-" if rt == "pytorch" else f"{size[rt] / 1e6:.2f}")
    Console(highlight=False).print(table)  # the result: stdout
    if report.plot:
        echo(f"plot: {report.plot}")


def register(app: typer.Typer) -> None:
    app.command("eval", help=HELP)(eval_cmd)
