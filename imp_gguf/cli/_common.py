"""UX policy shared by every command: the typer factory, JSON output, error reporting."""

from __future__ import annotations

import json
import sys
from typing import Any

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
    err_console.print(msg)
