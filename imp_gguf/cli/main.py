"""Entry point `imp-gguf`: wires the command modules and turns errors into exit codes.

Exit status: 0 success, 1 internal error (a bug or a tool that failed unexpectedly),
2 bad input (checkpoint, file, image, flag or device), 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click
import typer

from imp_gguf import __version__
from imp_gguf.cli._common import STATE, err_console, typer_factory
from imp_gguf.errors import ImpGgufError

app = typer_factory(
    "Convert MILVLG Imp checkpoints to llama.cpp GGUF files (language model + mmproj), "
    "quantize them with recipes, run them and benchmark them.\n\n"
    "Typical use:  imp-gguf convert ./Imp-v1.5-3B-196 --outdir out --quant q4_k"
)

# Each module defines register(app). Order is the order shown in --help.
COMMAND_MODULES = [
    "convert",
    "inspect_cmd",
    "verify",
    "recipes",
    "runtime",
    "bundle",
    "run",
    "bench",
    "demo",
    "fixtures",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imp-gguf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and tool logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["verbose"] = verbose


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"imp_gguf.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command still being written must not break the others
        if exc.name != f"imp_gguf.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    STATE["verbose"] = "--verbose" in args or "-v" in args[:1]
    try:
        rv = app(args=args, prog_name="imp-gguf", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
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
