"""UX policy shared by every command: the typer factory, JSON output, error reporting."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console

# Human output goes to stderr so stdout stays clean for --json and --quiet pipelines.
err_console = Console(stderr=True, highlight=False)

STATE = {"verbose": False}


def typer_factory(help: str) -> typer.Typer:
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(msg: str) -> None:
    """A log line on stderr, verbatim: no markup, highlighting or wrapping, so paths, tensor names
    and "[n/N]" reach logs intact."""
    err_console.print(msg, markup=False, highlight=False, soft_wrap=True)


def every_tenth(say: Callable[[str], None], line: Callable[[int, int, str], str]) -> Callable[[int, int, str], None]:
    """A progress callback (done, total, what) for pipes and logs: one line per tenth of the work."""
    last = [-1]

    def update(done: int, total: int, what: str) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            say(line(done, total, what))

    return update
