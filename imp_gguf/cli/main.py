"""Entry point `imp-gguf`: wires the command modules and turns errors into exit codes.

Exit status: 0 success, 1 internal error (a bug or a tool that failed unexpectedly),
2 bad input (checkpoint, file, image, flag or device), 3 a check failed (parity, baseline, bench target),
130 interrupted (Ctrl-C, SIGINT),
143 terminated (SIGTERM). See docs/exit-codes.md.

SIGTERM is turned into the same exception path as Ctrl-C, so `finally` blocks run: the writer's
temporary files are removed and no partial output is left under a final name.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
import warnings
from typing import Any

import typer

from imp_gguf import __version__
from imp_gguf.cli import (bench, bundle, card, convert, demo, evaluate, fixtures, inspect_cmd, recipes, run,
                          runtime, verify)
from imp_gguf.cli._common import STATE, err_console, hoist_flags, typer_factory
from imp_gguf.errors import ImpGgufError, ToolMissing

# typer >= 0.26 vendors its own click, older typer runs on click itself: either way the usage errors
# are ClickException, reached through the BadParameter typer re-exports (click is not our dependency).
USAGE_ERRORS: tuple[type[Any], ...] = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
EXITS = (typer.Exit,)  # click's own Exit and Abort in older typer, typer's in newer
ABORTS = (typer.Abort,)

# Modules that only the optional extras bring (pyproject.toml). A command reaching one without its
# extra says, in one line, what to install, and exits 2 like any missing tool; not "internal error".
EXTRA_MODULES = {"torch": "reference", "transformers": "reference", "safetensors": "reference",
                 "tokenizers": "reference", "matplotlib": "plot"}


def missing_extra(exc: ModuleNotFoundError) -> ToolMissing | None:
    """ToolMissing naming the install command if `exc` is about a module of an extra, else None."""
    extra = EXTRA_MODULES.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return ToolMissing(f"{exc.name} is not installed (it comes with the {extra} extra): "
                       f"pip install 'imp-gguf[{extra}]'")

app = typer_factory(
    "Convert MILVLG Imp checkpoints to llama.cpp GGUF files (language model + mmproj), "
    "quantize them with recipes, run them and benchmark them.\n\n"
    "Typical use:  imp-gguf convert ./Imp-v1.5-3B-196 --outdir out --quant q4_k"
)

# Each module defines register(app). Order is the order shown in --help.
COMMAND_MODULES = (convert, card, inspect_cmd, verify, recipes, evaluate, runtime, bundle, run, bench, demo,
                   fixtures)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imp-gguf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show tracebacks, tool logs and library warnings (here or after the command)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Print results and errors only: no progress or notes (here or after the "
                                    "command)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["verbose"], STATE["quiet"] = verbose, quiet


for _module in COMMAND_MODULES:
    _module.register(app)


class Terminated(BaseException):
    """SIGTERM, raised wherever the program is, so `finally` blocks clean up as for Ctrl-C.

    A BaseException like KeyboardInterrupt (no `except Exception` swallows it), but not a subclass
    of it: typer would turn that into a plain exit status 130.
    """


_signals = {"interrupted": False}


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _on_sigint(signum: int, frame: object) -> None:
    # typer turns KeyboardInterrupt into a silent return value 130; remember why, to say so.
    _signals["interrupted"] = True
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    # Only the main thread may set handlers; main() called from a worker thread keeps the defaults.
    # A SIGINT that is ignored (nohup, background job) stays ignored.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
    _signals["interrupted"] = False
    try:
        return _run(argv)
    finally:
        for signum, previous in handlers.items():
            if previous is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(signum, previous)


def _run(argv: list[str] | None) -> int:
    args = hoist_flags(list(sys.argv[1:] if argv is None else argv), typer.main.get_command(app))
    STATE["verbose"], STATE["quiet"] = "--verbose" in args[:2], "--quiet" in args[:2]
    # Libraries' warnings (numpy, torch, transformers) are not the user's business; --verbose shows them.
    with warnings.catch_warnings():
        if not STATE["verbose"]:
            warnings.simplefilter("ignore")
        try:
            return _run_app(args)
        finally:
            STATE["quiet"] = False  # a library caller's next log line is not silenced by this command's -q


def _run_app(args: list[str]) -> int:
    try:
        try:
            rv = app(args=args, prog_name="imp-gguf", standalone_mode=False)
        except ModuleNotFoundError as exc:
            needed = missing_extra(exc)
            if needed is None:
                raise
            raise needed from exc
        if rv == 130 and _signals["interrupted"]:
            raise KeyboardInterrupt()
        return rv if isinstance(rv, int) else 0
    except EXITS as exc:
        return exc.exit_code
    except USAGE_ERRORS as exc:  # a bad flag or argument: bad input, one line like every other error
        if STATE["verbose"]:
            traceback.print_exc()
        msg = exc.format_message()
        if msg:  # empty: no arguments at all, and the help was already shown
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"error: {msg}{hint}", markup=False, soft_wrap=True)
        return exc.exit_code
    except Terminated:
        err_console.print("error: terminated (SIGTERM); no partial output was kept")
        return 143
    except (KeyboardInterrupt, *ABORTS):
        err_console.print("error: interrupted; no partial output was kept")
        return 130
    except ImpGgufError as exc:
        if STATE["verbose"]:
            traceback.print_exc()
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err_console.print(f"error: {msg}", markup=False, soft_wrap=True)
        return exc.exit_code
    except MemoryError:
        err_console.print("error: out of memory", markup=False)
        return 1
    except OSError as exc:
        # Disk full, permission denied... are problems with the user's environment.
        if STATE["verbose"]:
            traceback.print_exc()
        err_console.print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), markup=False, soft_wrap=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if STATE["verbose"]:
            traceback.print_exc()
        err_console.print(
            f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (rerun with --verbose)",
            markup=False,
            soft_wrap=True,
        )
        return 1


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
