"""UX policy shared by every command: the typer factory, JSON output, error reporting."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Callable

import typer
from rich.console import Console

# Results (what a command was asked for: tables, paths, answers, JSON) go to stdout, so they pipe and
# redirect like llama-gguf's, hf's and git's; progress, notes and errors go to stderr.
err_console = Console(stderr=True, highlight=False)

STATE = {"verbose": False}


# Help is plain click formatting: paragraphs are re-filled to the terminal (up to 120 columns), "\\b"
# keeps an example block as written, and brackets such as 'imp-gguf[reference]' print as typed.
CONTEXT_SETTINGS = {"max_content_width": 120, "help_option_names": ["-h", "--help"]}


def typer_factory(help: str) -> typer.Typer:
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings=CONTEXT_SETTINGS,
    )


def _plain_metavars() -> None:
    """typer >= 0.2x prints required arguments as '{CKPT}' in usage and type labels such as '<str>' or
    '<list[Path]>' after every option; show click's plain forms instead (CKPT, [OUT], --outdir PATH)."""
    core = getattr(typer, "core", None)
    arg, opt = getattr(core, "TyperArgument", None), getattr(core, "TyperOption", None)
    if arg is not None and hasattr(arg, "_usage_display_name") and hasattr(arg, "display_name_raw"):
        def usage_name(self: Any) -> str:
            name = self.display_name_raw.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        arg._usage_display_name = usage_name
        arg.display_type_rich = lambda self, ctx: None
        if hasattr(arg, "_rich_display_name"):  # the Arguments list: the same upper-case name as the usage line
            arg._rich_display_name = lambda self: self.display_name_raw.upper() + ("..." if self.nargs != 1 else "")
    if opt is not None and hasattr(opt, "display_type") and hasattr(opt, "display_type_rich"):
        names = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "bool": "BOOLEAN"}

        def option_metavar(self: Any, ctx: Any) -> str:
            if self.metavar is not None:
                return self.metavar
            label = re.sub(r"^list\[(.*)\]$", r"\1", str(self.display_type(ctx)).strip("<>"))
            return names.get(label, "PATH" if label.lower() in ("path", "file", "directory", "dir") else label.upper())

        opt.display_type_rich = option_metavar


_plain_metavars()


def echo(line: str = "") -> None:
    """A result line on stdout, verbatim."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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


VERBOSE_FLAGS = ("-v", "--verbose")


def hoist_verbose(args: list[str], root: Any) -> list[str]:
    """-v/--verbose anywhere on the command line (as with git's and hf's options), moved in front of the
    command where the root callback reads it. A "-v" that is the value of an option (`-p -v`) or comes
    after "--" is left alone. `root` is the click group typer builds for the app."""
    out: list[str] = []
    verbose = False
    cmd, i = root, 0
    while i < len(args) and hasattr(cmd, "commands"):  # root options, then the (sub)command names
        tok = args[i]
        if tok in VERBOSE_FLAGS:
            verbose = True
        else:
            out.append(tok)
            cmd = cmd.commands.get(tok, cmd)
        i += 1
        if tok == "--":
            break
    takes_value = {o for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])
                   if not getattr(p, "is_flag", True) and not getattr(p, "count", False)}
    while i < len(args):
        tok = args[i]
        if tok == "--":
            out += args[i:]
            break
        if tok in VERBOSE_FLAGS:
            verbose = True
        else:
            out.append(tok)
            if tok in takes_value and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        i += 1
    return (["--verbose"] if verbose else []) + out
