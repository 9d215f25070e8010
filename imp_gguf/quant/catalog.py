"""What `imp-gguf recipes list` shows to help choose: each recipe's bits per weight and size on the
released 3B language model (predicted exactly by llama.cpp's rules), its measured size, KL divergence,
accuracy and speed on the bundled tiny Imp (from the shipped baseline, where measured), the recommended
default, and every name --quant accepts."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from imp_gguf.quant.recipes import DEFAULT_RECIPE, accepted_names, ftype_names, list_recipes, load_recipe
from imp_gguf.quant.released import released_size, released_fallbacks
from imp_gguf.gguf_info import MMPROJ_ARCH, read_gguf_meta, tensor_table
from imp_gguf.quant.rules import expected_types

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


def catalog(baseline: Path | None = None, speed: Path | None = None) -> list[dict[str, Any]]:
    """One row per shipped recipe; "tiny_imp" holds the baseline's measurements and "decode_tps_3b" the
    full-size bench's (None where not measured)."""
    measured = ((_read(baseline or BASELINE) or {}).get("recipes") or {})
    speeds = _speeds(speed or SPEED)
    rows = []
    for r in list_recipes():
        bpw, nbytes = released_size(r)
        base = measured.get(r.name, {})
        rows.append({"name": r.name, "default": r.name == DEFAULT_RECIPE, "ftype": r.lm.ftype,
                     "encoding": r.encoding, "mmproj": r.mmproj.ftype, "pure": r.lm.pure,
                     "overrides": {p: t for p, t in r.lm.overrides}, "output": r.lm.output,
                     "token_embd": r.lm.token_embd, "description": r.description,
                     "bpw_3b": round(bpw, 2), "lm_bytes_3b": nbytes, "decode_tps_3b": speeds.get(r.encoding),
                     "tiny_imp": {k: base.get(k) for k in MEASURED_KEYS}})
    return rows


def kl_order(rows: list[dict[str, Any]], ladder: tuple[str, ...] = LADDER) -> dict[str, Any]:
    """Whether the ladder's KL on the tiny Imp falls as its bits per weight rise, overall and in every seed;
    each break names the pair and the shape fallbacks of the recipe that measured worse than it should."""
    by = {r["name"]: r["tiny_imp"] for r in rows}
    steps = [n for n in sorted(ladder, key=lambda n: -(by.get(n, {}).get("bpw") or 0))
             if by.get(n, {}).get("kl_mean") is not None]
    seeds = sorted({s for n in steps for s in (by[n].get("kl_seeds") or {})}, key=str)
    breaks = []
    for hi, lo in zip(steps, steps[1:]):  # hi has more bits: its KL must be the lower one
        worse = [s for s in seeds if (by[hi]["kl_seeds"] or {}).get(s, 0) > (by[lo]["kl_seeds"] or {}).get(s, 0)]
        if by[hi]["kl_mean"] > by[lo]["kl_mean"] or worse:
            breaks.append({"higher_bits": hi, "lower_bits": lo, "seeds": worse,
                           "fallbacks": by[hi].get("lm_fallbacks") or []})
    return {"recipes": steps, "seeds": seeds, "ordered": bool(steps) and not breaks, "breaks": breaks}


def accuracy_note(rows: list[dict[str, Any]]) -> str | None:
    """A sentence instead of the accuracy column when every measured recipe scores the same: then the
    tiny Imp's held-out questions cannot separate the recipes, and a column would read as a measured tie."""
    accs = {r["tiny_imp"]["accuracy"] for r in rows if r["tiny_imp"].get("accuracy") is not None}
    if len(accs) != 1:
        return None
    return (f"acc: every recipe answers the tiny Imp's held-out questions as well as F16 ({accs.pop():.3f}): its "
            "greedy answers never change, so accuracy cannot separate the recipes there; KL does.")


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


