"""What `imp-gguf recipes list` shows to help choose: each recipe's bits per weight and size on the
released 3B language model (predicted exactly by llama.cpp's rules), its measured size, KL divergence,
accuracy and speed on the bundled tiny Imp (from the shipped baseline, where measured), the recommended
default, and every name --quant accepts."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from imp_gguf.gguf_info import MMPROJ_ARCH, read_gguf_meta, tensor_table
from imp_gguf.quant.recipes import DEFAULT_RECIPE, Recipe, accepted_names, ftype_names, list_recipes, load_recipe
from imp_gguf.quant.released import released_fallbacks, released_size
from imp_gguf.quant.rules import TypeChoice, expected_types

# What `recipes list` shows ships inside the package, so an installed wheel shows what a checkout shows.
MEASURED = Path(__file__).resolve().parents[1] / "data" / "measured"
BASELINE = MEASURED / "recipes-tiny-imp.json"  # `recipes compare` on the tiny Imp (--write-baseline)
SPEED = MEASURED / "fullsize-196.json"  # imp-gguf bench on the full-size 3B (196 px), this repo's VM
MEASURED_KEYS = ("lm_bytes", "bpw", "kl_mean", "kl_seeds", "accuracy", "lm_fallbacks")
# llama.cpp's mixtures, one per bit width: their KL from F16 must fall as their bits per weight rise.
LADDER = ("q8_0", "q6_k", "q5_k", "q4_k", "q3_k")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not measured: no columns


def _speeds(path: Path) -> dict[str, float]:
    """file-name encoding (Q4_K_M) -> decode tok/s of the full-size 3B in the shipped bench results."""
    rows = _read(path)
    out = {}
    for row in rows if isinstance(rows, list) else []:
        name, tps = str(row.get("model_filename", "")), row.get("decode_tps")
        if name.endswith(".gguf") and isinstance(tps, (int, float)):
            out[name[:-5].rsplit("-", 1)[-1]] = float(tps)
    return out


@dataclass(frozen=True)
class TinyImpMeasure:
    """A recipe's measurements on the bundled tiny Imp, from the shipped baseline (None: not measured)."""

    lm_bytes: int | None = None
    bpw: float | None = None
    kl_mean: float | None = None
    kl_seeds: dict[str, float] | None = None  # seed -> mean KL
    accuracy: float | None = None
    lm_fallbacks: list[str] | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in MEASURED_KEYS}


@dataclass(frozen=True)
class CatalogRow:
    """One recipe as `recipes list` shows it: its settings, its size on the released 3B (predicted) and
    what was measured (the tiny Imp's baseline, the full-size 3B's decode speed)."""

    recipe: Recipe
    default: bool
    bpw_3b: float
    lm_bytes_3b: int
    decode_tps_3b: float | None
    tiny_imp: TinyImpMeasure

    @property
    def name(self) -> str:
        return self.recipe.name

    def to_dict(self) -> dict[str, object]:
        r = self.recipe
        return {"name": r.name, "default": self.default, "ftype": r.lm.ftype, "encoding": r.encoding,
                "mmproj": r.mmproj.ftype, "pure": r.lm.pure, "overrides": {p: t for p, t in r.lm.overrides},
                "output": r.lm.output, "token_embd": r.lm.token_embd, "description": r.description,
                "bpw_3b": self.bpw_3b, "lm_bytes_3b": self.lm_bytes_3b, "decode_tps_3b": self.decode_tps_3b,
                "tiny_imp": self.tiny_imp.to_dict()}


def catalog(baseline: Path | None = None, speed: Path | None = None) -> list[CatalogRow]:
    """One row per shipped recipe, with the baseline's measurements on the tiny Imp and the full-size
    bench's decode speed (None where not measured)."""
    measured = ((_read(baseline or BASELINE) or {}).get("recipes") or {})
    speeds = _speeds(speed or SPEED)
    rows = []
    for r in list_recipes():
        bpw, nbytes = released_size(r)
        base = measured.get(r.name, {})
        rows.append(CatalogRow(r, r.name == DEFAULT_RECIPE, round(bpw, 2), nbytes, speeds.get(r.encoding),
                               TinyImpMeasure(**{k: base.get(k) for k in MEASURED_KEYS})))
    return rows


