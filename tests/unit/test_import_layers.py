"""The house's floors: every import inside imp_gguf (module level or inside a function) goes to the
same floor or one below, and no module imports itself back through others.

A module's floor is that of its top-level name under imp_gguf (`imp_gguf.quant.compare` -> `quant`).
Importing `a.b.c` counts as an import of `a.b.c` only: Python also runs the parents' __init__ first,
but a package whose __init__ lists its own submodules is not a cycle. docs/architecture.md draws it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imp_gguf

ROOT = Path(imp_gguf.__file__).parent

# Lowest first. Within a floor, imports go either way (cycles are checked on their own).
LAYERS: list[tuple[str, ...]] = [
    ("imp_gguf", "errors", "pins", "native_log"),
    ("spelling", "gguf_naming", "gguf_info", "images", "synthetic_images", "hub", "safetensors_io", "chat_templates", "policy",
     "pair"),
    ("checkpoint", "tokenizer", "converters", "writer"),
    ("convert",),
    ("runtime",),
    ("quant",),
    ("speed", "share"),
    ("reference", "synthetic_checkpoints"),
    ("tiny_imp",),
    ("demo",),
    ("cli",),
]

# Upward imports allowed (none): an entry would have to say why, and the test fails once it is gone.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("imp_gguf", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the imp_gguf modules it imports (a `from pkg import name` is the submodule when one exists)."""

    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found |= {known(a.name) for a in node.names if a.name.split(".")[0] == "imp_gguf"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                if base.split(".")[0] == "imp_gguf":
                    found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names}
        graph[mod] = found - {mod}
    return graph


def floor(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else mod
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{mod}: its top-level name {top!r} is on no floor; add it to LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor() -> None:
    for mod in modules():
        floor(mod)


def test_no_import_cycle() -> None:
    assert cycles(imports(modules())) == []


def test_no_upward_import() -> None:
    upward = {(a, b) for a, targets in imports(modules()).items() for b in targets if floor(b) > floor(a)}
    assert sorted(upward - KNOWN_UPWARD) == [], "imports from a lower floor to a higher one"
    assert sorted(KNOWN_UPWARD - upward) == [], "fixed: remove it from KNOWN_UPWARD"


def test_the_checker_sees_cycles_and_floors() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert floor("imp_gguf.converters.phi2") < floor("imp_gguf.quant.compare") < floor("imp_gguf.tiny_imp.evaluate")
    graph = imports(modules())
    assert "imp_gguf.converters.base" in graph["imp_gguf.converters.phi2"]  # `from pkg.mod import x`
    assert "imp_gguf.quant.quantize" in graph["imp_gguf.tiny_imp.evaluate"]  # inside a function too
