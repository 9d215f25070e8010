"""The house's floors: every import inside imp_gguf (module level or inside a function) goes to the
same floor or one below, and no module imports itself back through others.

The project's own modules are imported at module level, so the graph a tool draws from module-level
imports is the one that runs. An import stays inside a function only for a reason the test can name:
the module it loads brings an optional extra (torch, ...) at import time, or it would add a module to what
`imp-gguf --help` loads (the CLI loads each command's implementation when the command runs), or a line
in FUNCTION_LEVEL_ALLOWED says why. `python -m tests.unit.test_import_layers` lists them with their reasons.

A module's floor is that of its top-level name under imp_gguf (`imp_gguf.quant.compare` -> `quant`).
Importing `a.b.c` counts as an import of `a.b.c` only: Python also runs the parents' __init__ first,
but a package whose __init__ lists its own submodules is not a cycle. docs/architecture.md draws it.
"""

from __future__ import annotations

import ast
from functools import cache
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

# Third-party packages that an optional extra brings (pyproject.toml), or that are slow to load.
HEAVY = {"torch", "transformers", "safetensors", "tokenizers", "matplotlib", "llama_cpp"}
CLI = "imp_gguf.cli.main"

# (importer, imported) -> why that import stays inside a function when no rule above says so (none yet).
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {}


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("imp_gguf", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the imp_gguf modules it imports (a `from pkg import name` is the submodule when one exists)."""

    return {mod: _imports_of(mods, mod, path, ast.walk(_parse(path)))
            - {mod} for mod, path in mods.items()}


def _imports_of(mods: dict[str, Path], mod: str, path: Path, nodes) -> set[str]:
    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names if a.name.split(".")[0] == "imp_gguf"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] == "imp_gguf":
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names}
    return found


def _in_function(tree: ast.AST) -> set[ast.AST]:
    """The import statements inside a function body (at any depth)."""
    return {n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import statements under `if TYPE_CHECKING:` (read by the type checker, never run)."""
    return {n for f in ast.walk(tree) if isinstance(f, ast.If) and ast.unparse(f.test).endswith("TYPE_CHECKING")
            for stmt in f.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}


def split_imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """(imp_gguf modules imported at module level, third-party top-level names imported at module level,
    imp_gguf modules imported only inside functions), each by module."""
    own_top: dict[str, set[str]] = {}
    third_top: dict[str, set[str]] = {}
    own_fn: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = _parse(path)
        inner = _in_function(tree)
        unused = inner | _type_checking_only(tree)
        top_nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in unused]
        third_top[mod] = {a.name.split(".")[0] for n in top_nodes if isinstance(n, ast.Import) for a in n.names}
        third_top[mod] |= {(n.module or "").split(".")[0] for n in top_nodes
                           if isinstance(n, ast.ImportFrom) and not n.level}
        own_top[mod] = _targets(mods, mod, path, top_nodes)
        own_fn[mod] = _targets(mods, mod, path, list(inner)) - own_top[mod]
    return own_top, third_top, own_fn


def _targets(mods: dict[str, Path], mod: str, path: Path, nodes: list[ast.AST]) -> set[str]:
    tree = ast.Module(body=[n for n in nodes if isinstance(n, ast.stmt)], type_ignores=[])
    return _imports_of(mods, mod, path, ast.walk(tree)) - {mod}


def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    """Every module importing `start` loads: its module-level imports and their parent packages, repeatedly."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        parts = m.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in seen and name in edges:
                seen.add(name)
                todo.extend(edges[name])
    return seen


def function_level_reasons(mods: dict[str, Path]) -> dict[tuple[str, str], str | None]:
    """Each function-level import of an imp_gguf module -> why it is not at module level (None: no reason)."""
    own_top, third_top, own_fn = split_imports(mods)
    startup = closure(CLI, own_top)
    out: dict[tuple[str, str], str | None] = {}
    for mod, targets in own_fn.items():
        for target in targets:
            heavy = sorted({t for m in closure(target, own_top) for t in third_top[m]} & HEAVY)
            if heavy:
                out[mod, target] = f"loads {', '.join(heavy)} at import"
            elif mod in startup and target not in startup:
                added = sorted(closure(target, own_top) - startup)
                out[mod, target] = f"imp-gguf --help would load {len(added)} more module(s): {', '.join(added)}"
            else:
                out[mod, target] = FUNCTION_LEVEL_ALLOWED.get((mod, target))
    return out


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


def test_function_level_imports_have_a_reason() -> None:
    reasons = function_level_reasons(modules())
    unexplained = sorted(k for k, why in reasons.items() if why is None)
    assert unexplained == [], "import these at module level (or add a reason to FUNCTION_LEVEL_ALLOWED)"
    stale = sorted(set(FUNCTION_LEVEL_ALLOWED) - set(reasons))
    assert stale == [], "no longer inside a function: remove it from FUNCTION_LEVEL_ALLOWED"


def test_the_checker_sees_function_level_imports() -> None:
    mods = modules()
    own_top, third_top, own_fn = split_imports(mods)
    assert "torch" in third_top["imp_gguf.reference.model"]
    assert "imp_gguf.reference.model" in own_fn["imp_gguf.reference.parity"]  # loads torch: stays inside
    assert "imp_gguf.runtime.bindings" in own_top["imp_gguf.reference.parity"]
    startup = closure(CLI, own_top)
    assert "imp_gguf.cli.convert" in startup and "imp_gguf.quant.quantize" not in startup
    reasons = function_level_reasons(mods)
    assert reasons["imp_gguf.cli.fixtures", "imp_gguf.synthetic_checkpoints.tiny"].startswith("loads torch")
    assert reasons["imp_gguf.cli.convert", "imp_gguf.quant.quantize"].startswith("imp-gguf --help would load")


if __name__ == "__main__":
    for (mod, target), why in sorted(function_level_reasons(modules()).items()):
        print(f"{mod} -> {target}: {why}")