def render(rows: list[dict[str, Any]], width: int = 80) -> list[str]:
    """The table as plain lines no longer than `width`: one line of figures per recipe, its trade-off
    wrapped under it, then what the columns mean and which names are accepted."""
    same_acc = accuracy_note(rows)
    head = f"  {'recipe':<11} {'LM':<7} {'mmproj':<6} {'bpw':>5} {'3B GB':>6} {'tok/s':>5}  {'tiny MB':>7} " \
           f"{'KL':>6} {'±':<7}" + ("" if same_acc else f" {'acc':>5}")
    lines = [head.rstrip()]
    wrap = textwrap.TextWrapper(width=width, initial_indent=" " * 4, subsequent_indent=" " * 4,
                                break_long_words=False, break_on_hyphens=False)
    for r in rows:
        t = r["tiny_imp"]
        seeds = list((t.get("kl_seeds") or {}).values())
        spread = f"±{(max(seeds) - min(seeds)) / 2:.4f}" if seeds else "-"
        lines.append(f"{'*' if r['default'] else ' '} {r['name']:<11} {r['ftype']:<7} {r['mmproj']:<6} "
                     f"{r['bpw_3b']:>5.2f} {r['lm_bytes_3b'] / 1e9:>6.2f} {_fmt(r['decode_tps_3b'], 5, 1)}  "
                     f"{_fmt(t['lm_bytes'], 7, 2, 1e-6)} {_fmt(t['kl_mean'], 6, 4)} {spread:<7}"
                     + ("" if same_acc else f" {_fmt(t['accuracy'], 5, 3)}"))
        lines += wrap.wrap(r["description"])
    default = next((r["name"] for r in rows if r["default"]), DEFAULT_RECIPE)
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
    if order["recipes"]:
        ladder = " < ".join(order["recipes"])
        notes.append(f"KL order: {ladder}, as their bits per weight, overall and in each of {len(order['seeds'])} "
                     "seeds." if order["ordered"] else f"KL order ({ladder} expected) breaks: " + "; ".join(
                         f"{b['higher_bits']} above {b['lower_bits']}"
                         + (f" in seeds {', '.join(map(str, b['seeds']))}" if b["seeds"] else "")
                         + (f" (its shape fallbacks: {', '.join(b['fallbacks'])})" if b["fallbacks"]
                            else " (no shape fallback explains it)") for b in order["breaks"]) + ".")
    al = aliases()
    names = "; ".join(f"{' or '.join(sorted(al[r['name']], reverse=True))} = {r['name']}"
                      for r in rows if al.get(r["name"]))
    extra = sorted(k.upper() for k in al if k not in {r["name"] for r in rows})
    notes.append(f"--quant takes any case, and llama-quantize's names: {names}"
                 + (f"; {', '.join(extra)} give llama.cpp's own mixture for that file type (no shipped "
                    "recipe)." if extra else "."))
    lines.append("")
    for n in notes:
        lines += textwrap.wrap(n, width=width, break_long_words=False, break_on_hyphens=False)
    return lines


# ---------------------------------------------------------------- `recipes show`

def recipe_card(name: str | Path, plan: str | Path | None = None) -> dict[str, Any]:
    """One recipe's settings, its predicted shape fallbacks on the released models and (plan: an F16
    GGUF, model or mmproj) the type each of that file's tensors gets."""
    from gguf import Keys

    recipe = load_recipe(name)
    out = recipe.to_dict()
    out["released_fallbacks"] = released_fallbacks(recipe)
    if plan is not None:
        meta = read_gguf_meta(plan)
        arch = meta.get(Keys.General.ARCHITECTURE)
        part = "mmproj" if arch == MMPROJ_ARCH else "lm"
        n_layer = 0 if part == "mmproj" else int(meta.get(Keys.LLM.BLOCK_COUNT.format(arch=arch)) or 0)
        choices = expected_types(recipe, tensor_table(plan), n_layer, part=part)
        out["plan"] = {"file": str(plan), "part": part, "tensors": [c.to_dict() for c in choices]}
    return out


def render_card(card: dict[str, Any]) -> list[str]:
    """`recipes show` as text lines; the plan's tensors as plain aligned lines (names never wrapped or cut)."""
    lm, mm = card["lm"], card["mmproj"]
    lines = [f"{card['name']}: {card['description']}", f"  file:       {card['path'] or '(built in)'}",
             f"  lm ftype:   {lm['ftype']} (base {lm['base_type']}{', pure' if lm['pure'] else ''})",
             f"  output:     {lm['output'] or 'llama.cpp mixture'}",
             f"  token_embd: {lm['token_embd'] or 'llama.cpp mixture'}",
             f"  overrides:  {', '.join(f'{p}={t}' for p, t in lm['overrides'].items()) or 'none'}",
             f"  mmproj:     {mm['type']} (rows not divisible by 32 stay F16)",
             f"  file names: <model>-{card['encoding']}.gguf, mmproj-<model>-{mm['type']}.gguf",
             "  shape fallbacks on the released Imp models (llama.cpp's rules, predicted):"]
    lines += [f"    {model}: {'; '.join(rows) if rows else 'none'}"
              for model, rows in card["released_fallbacks"].items()]
    if "plan" in card:
        plan = card["plan"]
        lines.append(f"\n{Path(plan['file']).name} ({plan['part']}): "
                     "tensor, row width, recipe's type -> written type, why")
        for c in plan["tensors"]:
            mark = "  <- shape fallback" if c["fallback"] else ""
            lines.append(f"  {c['name']:<36} {c['ne0']:>6}  {c['wanted']:>6} -> {c['type']:<6} {c['rule']}{mark}")
    return lines
