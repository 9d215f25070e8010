"""`imp-gguf runtime build|build-ui|where`: wiring only; the work is in imp_gguf.runtime.build and .webui."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from imp_gguf.cli._common import STATE, echo, err_console, every_tenth, info, print_json, show_bars, typer_factory
from imp_gguf.runtime import build as rt
from imp_gguf.runtime import webui


TARGET_HELP = "host | linux-arm64 (static, Snapdragon 8 Gen 3) | android-arm64 (needs ANDROID_NDK) | termux (prints steps)"


def _progress_printer():
    """A rich progress bar on a terminal; on a pipe/log, one line every 10% so logs stay short."""
    if show_bars():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("building"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.description}"), console=err_console, transient=True)
        task = bar.add_task("", total=None)

        def update(n: int, total: int, what: str) -> None:
            bar.update(task, completed=n, total=total, description=what.rsplit("/", 1)[-1][:50])

        return bar, update

    return None, every_tenth(info, lambda n, total, what: f"  [{n}/{total}] {what[:90]}")


sub = typer_factory("Build and locate the llama.cpp tools pinned by imp-gguf (cached outside the repo).")


@sub.command("build")
def build_cmd(
    target: str = typer.Option("host", "--target", help=TARGET_HELP),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel compile jobs (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Delete the cached build and rebuild from scratch."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Build llama-mtmd-cli, llama-bench, llama-quantize, llama-server, llama-perplexity for a target, from the
    pinned llama.cpp with imp-gguf's patches applied (clip.cpp reads the mmproj's preprocessing keys)."""
    if target == "termux":  # nothing is built here: the steps run on the phone
        steps = rt.TermuxSteps(rt.termux_instructions())
        if json_out:
            print_json(steps.to_dict())
        else:
            sys.stdout.write(steps.script)
        return
    bar, update = _progress_printer()

    def started(bdir) -> None:
        info(f"building llama.cpp tools for {target} in {bdir} (about 10 min on 2 cores; log: build.log)")
        if bar is not None:  # only now: a reused build should not flash a bar
            bar.start()

    try:
        result = rt.build(target, jobs=jobs or None, force=force, progress=update, on_start=started)
    except rt.BuildFailed as exc:
        if bar is not None:
            bar.stop()
        _show_tail(exc)
        raise
    finally:
        if bar is not None:
            bar.stop()
    if json_out:
        print_json(result.to_dict())
    else:
        how = "reused" if result.reused else f"built in {result.seconds / 60:.1f} min"
        patches = ", ".join(p.name for p in result.patches) or "none"
        echo(f"{target}: {how}: {result.bin_dir} (patches: {patches})")


def _show_tail(exc: rt.BuildFailed) -> None:
    """The failed build's last log lines on stderr (all of them with --verbose) before its one-line error."""
    if exc.tail:
        info(f"last lines of {exc.log}:")
        tail = exc.tail if STATE["verbose"] else exc.tail[-15:]
        err_console.print("\n".join(tail), markup=False, highlight=False, soft_wrap=True)


@sub.command("build-ui")
def build_ui_cmd(
    force: bool = typer.Option(False, "--force", help="Build it again even if it is cached."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Build llama.cpp's web UI from the pinned source's tools/ui with npm (npm ci, npm run build), once per
    pinned llama.cpp; `bundle` ships it and serve.sh serves it at /. Needs Node.js >= 20.19, npm and the npm
    registry (or npm's cache)."""
    def started(log) -> None:
        info(f"building llama.cpp's web UI with npm (about 2-3 min on 2 cores; log: {log})")

    try:
        result = webui.build_ui(force=force, on_start=started, progress=lambda step: info(f"  {step}"))
    except webui.UiBuildFailed as exc:
        _show_tail(exc)
        raise
    if json_out:
        print_json(result.to_dict())
    else:
        how = "reused" if result.reused else f"built in {result.seconds / 60:.1f} min"
        echo(f"web UI {result.key}: {how}: {result.dist} ({result.stamp['files']} files, "
             f"{result.stamp['bytes'] / 1e6:.1f} MB)")


@sub.command("where")
def where_cmd(
    target: str = typer.Option("host", "--target", help=TARGET_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Print the paths of the built tools, then one `patch<TAB>NAME` line per patch applied to the source,
    then `ui<TAB>FOLDER` when llama.cpp's web UI is built (exit 2 if that target is not built yet with the
    current patches)."""
    result = rt.where(target)
    ui = webui.find_ui()
    if json_out:
        print_json({**result.to_dict(), "ui": ui.to_dict() if ui is not None else None})
    else:
        for name, path in result.binaries.items():
            typer.echo(f"{name}\t{path}")
        for patch in result.patches:
            typer.echo(f"patch\t{patch.name}")
        if ui is not None:
            typer.echo(f"ui\t{ui.dist}")


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="runtime")