@dataclass(frozen=True)
class KlBreak:
    """A pair of the ladder whose KL is out of order: the recipe with more bits measured worse."""

    higher_bits: str
    lower_bits: str
    seeds: list[str]  # the seeds where it did (none: only the mean)
    fallbacks: list[str]  # the higher one's shape fallbacks, which may explain it

    def to_dict(self) -> dict[str, object]:
        return {"higher_bits": self.higher_bits, "lower_bits": self.lower_bits, "seeds": self.seeds,
                "fallbacks": self.fallbacks}


@dataclass(frozen=True)
class KlOrder:
    recipes: list[str]  # the measured ladder, most bits first
    seeds: list[str]
    ordered: bool
    breaks: list[KlBreak]

    def to_dict(self) -> dict[str, object]:
        return {"recipes": self.recipes, "seeds": self.seeds, "ordered": self.ordered,
                "breaks": [b.to_dict() for b in self.breaks]}


def kl_order(rows: Sequence[CatalogRow], ladder: tuple[str, ...] = LADDER) -> KlOrder:
    """Whether the ladder's KL on the tiny Imp falls as its bits per weight rise, overall and in every seed;
    each break names the pair and the shape fallbacks of the recipe that measured worse than it should."""
    by = {r.name: r.tiny_imp for r in rows}
    none = TinyImpMeasure()
    steps = [n for n in sorted(ladder, key=lambda n: -(by.get(n, none).bpw or 0)) if by.get(n, none).kl_mean is not None]
    seeds = sorted({s for n in steps for s in (by[n].kl_seeds or {})}, key=str)
    breaks = []
    for hi, lo in zip(steps, steps[1:]):  # hi has more bits: its KL must be the lower one
        worse = [s for s in seeds if (by[hi].kl_seeds or {}).get(s, 0) > (by[lo].kl_seeds or {}).get(s, 0)]
        if (by[hi].kl_mean or 0) > (by[lo].kl_mean or 0) or worse:
            breaks.append(KlBreak(hi, lo, worse, by[hi].lm_fallbacks or []))
    return KlOrder(steps, seeds, bool(steps) and not breaks, breaks)


def accuracy_note(rows: Sequence[CatalogRow]) -> str | None:
    """A sentence instead of the accuracy column when every measured recipe scores the same: then the
    tiny Imp's held-out questions cannot separate the recipes, and a column would read as a measured tie."""
    accs = {r.tiny_imp.accuracy for r in rows if r.tiny_imp.accuracy is not None}
    if len(accs) != 1:
        return None
    return (f"acc: every recipe answers the tiny Imp's held-out questions as well as F16 ({accs.pop():.3f}): its "
            "greedy answers never change, so accuracy cannot separate the recipes there; KL does.")


@dataclass(frozen=True)
class RecipeListing:
    """`recipes list`: the rows, the names --quant accepts, the KL ladder check and the accuracy note."""

    rows: list[CatalogRow]
    aliases: dict[str, list[str]]
    kl_order: KlOrder
    accuracy_note: str | None

    def to_dict(self) -> dict[str, object]:
        return {"recipes": [r.to_dict() for r in self.rows], "aliases": self.aliases,
                "kl_order": self.kl_order.to_dict(), "accuracy_note": self.accuracy_note}


def recipe_listing() -> RecipeListing:
    rows = catalog()
    return RecipeListing(rows, aliases(), kl_order(rows), accuracy_note(rows))


