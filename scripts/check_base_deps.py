"""What the base package (no extras) must do with nothing but its declared dependencies installed.

    python scripts/check_base_deps.py            # where only the base package is installed (CI's fresh venv)
    python scripts/check_base_deps.py --block    # anywhere: first hide every installed module that
                                                 # imp-gguf's base dependencies do not bring

Checks, exit status 1 and one line per failure if any:
  * every imp_gguf module imports, except the reference side (imp_gguf.reference, the tiny Imp's
    PyTorch model and training), which may fail only for a module of an extra;
  * `imp-gguf <command> --help` works for every command and subcommand;
  * `convert` of the bundled tiny Imp works, and the commands that need the reference extra (verify,
    eval, fixtures, training) exit 2 with one line naming `pip install 'imp-gguf[reference]'`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import pkgutil
import re
import runpy
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

# Needs an extra by design: the PyTorch reference model, fixtures, parity and training.
EXTRA_ONLY = ("imp_gguf.reference", "imp_gguf.synthetic_checkpoints", "imp_gguf.tiny_imp.model", "imp_gguf.tiny_imp.train")
INSTALL_REFERENCE = "pip install 'imp-gguf[reference]'"
ALWAYS_THERE = {"pip"}  # every virtual environment has it


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions(root: str = "imp-gguf") -> set[str]:
    """`root` and everything its requirements bring, no extras, markers evaluated here (canonical names)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's vendored copy: present in every venv
        from pip._vendor.packaging.requirements import Requirement
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = _canon(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # required but not installed: nothing to hide or allow
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def block_non_base(root: str = "imp-gguf") -> list[str]:
    """Make every installed top-level module that the base dependencies do not bring unimportable
    (None in sys.modules: `import` raises ModuleNotFoundError, importlib.util.find_spec returns None)."""
    allowed = base_distributions(root)
    blocked = sorted(
        module for module, dists in metadata.packages_distributions().items()
        if module.isidentifier() and module not in sys.stdlib_module_names and module not in ALWAYS_THERE
        and not any(_canon(d) in allowed for d in dists)
    )
    for module in blocked:
        for loaded in [m for m in sys.modules if m.startswith(module + ".")]:
            del sys.modules[loaded]
        sys.modules[module] = None  # type: ignore[assignment]
    return blocked


def check_imports() -> list[str]:
    import imp_gguf

    try:
        from imp_gguf.cli.main import EXTRA_MODULES
    except Exception as exc:  # noqa: BLE001 - nothing else can be checked without the CLI
        return [f"import imp_gguf.cli.main: {exc!r}"]
    problems, names = [], [m.name for m in pkgutil.walk_packages(imp_gguf.__path__, "imp_gguf.")]
    print(f"importing {len(names)} imp_gguf modules")
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            needs_extra = (exc.name or "").partition(".")[0] in EXTRA_MODULES
            if not (needs_extra and name.startswith(EXTRA_ONLY)):
                problems.append(f"import {name}: {exc!r} (not provided by the base dependencies)")
        except Exception as exc:  # noqa: BLE001 - report every module, not just the first
            problems.append(f"import {name}: {exc!r}")
    return problems


def _captured(run: Callable[[], object]) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `run()` in this process: its return value, or SystemExit's."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = run()
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - a failure to report, like any other output
            code = f"{type(exc).__name__}: {exc}"
    status = code if isinstance(code, int) else 0 if code is None else 1
    return status, out.getvalue() + (code if isinstance(code, str) else "")


def _cli(args: list[str]) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `imp-gguf ARGS`, in this process."""
    from imp_gguf.cli.main import main

    return _captured(lambda: main(args))


def _commands() -> list[list[str]]:
    """Every command path of the CLI, groups and their subcommands."""
    import typer

    from imp_gguf.cli.main import app

    paths: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def check_help() -> list[str]:
    problems, paths = [], _commands()
    print(f"imp-gguf COMMAND --help for {len(paths)} command paths")
    for path in paths:
        code, out = _cli([*path, "--help"])
        if code != 0 or "Usage:" not in out:
            problems.append(f"imp-gguf {' '.join([*path, '--help'])}: exit {code}: {out.strip()[-300:]}")
    return problems


def _one_line_naming_extra(what: str, code: int, out: str) -> list[str]:
    lines = out.strip().splitlines()
    if code == 2 and len(lines) == 1 and INSTALL_REFERENCE in lines[0]:
        return []
    return [f"{what} without the reference extra: exit {code} (want 2), output {out.strip()[-400:]!r} "
            f"(want one line naming {INSTALL_REFERENCE})"]


def check_extra_commands() -> list[str]:
    if importlib.util.find_spec("torch") is not None:
        return ["torch is importable: run this check where the reference extra is not installed (or --block)"]
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    print("convert the bundled tiny Imp; verify, eval, fixtures tiny|full-size, training without the extra")
    problems = []
    with tempfile.TemporaryDirectory() as ggufs, tempfile.TemporaryDirectory() as tmp:
        ckpt = default_checkpoint()  # a real pair for verify, converted with the base dependencies
        code, out = _cli(["convert", str(ckpt), "--outdir", ggufs])
        mmproj = sorted(Path(ggufs).glob("mmproj-*.gguf"))
        model = sorted(set(Path(ggufs).glob("*.gguf")) - set(mmproj))
        if code != 0 or len(model) != 1 or len(mmproj) != 1:
            return [f"imp-gguf convert {ckpt}: exit {code}, wrote {sorted(Path(ggufs).iterdir())}: {out[-300:]}"]
        for args in (["verify", str(ckpt), str(model[0]), str(mmproj[0])],
                     ["eval"],
                     ["fixtures", "tiny", "imp-v1-3b", f"{tmp}/tiny"],
                     ["fixtures", "full-size", f"{tmp}/full"]):
            problems += _one_line_naming_extra(f"imp-gguf {' '.join(args[:2])}", *_cli(args))
        if any(Path(tmp).iterdir()):
            problems.append(f"a command that needs the extra wrote files first: {sorted(Path(tmp).iterdir())}")
        train = _captured(lambda: runpy.run_module("imp_gguf.tiny_imp.train", run_name="__main__"))
        problems += _one_line_naming_extra("python -m imp_gguf.tiny_imp.train", *train)
    return problems


def main(argv: list[str]) -> int:
    if "--block" in argv:
        print(f"hidden (not brought by the base dependencies): {' '.join(block_non_base()) or 'nothing'}")
    problems = check_imports()
    if not problems or not problems[0].startswith("import imp_gguf.cli.main:"):
        problems += check_help() + check_extra_commands()
    for p in problems:
        print(f"FAIL {p}")
    print(f"base-dependency check: {'FAILED' if problems else 'ok'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
