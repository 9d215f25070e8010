"""UX policy shared by every command: the typer factory, JSON output, error reporting."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from typing import Any, Callable

import typer
from rich.console import Console

# Results (what a command was asked for: tables, paths, answers, JSON) go to stdout, so they pipe and
# redirect like llama-gguf's, hf's and git's; progress, notes and errors go to stderr.
err_console = Console(stderr=True, highlight=False)

# Set from the root options (-v/--verbose, -q/--quiet), which work before or after any command.
STATE = {"verbose": False, "quiet": False}


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
    and "[n/N]" reach logs intact. Nothing with --quiet (errors are not logged through here)."""
    if not STATE["quiet"]:
        err_console.print(msg, markup=False, highlight=False, soft_wrap=True)


def show_bars() -> bool:
    """A live progress bar only on a terminal, and not with --quiet."""
    return err_console.is_terminal and not STATE["quiet"]


PROGRESS_SECONDS = 5.0  # on a pipe or log, long work says where it is this often


class ProgressLines:
    """Progress of long work as lines on stderr (for pipes and logs, where a bar prints nothing): a line when
    a phase starts, then every `every` seconds "phase: done / total MB (n%), t s"; quiet when disabled."""

    def __init__(self, say: Callable[[str], None] = info, every: float = PROGRESS_SECONDS, enabled: bool = True):
        self.say, self.every, self.enabled = say, every, enabled
        self.what, self.done, self.total = "", 0, 0
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ProgressLines":
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, name="progress-lines", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def phase(self, what: str, total: int = 0, *, announce: bool = True) -> None:
        """A new step; announce=False when the caller has already logged it (the ticks still name it)."""
        with self._lock:
            self.what, self.done, self.total = what, 0, total
        if announce:
            self._line()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n

    def _line(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            what, done, total = self.what, self.done, self.total
        if not what:  # nothing started yet
            return
        elapsed = time.monotonic() - self.t0
        amount = f": {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done // total}%)" if total else ""
        self.say(f"  {what}{amount}, {elapsed:.0f} s")

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._line()


class ProgressBar:
    """The same calls as ProgressLines, drawn as a transient rich bar (for a terminal)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                            console=err_console, transient=True)
        self.task: Any = None

    def __enter__(self) -> "ProgressBar":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def phase(self, what: str, total: int = 0) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(what, total=total or None)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


def progress(enabled: bool = True) -> ProgressBar | ProgressLines:
    """Progress of long work on stderr: a bar on a terminal, lines every few seconds on a pipe or log,
    nothing when not enabled (--json) or with --quiet."""
    if enabled and show_bars():
        return ProgressBar()
    return ProgressLines(enabled=enabled and not STATE["quiet"])


def every_tenth(say: Callable[[str], None], line: Callable[[int, int, str], str]) -> Callable[[int, int, str], None]:
    """A progress callback (done, total, what) for pipes and logs: one line per tenth of the work."""
    last = [-1]

    def update(done: int, total: int, what: str) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            say(line(done, total, what))

    return update


# Root options that may also be typed after the command, as with git's and hf's options.
ROOT_FLAGS = {"-v": "--verbose", "--verbose": "--verbose", "-q": "--quiet", "--quiet": "--quiet"}


def hoist_flags(args: list[str], root: Any) -> list[str]:
    """-v/--verbose and -q/--quiet anywhere on the command line, moved in front of the command where the
    root callback reads them (spelled long, in ROOT_FLAGS order). A flag that is the value of an option
    (`-p -v`) or comes after "--" is left alone. `root` is the click group typer builds for the app."""
    out: list[str] = []
    found: set[str] = set()
    cmd, i = root, 0
    while i < len(args) and hasattr(cmd, "commands"):  # root options, then the (sub)command names
        tok = args[i]
        if tok in ROOT_FLAGS:
            found.add(ROOT_FLAGS[tok])
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
        if tok in ROOT_FLAGS:
            found.add(ROOT_FLAGS[tok])
        else:
            out.append(tok)
            if tok in takes_value and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        i += 1
    return [f for f in dict.fromkeys(ROOT_FLAGS.values()) if f in found] + out