def aliases() -> dict[str, list[str]]:
    """recipe (or llama.cpp file type without a shipped recipe) -> llama-quantize's names and aliases
    that --quant accepts for it."""
    out: dict[str, list[str]] = defaultdict(list)
    accepted = accepted_names()
    for spelling in ftype_names():
        if not spelling.isdigit():
            out[accepted[spelling]].append(spelling.upper())
    return dict(out)


def _fmt(x: Any, width: int, prec: int, scale: float = 1.0) -> str:
    return f"{'-':>{width}}" if x is None else f"{x * scale:>{width}.{prec}f}"


def render(rows: Sequence[CatalogRow], width: int = 80) -> list[str]:
    """The table as plain lines no longer than `width`: one line of figures per recipe, its trade-off
    wrapped under it, then what the columns mean and which names are accepted."""
    same_acc = accuracy_note(rows)
    head = f"  {'recipe':<11} {'LM':<7} {'mmproj':<6} {'bpw':>5} {'3B GB':>6} {'tok/s':>5}  {'tiny MB':>7} " \
           f"{'KL':>6} {'±':<7}" + ("" if same_acc else f" {'acc':>5}")
    lines = [head.rstrip()]
    wrap = textwrap.TextWrapper(width=width, initial_indent=" " * 4, subsequent_indent=" " * 4,
                                break_long_words=False, break_on_hyphens=False)
    for r in rows:
        t = r.tiny_imp
        seeds = list((t.kl_seeds or {}).values())
        spread = f"±{(max(seeds) - min(seeds)) / 2:.4f}" if seeds else "-"
        lines.append(f"{'*' if r.default else ' '} {r.name:<11} {r.recipe.lm.ftype:<7} {r.recipe.mmproj.ftype:<6} "
                     f"{r.bpw_3b:>5.2f} {r.lm_bytes_3b / 1e9:>6.2f} {_fmt(r.decode_tps_3b, 5, 1)}  "
                     f"{_fmt(t.lm_bytes, 7, 2, 1e-6)} {_fmt(t.kl_mean, 6, 4)} {spread:<7}"
                     + ("" if same_acc else f" {_fmt(t.accuracy, 5, 3)}"))
        lines += wrap.wrap(r.recipe.description)
    default = next((r.name for r in rows if r.default), DEFAULT_RECIPE)
    notes = [
        f"* recommended ({default}).",
        "bpw, 3B GB: the Phi-2 language model of Imp-v1.5-3B-196 (and imp-v1-3b) under the recipe, predicted "
        "by llama.cpp's rules (shape fallbacks included); tok/s: its decode speed measured by imp-gguf bench "
        "on a 2-core x86_64 VM (imp_gguf/data/measured/fullsize-196.json).",
        "tiny MB, KL (mean KL divergence from F16, nats, over what the F16 model samples after questions "
        "about seeded scenes) ± half the range of its per-seed means" + ("" if same_acc else ", acc (held-out accuracy)")
        + ": measured on the bundled tiny Imp (imp_gguf/data/measured/recipes-tiny-imp.json). -: not measured.",
    ]
    if same_acc:
        notes.append(same_acc)
    order = kl_order(rows)
    if order.recipes:
        ladder = " < ".join(order.recipes)
        notes.append(f"KL order: {ladder}, as their bits per weight, overall and in each of {len(order.seeds)} "
                     "seeds." if order.ordered else f"KL order ({ladder} expected) breaks: " + "; ".join(
                         f"{b.higher_bits} above {b.lower_bits}"
                         + (f" in seeds {', '.join(map(str, b.seeds))}" if b.seeds else "")
                         + (f" (its shape fallbacks: {', '.join(b.fallbacks)})" if b.fallbacks
                            else " (no shape fallback explains it)") for b in order.breaks) + ".")
    al = aliases()
    names = "; ".join(f"{' or '.join(sorted(al[r.name], reverse=True))} = {r.name}"
                      for r in rows if al.get(r.name))
    extra = sorted(k.upper() for k in al if k not in {r.name for r in rows})
    notes.append(f"--quant takes any case, and llama-quantize's names: {names}"
                 + (f"; {', '.join(extra)} give llama.cpp's own mixture for that file type (no shipped "
                    "recipe)." if extra else "."))
    lines.append("")
    for n in notes:
        lines += textwrap.wrap(n, width=width, break_long_words=False, break_on_hyphens=False)
    return lines


