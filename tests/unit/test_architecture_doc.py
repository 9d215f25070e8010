"""docs/architecture.md stays true to the tree: every path and module it names in backticks exists, every
`module.NAME` it cites is defined there, and its floors table is the one tests/unit/test_import_layers.py
enforces."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.unit.test_import_layers import LAYERS

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "imp_gguf"
DOC = REPO / "docs" / "architecture.md"
TEXT = DOC.read_text(encoding="utf-8")
SPANS = sorted(set(re.findall(r"`([^`\n]+)`", TEXT)))
TOP = ("tests/", "docs/", "bench/", "scripts/")
SUBPACKAGES = {p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
MODULES = {p.stem for p in PKG.glob("*.py")}


def expand(span: str) -> list[str]:
    """`a/{b,c}.py` -> a/b.py, a/c.py."""
    parts = re.split(r"\{([^}]*)\}", span)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def defines(path: Path, name: str) -> bool:
    """`name` is a function, class, method or assignment in the file."""
    text = path.read_text(encoding="utf-8")
    n = re.escape(name)
    return re.search(rf"^\s*(async\s+def|def|class)\s+{n}\b|^\s*(\w+\s*,\s*)*{n}\s*(,\s*\w+\s*)*(:[^=\n]*)?=",
                     text, re.M) is not None


def module_file(dotted: str) -> list[Path]:
    """`quant/quantize` or `siglip` (a module anywhere in the package, named by its file) -> its file(s)."""
    if "/" in dotted:
        return [p for p in (PKG / f"{dotted}.py", PKG / dotted / "__init__.py") if p.is_file()]
    return sorted(PKG.rglob(f"{dotted}.py"))


def kind(span: str) -> str | None:
    """What a span names: a path, a file found by name (`test_remote.py`), a module's attribute
    (`hub.is_cache_link`, `quant/quantize.apply_recipe`), or (None) something else."""
    head = span.split("/")[0]
    if "<" in span:  # a placeholder: imp_gguf/converters/<family>.py
        return None
    if span.startswith("imp_gguf/") or span.startswith(TOP) or span in ("README.md", "pyproject.toml"):
        return "path"
    if re.fullmatch(r"[\w./{},*-]+", span) is None:
        return None
    if "/" in span and head in SUBPACKAGES:
        return "path" if span.endswith(("/", ".py", ".patch", ".toml", ".c")) or "*" in span else "attr"
    if re.fullmatch(r"\w+\.py", span):
        return "file"
    gguf_key = span.startswith(("general.", "clip.", "tokenizer."))  # `general.file_type` is a key, not a module's
    if re.fullmatch(r"\w+\.[A-Za-z_]\w*", span) and not gguf_key and any(PKG.rglob(f"{span.split('.')[0]}.py")):
        return "attr"
    return None


def check(span: str) -> str | None:
    """None when the span's target exists, else what is missing."""
    what = kind(span)
    for one in expand(span):
        if what == "path":
            rel = one if not one.split("/")[0] in SUBPACKAGES else f"imp_gguf/{one}"
            rel = rel.removesuffix("/")
            if rel == "imp_gguf/__init__":
                rel += ".py"
            if not (list(REPO.glob(rel)) if "*" in rel else (REPO / rel).exists()):
                return f"{one}: no such path"
        elif what == "file":
            if not any(p for p in itertools.chain(REPO.glob(f"imp_gguf/**/{one}"), REPO.glob(f"tests/**/{one}"),
                                                   REPO.glob(f"docs/{one}"))):
                return f"{one}: no such file"
        elif what == "attr":
            mod, _, name = one.rpartition(".")
            files = module_file(mod.removesuffix(".py"))
            if not files:
                return f"{one}: no module {mod}"
            if not any(defines(f, name) for f in files):
                return f"{one}: {mod} does not define {name}"
    return None


def test_the_spans_it_checks_are_many():
    """The classifier recognises the doc's paths and module names (a guard against a regex that matches nothing)."""
    checked = [s for s in SPANS if kind(s)]
    assert len(checked) > 60
    assert {"imp_gguf/speed/probe/bandwidth.c", "quant/rules.py", "runtime/build.X86_NO_AMX",
            "siglip.FEATURE_LAYER_KEY", "test_import_layers.py"} <= set(checked)


@pytest.mark.parametrize("span", [s for s in SPANS if kind(s)])
def test_every_named_path_and_module_exists(span):
    assert check(span) is None, check(span)


def _path(span: str) -> Path:
    return REPO / (span if span.startswith(("imp_gguf/", *TOP)) else f"imp_gguf/{span}")


# `imp_gguf/convert.py` (`plan_conversion`, `run_conversion`): names cited right after a module
CITED = [(path, name) for path, inside in re.findall(r"`([\w/]+\.py)` \(([^)]*)\)", TEXT)
         for name in re.findall(r"`(\w+)`", inside)]


def test_it_cites_names_after_modules():
    assert ("imp_gguf/policy.py", "parse_outtype") in CITED and len(CITED) > 15


@pytest.mark.parametrize("path,name", CITED)
def test_every_name_cited_after_a_module_is_defined_there(path, name):
    assert defines(_path(path), name), f"{path} does not define {name}"


def test_the_floors_table_is_the_tests():
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", TEXT, re.M)
    floors = {int(n): {m.removesuffix("/").removeprefix("imp_gguf/").replace("__init__", "imp_gguf")
                       for m in re.findall(r"`([^`]+)`", names)} for n, names in rows}
    assert floors == {i: set(layer) for i, layer in enumerate(LAYERS)}
    for layer in LAYERS:
        for name in layer:
            assert name == "imp_gguf" or name in MODULES or name in SUBPACKAGES, name
