"""The one recipe registry: declarative TOML files in imp_gguf/quant_recipes/ (data, not code).

A recipe names llama.cpp's file type for the language model (the mixture llama-quantize applies),
optional per-tensor overrides (regex -> type, first match wins, as `--tensor-type`), optional output
and token-embedding types, and the mmproj type. Adding a recipe means adding a file; nothing here
is per model family.

    description = "one line: the trade-off"
    encoding = "Q4_K_M"            # optional; tag in output file names (default: the ftype)
    [lm]
    ftype = "Q4_K_M"               # llama.cpp LLAMA_FTYPE_MOSTLY_* name
    output = "Q6_K"                # optional: output.weight type (bypasses the mixture and fallbacks)
    token_embd = "Q4_K"            # optional: token_embd.weight type (same)
    pure = false                   # optional: no mixture, base type everywhere
    [lm.overrides]
    "ffn_down" = "IQ4_NL"
    [mmproj]
    type = "Q8_0"                  # F16 or Q8_0 (SigLIP rows not divisible by 32 stay F16)
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (requires-python): the same parser, from PyPI
    import tomli as tomllib

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from imp_gguf.errors import BadInput
from imp_gguf.policy import OUTTYPES, parse_outtype
from imp_gguf.spelling import unknown

RECIPE_DIR = Path(__file__).resolve().parent.parent / "quant_recipes"

# llama.cpp file types a recipe may use: the ones whose mixture needs no imatrix and no GQA/MoE facts
# (expected_types mirrors them exactly). Values are LLAMA_FTYPE_MOSTLY_*; base = llama_ftype_get_default_type.
FTYPE_BASE: dict[str, str] = {
    "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0",
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}
FTYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize accepts them

# Tensor types an override may name: quantizable by llama.cpp without an importance matrix.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
MMPROJ_TYPES = ("F16", "Q8_0")


def ftype_id(name: str) -> int:
    """LLAMA_FTYPE_MOSTLY_<name> (gguf's LlamaFileType mirrors llama.h; a test checks it against llama_cpp)."""
    return int(LlamaFileType[f"MOSTLY_{name}"])


def ggml_type_id(name: str) -> int:
    return int(GGMLQuantizationType[name])


def block_size(type_name: str) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


def is_quantized(type_name: str) -> bool:
    return type_name not in ("F32", "F16", "BF16")


@dataclass(frozen=True)
class QuantSpec:
    """What llama_model_quantize is asked to do for one file."""

    ftype: str
    overrides: tuple[tuple[str, str], ...] = ()
    output: str | None = None
    token_embd: str | None = None
    pure: bool = False

    @property
    def base_type(self) -> str:
        return FTYPE_BASE[self.ftype]

    @property
    def is_copy(self) -> bool:
        """F16 with nothing else: the converter's F16 file already is the result."""
        return self.ftype == "F16" and not (self.overrides or self.output or self.token_embd or self.pure)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    encoding: str  # tag in the language model's file name, e.g. Q4_K_M
    lm: QuantSpec
    mmproj: QuantSpec
    path: Path | None = None
    text: str = field(default="", repr=False)

    @property
    def mmproj_encoding(self) -> str:
        return self.mmproj.ftype

    @property
    def digest(self) -> str:
        """Short hash of the recipe file, written into outputs for provenance."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "encoding": self.encoding,
            "lm": {"ftype": self.lm.ftype, "base_type": self.lm.base_type,
                   "overrides": {p: t for p, t in self.lm.overrides},
                   "output": self.lm.output, "token_embd": self.lm.token_embd, "pure": self.lm.pure},
            "mmproj": {"type": self.mmproj.ftype},
            "path": str(self.path) if self.path else None,
        }


def _type_name(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in allowed:
        raise BadInput(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value.upper()


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise BadInput(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def parse_recipe(text: str, name: str, path: Path | None = None) -> Recipe:
    where = str(path) if path else f"recipe {name}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{where}: not valid TOML ({exc})") from exc
    _check_keys(data, {"name", "description", "encoding", "lm", "mmproj"}, where)
    if data.get("name", name) != name:
        raise BadInput(f"{where}: name {data['name']!r} does not match the file name {name!r}")
    desc = data.get("description")
    if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
        raise BadInput(f"{where}: needs a one-line description of the trade-off")
    lm = data.get("lm")
    if not isinstance(lm, dict) or "ftype" not in lm:
        raise BadInput(f"{where}: needs an [lm] table with ftype")
    _check_keys(lm, {"ftype", "overrides", "output", "token_embd", "pure"}, f"{where} [lm]")
    ftype = str(lm["ftype"]).upper()
    ftype = FTYPE_ALIASES.get(ftype, ftype)
    if ftype not in FTYPE_BASE:
        raise BadInput(f"{where}: lm.ftype {lm['ftype']!r} is not one of {', '.join(FTYPE_BASE)}")
    raw_over = lm.get("overrides", {})
    if not isinstance(raw_over, dict):
        raise BadInput(f"{where}: [lm.overrides] must map name patterns to types")
    overrides = []
    for pattern, tname in raw_over.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise BadInput(f"{where}: override pattern {pattern!r} is not a regular expression ({exc})") from exc
        overrides.append((pattern, _type_name(tname, f"{where}: override {pattern!r}", TENSOR_TYPES)))
    output = _type_name(lm["output"], f"{where}: lm.output", TENSOR_TYPES) if lm.get("output") else None
    token_embd = _type_name(lm["token_embd"], f"{where}: lm.token_embd", TENSOR_TYPES) if lm.get("token_embd") else None
    pure = lm.get("pure", False)
    if not isinstance(pure, bool):
        raise BadInput(f"{where}: lm.pure must be true or false")
    spec = QuantSpec(ftype, tuple(overrides), output, token_embd, pure)
    if not is_quantized(spec.base_type) and (overrides or pure):
        # llama.cpp applies overrides and `pure` only when the base type is quantized.
        raise BadInput(f"{where}: overrides and pure need a quantized lm.ftype, not {ftype}")
    mm = data.get("mmproj")
    if not isinstance(mm, dict) or "type" not in mm:
        raise BadInput(f"{where}: needs an [mmproj] table with type (F16 or Q8_0)")
    _check_keys(mm, {"type"}, f"{where} [mmproj]")
    mm_spec = QuantSpec(_type_name(mm["type"], f"{where}: mmproj.type", MMPROJ_TYPES))
    encoding = data.get("encoding", ftype)
    if not isinstance(encoding, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", encoding):
        raise BadInput(f"{where}: encoding {encoding!r} must be a file-name tag like Q4_K_M")
    return Recipe(name, desc.strip(), encoding.upper(), spec, mm_spec, path, text)


DEFAULT_RECIPE = "q4_k"  # the recommended one: llama.cpp's Q4_K_M, what most GGUF users expect


def recipe_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.toml"))}


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [parse_recipe(p.read_text(encoding="utf-8"), name, p) for name, p in recipe_files().items()]


def ftype_names() -> dict[str, str]:
    """Every spelling llama-quantize accepts for the file types a recipe may use, lower-cased, mapped
    to the canonical ftype: its names (Q4_K_M), its aliases (Q4_K) and its numeric ids (15)."""
    names = {f.lower(): f for f in FTYPE_BASE}
    names.update({a.lower(): f for a, f in FTYPE_ALIASES.items()})
    names.update({str(ftype_id(f)): f for f in FTYPE_BASE})
    return names


def shipped_by_ftype() -> dict[str, str]:
    """Canonical ftype -> the shipped recipe that writes exactly that llama.cpp file type."""
    return {r.encoding: r.name for r in list_recipes() if r.encoding == r.lm.ftype}


def accepted_names() -> dict[str, str]:
    """Every name --quant accepts (any case) -> the recipe it loads: shipped recipe names, then
    llama-quantize's names and aliases (a shipped recipe when one writes that file type, else that
    ftype as llama.cpp's plain mixture with a Q8_0 mmproj)."""
    shipped = shipped_by_ftype()
    out = {name: name for name in recipe_files()}
    for spelling, ftype in ftype_names().items():
        if not spelling.isdigit():
            out.setdefault(spelling, shipped.get(ftype, ftype.lower()))
    return out


def is_quant_name(spec: str) -> bool:
    low = spec.strip().lower()
    return low in recipe_files() or low in ftype_names()


def _ftype_recipe(ftype: str) -> Recipe:
    """llama.cpp's own mixture for a file type no shipped recipe writes (e.g. Q5_K_S, Q4_1)."""
    mm = "F16" if not is_quantized(FTYPE_BASE[ftype]) else "Q8_0"
    text = (f'description = "llama.cpp\'s {ftype} file type as llama-quantize writes it (no shipped recipe, '
            f'no measured baseline)."\n[lm]\nftype = "{ftype}"\n[mmproj]\ntype = "{mm}"\n')
    return parse_recipe(text, ftype.lower())


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A recipe by name, any case: a shipped one (`q4_k`), llama-quantize's name or alias for a file
    type (`Q4_K_M`, `Q4_K`, `15`), or a TOML file (`path/to/recipe.toml`)."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    spec = str(name_or_path).strip()
    files = recipe_files()
    low = spec.lower()
    if low in files:
        return parse_recipe(files[low].read_text(encoding="utf-8"), low, files[low])
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise BadInput(f"recipe file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"recipe file {path}: cannot read it ({exc})") from exc
        return parse_recipe(text, path.stem, path)
    ftype = ftype_names().get(low)
    if ftype is not None:
        shipped = shipped_by_ftype().get(ftype)
        return load_recipe(shipped) if shipped else _ftype_recipe(ftype)
    # llama.cpp-style tags of shipped recipes (Q4_K_M-IQ4_NL, Q4_0-PURE) work too.
    by_encoding = [r for r in list_recipes() if r.encoding.lower() == low]
    if len(by_encoding) == 1:
        return by_encoding[0]
    raise unknown("recipe", spec, [*files, *sorted(n for n in accepted_names() if n not in files)],
                  also=", or a path to a .toml file")


# ---------------------------------------------------------------- convert --outtype / --quant

def resolve_outtype(spec: str) -> str:
    """--outtype in any case (F16, f16); a quantizer type names --quant instead."""
    low = spec.strip().lower()
    if low not in OUTTYPES and is_quant_name(low):
        raise BadInput(f"--outtype is the converter's own type ({', '.join(OUTTYPES)}); "
                       f"{spec} is a quantizer type: use --quant {low}")
    return parse_outtype(spec).name


@dataclass(frozen=True)
class ConvertOptions:
    outtype: str  # the converter's type (f16 when a recipe follows)
    recipe: Recipe | None  # None: the converter's file as is


def resolve_recipe(quant: str | None) -> Recipe | None:
    """--quant: None or "none" -> no recipe; else the recipe (any case, llama-quantize's names too)."""
    if quant is None or quant.strip().lower() == "none":
        return None
    return load_recipe(quant)


def resolve_convert_options(*, outtype: str | None, quant: str | None, keep_intermediate: bool) -> ConvertOptions:
    """convert's type flags, with contradictions refused instead of one flag silently winning."""
    recipe = resolve_recipe(quant)
    kind = resolve_outtype(outtype) if outtype is not None else None
    if recipe is None:
        if keep_intermediate:
            raise BadInput("--keep-intermediate needs --quant: without a recipe the converter's files are the "
                           "result and there is no intermediate to keep")
        return ConvertOptions(kind or "f16", None)
    if kind not in (None, "f16"):
        raise BadInput(f"--outtype {outtype} contradicts --quant {quant}: --quant converts to F16 and then "
                       f"quantizes; drop one of them")
    return ConvertOptions("f16", recipe)