# ---------------------------------------------------------------- `recipes show`

@dataclass(frozen=True)
class TensorPlan:
    """The type each tensor of one F16 GGUF gets under a recipe (`recipes show --plan`)."""

    file: Path
    part: str  # "lm" or "mmproj"
    tensors: tuple[TypeChoice, ...]

    def to_dict(self) -> dict[str, object]:
        return {"file": str(self.file), "part": self.part, "tensors": [c.to_dict() for c in self.tensors]}


@dataclass(frozen=True)
class RecipeCard:
    """`recipes show`: one recipe, its predicted shape fallbacks on the released models and, with a
    file, that file's per-tensor plan."""

    recipe: Recipe
    released_fallbacks: dict[str, list[str]]  # model -> ["blk.*.ffn_down.weight x12: Q4_K -> Q5_0", ...]
    plan: TensorPlan | None = None

    def to_dict(self) -> dict[str, object]:
        return (self.recipe.to_dict() | {"released_fallbacks": self.released_fallbacks}
                | ({"plan": self.plan.to_dict()} if self.plan else {}))


def recipe_card(name: str | Path, plan: str | Path | None = None) -> RecipeCard:
    """One recipe's settings, its predicted shape fallbacks on the released models and (plan: an F16
    GGUF, model or mmproj) the type each of that file's tensors gets."""
    from gguf import Keys

    recipe = load_recipe(name)
    tensors = None
    if plan is not None:
        meta = read_gguf_meta(plan)
        arch = meta.get(Keys.General.ARCHITECTURE)
        part = "mmproj" if arch == MMPROJ_ARCH else "lm"
        n_layer = 0 if part == "mmproj" else int(meta.get(Keys.LLM.BLOCK_COUNT.format(arch=arch)) or 0)
        choices = expected_types(recipe, tensor_table(plan), n_layer, part=part)
        tensors = TensorPlan(Path(plan), part, tuple(choices))
    return RecipeCard(recipe, released_fallbacks(recipe), tensors)


def render_card(card: RecipeCard) -> list[str]:
    """`recipes show` as text lines; the plan's tensors as plain aligned lines (names never wrapped or cut)."""
    r, lm = card.recipe, card.recipe.lm
    mm_type = r.mmproj.ftype
    lines = [f"{r.name}: {r.description}", f"  file:       {r.path or '(built in)'}",
             f"  lm ftype:   {lm.ftype} (base {lm.base_type}{', pure' if lm.pure else ''})",
             f"  output:     {lm.output or 'llama.cpp mixture'}",
             f"  token_embd: {lm.token_embd or 'llama.cpp mixture'}",
             f"  overrides:  {', '.join(f'{p}={t}' for p, t in lm.overrides) or 'none'}",
             f"  mmproj:     {mm_type} (rows not divisible by 32 stay F16)",
             f"  file names: <model>-{r.encoding}.gguf, mmproj-<model>-{mm_type}.gguf",
             "  shape fallbacks on the released Imp models (llama.cpp's rules, predicted):"]
    lines += [f"    {model}: {'; '.join(rows) if rows else 'none'}"
              for model, rows in card.released_fallbacks.items()]
    if card.plan is not None:
        plan = card.plan
        lines.append(f"\n{plan.file.name} ({plan.part}): "
                     "tensor, row width, recipe's type -> written type, why")
        for c in plan.tensors:
            mark = "  <- shape fallback" if c.fallback else ""
            lines.append(f"  {c.name:<36} {c.ne0:>6}  {c.wanted:>6} -> {c.type:<6} {c.rule}{mark}")
    return lines
