"""Compare recipes on one checkpoint: convert once to F16, quantize by each recipe, and measure size,
fidelity against the F16 files (all through llama.cpp) and speed on this host.

Fidelity: KL(P_f16 || P_quant) of next-token distributions at every position of the tokens the F16
files sample after questions about seeded synthetic scenes (evalset.Scene), as a mean, per seed and
its spread; top-1 agreement on the same positions; the mean KL over the fixed text prompts (every position)
and image prompts (last position) as kl_text_mean; and the cosine (min over image tokens) of the
quantized mmproj's image embeddings against the F16 mmproj's.
Speed: medians over `runs` (after one warm-up) of prefill and decode tokens/s and image-encode ms.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any, Callable, Sequence

import numpy as np

from imp_gguf import __version__
from imp_gguf.errors import BadInput, CheckFailed, ImpGgufError, InternalError, OutputExists
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from imp_gguf.quant.evalset import EvalSet, Scene, build_evalset
from imp_gguf.convert import ConversionResult, JsonDict
from imp_gguf.quant.quantize import RecipeResult, Scorer, Scores, run_recipes
from imp_gguf.quant.recipes import Recipe, list_recipes, load_recipe
from imp_gguf.writer import atomic_outputs
from imp_gguf.quant import plot
from imp_gguf.runtime.bindings import Session

REQUIRED_ROW_KEYS = ("recipe", "lm_bytes", "mmproj_bytes", "bpw", "kl_mean", "kl_p99", "top1", "image_cos_min",
                     "prefill_tps", "decode_tps", "encode_ms", "tensor_types")
# accuracy_abs: held-out accuracy (a scorer's "accuracy", the tiny Imp's) may drop this much, absolute.
DEFAULT_TOLERANCE = {"kl_mean_rel": 0.25, "kl_mean_abs": 1e-4, "lm_bytes_rel": 0.01, "accuracy_abs": 0.03}
BASELINE_SCHEMA = "imp-gguf/recipes-baseline/1"

Log = Callable[[str], None]


class BaselineRegression(CheckFailed):
    """A recipe's KL divergence, size or accuracy got worse than the baseline allows (exit status 3)."""


# ---------------------------------------------------------------- metrics

def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logp: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) per position, P given as log-probabilities, Q as raw logits."""
    logq = log_softmax(logits)
    return np.maximum((np.exp(ref_logp) * (ref_logp - logq)).sum(axis=-1), 0.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.maximum(den, 1e-30)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """True where no other point is at least as good on both axes (smaller is better) and better on one."""
    return [not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2 in points) for x, y in points]


@dataclass
class Reference:
    """What the F16 files produce on the evaluation set; every recipe is scored against it."""

    text_tokens: list[list[int]]
    text_logp: list[np.ndarray]  # [T, V] per text prompt
    image_prompts: list[str]  # rendered chat prompts with the media marker
    image_logp: list[np.ndarray]  # [V]: last position of each image prompt
    image_embd: list[np.ndarray]  # [P, H] per image
    answers: list[tuple[Scene, str, list[int], np.ndarray]]  # scene, prompt, sampled answer, its [T, V] log-probs

    @property
    def n_positions(self) -> int:
        return sum(len(t) for t in self.answers_tokens())

    def answers_tokens(self) -> list[list[int]]:
        return [toks for _, _, toks, _ in self.answers]


def answer_logits(session: Any, prompt: str, image: Path, tokens: list[int]) -> np.ndarray:
    """[len(tokens), V]: the logits that predicted each token of an answer to an image prompt."""
    first = session.eval_prompt(prompt, [image])
    llm = session.llm
    n0 = llm.n_tokens
    if len(tokens) > 1:
        llm.eval(tokens[:-1])
    rest = np.array(llm.scores[n0:n0 + len(tokens) - 1], dtype=np.float32).reshape(len(tokens) - 1, -1)
    return np.concatenate([first[None], rest])


def sample_answer(session: Any, prompt: str, image: Path, n: int, rng: np.random.Generator) -> list[int]:
    """n tokens sampled (temperature 1) from the session's own distribution. Not cut at an end token: a
    confident model's short answers hold too few uncertain positions for KL to order close recipes."""
    logits = session.eval_prompt(prompt, [image])
    llm, out = session.llm, []
    for _ in range(n):
        p = np.exp(log_softmax(logits))
        tok = int(rng.choice(p.size, p=p / p.sum()))
        out.append(tok)
        llm.eval([tok])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return out


def reference_outputs(session: Any, ev: EvalSet) -> Reference:
    tokens = [session.tokenize(t, add_special=True) for t in ev.texts]
    text_logp = [log_softmax(session.text_logits(t)) for t in tokens]
    prompts = [session.chat_prompt(p.question, image=True) for p in ev.images]
    image_logp = [log_softmax(session.eval_prompt(pr, [p.image])) for pr, p in zip(prompts, ev.images)]
    embd = [session.image_embeddings(p.image) for p in ev.images]
    answers = []
    for sc in ev.scenes:
        prompt = session.chat_prompt(sc.question, image=True)
        toks = sample_answer(session, prompt, sc.image, ev.answer_tokens, np.random.default_rng([sc.seed, sc.index]))
        answers.append((sc, prompt, toks, log_softmax(answer_logits(session, prompt, sc.image, toks))))
    return Reference(tokens, text_logp, prompts, image_logp, embd, answers)


def fidelity(session: Any, ev: EvalSet, ref: Reference) -> dict[str, Any]:
    text_kls = []
    for toks, ref_logp in zip(ref.text_tokens, ref.text_logp):
        text_kls.append(kl_divergence(ref_logp, session.text_logits(toks)))
    for prompt, p, ref_logp in zip(ref.image_prompts, ev.images, ref.image_logp):
        text_kls.append(kl_divergence(ref_logp[None], session.eval_prompt(prompt, [p.image])[None]))
    by_seed: dict[int, list[np.ndarray]] = {}
    agree = []
    for sc, prompt, toks, ref_logp in ref.answers:
        logits = answer_logits(session, prompt, sc.image, toks)
        by_seed.setdefault(sc.seed, []).append(kl_divergence(ref_logp, logits))
        agree.append(ref_logp.argmax(-1) == logits.argmax(-1))
    cos = [float(cosine_rows(e, session.image_embeddings(p.image)).min()) for p, e in zip(ev.images, ref.image_embd)]
    kl = np.concatenate([k for ks in by_seed.values() for k in ks])
    seeds = {str(seed): float(np.concatenate(ks).mean()) for seed, ks in by_seed.items()}
    return {
        "kl_mean": float(kl.mean()),
        "kl_seeds": seeds,  # the mean per seed: its spread says how far kl_mean can be trusted
        "kl_spread": [min(seeds.values()), max(seeds.values())],
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "kl_text_mean": float(np.concatenate(text_kls).mean()) if text_kls else None,
        "top1": float(np.concatenate(agree).mean()),
        "image_cos_min": min(cos) if cos else None,
        "n_positions": int(kl.size),
    }


def speed(session: Any, ev: EvalSet, runs: int) -> dict[str, Any]:
    """Medians over `runs` after one warm-up run; the same prompt, image and decode length for every recipe."""
    llm = session.llm
    prefill, decode, encode = [], [], []
    for i in range(runs + 1):
        logits = session.eval_prompt(ev.speed_text)
        t = session.last_timings
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        for _ in range(ev.decode_tokens):  # greedy, ignoring end-of-generation: a fixed amount of work
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        dt = time.perf_counter() - t0
        enc_ms = None
        if ev.images:
            session.image_embeddings(ev.images[0].image)
            enc_ms = session.last_timings["encode_ms"]
        if i == 0:
            continue
        prefill.append(t["prompt_tokens"] / max(t["prefill_ms"], 1e-6) * 1e3)
        decode.append(ev.decode_tokens / max(dt, 1e-9))
        if enc_ms is not None:
            encode.append(enc_ms)
    return {
        "prefill_tps": round(median(prefill), 1),
        "decode_tps": round(median(decode), 1),
        "encode_ms": round(median(encode), 2) if encode else None,
        "prefill_tokens": session.last_timings.get("prompt_tokens"),
    }


# ---------------------------------------------------------------- the comparison

class FidelityAndSpeed:
    """The comparison's own scorer: fidelity against the F16 files (scored once, on first use) and speed."""

    def __init__(self, ev: EvalSet, runs: int, n_threads: int | None, say: Log):
        self.ev, self.runs, self.n_threads, self.say = ev, runs, n_threads, say
        self.ref: Reference | None = None
        self.threads: int | None = None

    def __call__(self, recipe: Recipe, result: RecipeResult, f16: ConversionResult) -> Scores:
        if self.ref is None:
            self.say("scoring the F16 reference")
            with Session(f16.model, f16.mmproj, n_threads=self.n_threads) as s:
                self.ref = reference_outputs(s, self.ev)
                self.threads = s.n_threads
        self.say(f"{recipe.name}: measuring fidelity and speed ({self.runs} runs)")
        with Session(result.model, result.mmproj, n_threads=self.n_threads) as s:
            fid = fidelity(s, self.ev, self.ref)
            return {**fid, **speed(s, self.ev, self.runs)}


def optional(scorer: Scorer, say: Log) -> Scorer:
    """A scorer whose failure skips its columns for that recipe, with a note, instead of ending the run."""
    def run(recipe: Recipe, result: RecipeResult, f16: ConversionResult) -> Scores:
        try:
            return scorer(recipe, result, f16)
        except (ImpGgufError, ValueError, KeyError, NotImplementedError) as exc:
            say(f"{recipe.name}: {getattr(scorer, '__name__', 'scorer')} skipped ({exc})")
            return {}
    return run


@dataclass(frozen=True)
class ComparedRecipe:
    """One recipe's row of the comparison: what applying it gave (not whether the mmproj was reused),
    what the scorers measured (kl_mean, decode_tps, accuracy, ...) and whether it is on the size/KL front."""

    result: RecipeResult
    scores: Scores
    pareto: bool = False

    @property
    def total_bytes(self) -> int:
        return self.result.lm_bytes + self.result.mmproj_bytes

    def to_dict(self) -> JsonDict:
        keep = ("recipe", "lm_bytes", "mmproj_bytes", "bpw", "mmproj_bpw", "encoding", "description",
                "tensor_types", "mmproj_tensor_types", "fallbacks", "model", "mmproj")
        applied = self.result.to_dict()
        row = {k: applied[k] for k in keep} | self.scores
        ordered = {k: row[k] for k in (*REQUIRED_ROW_KEYS, *[k for k in row if k not in REQUIRED_ROW_KEYS])}
        return ordered | {"pareto": self.pareto}


@dataclass(frozen=True)
class CompareReport:
    """compare_recipes' result; to_dict() is report.json (what report.md, the plot and baselines are made from)."""

    rows: tuple[ComparedRecipe, ...]
    summaries: JsonDict  # the scorers' own top-level keys ("heldout")
    checkpoint: str
    variant: str
    reference: F16Files
    evalset: JsonDict  # texts, images, positions, seeds, scenes, answer_tokens, speed_prompt_tokens, decode_tokens
    host: JsonDict  # machine, system, cpu_count, threads, runs
    plot: Path | None = None  # report.png (None without matplotlib)

    def to_dict(self) -> JsonDict:
        return {
            "recipes": [r.to_dict() for r in self.rows],
            **self.summaries,
            "checkpoint": self.checkpoint,
            "variant": self.variant,
            "reference": self.reference.to_dict(),
            "evalset": dict(self.evalset),
            "host": dict(self.host),
            "versions": {"imp_gguf": __version__, "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
                         "llama_cpp": LLAMA_CPP_COMMIT},
            "plot": str(self.plot) if self.plot else None,
        }


@dataclass(frozen=True)
class F16Files:
    """The F16 conversion every recipe is measured against."""

    model: Path
    mmproj: Path
    lm_bytes: int
    mmproj_bytes: int

    def to_dict(self) -> JsonDict:
        return {"model": str(self.model), "mmproj": str(self.mmproj), "lm_bytes": self.lm_bytes,
                "mmproj_bytes": self.mmproj_bytes}


def compare_recipes(source: str | Path, recipes: Sequence[str | Path | Recipe] | None, outdir: str | Path, *,
                    runs: int = 3, force: bool = False, n_threads: int | None = None,
                    log: Log | None = None, keep_files: bool = True, evalset: EvalSet | None = None,
                    scorers: Sequence[Scorer | None] = (), verbose: bool = False) -> CompareReport:
    """Run the comparison and write report.json, report.md and report.png into outdir; returns the report.

    `evalset` defaults to the full fixed set (what baselines are made with); a shorter one
    (build_evalset(..., n_texts=, n_images=, decode_tokens=)) makes quick checks. `scorers` add
    columns (the tiny Imp's held-out "accuracy": imp_gguf.tiny_imp.evaluate.accuracy_scorer; None: no
    scorer), each skipped with a note where it fails; a scorer's summary() adds top-level report keys.
    """
    say = log or (lambda _msg: None)
    extra = [s for s in scorers if s is not None]
    chosen = [load_recipe(r) for r in recipes] if recipes else list_recipes()
    names = [r.name for r in chosen]
    if len(set(names)) != len(names):
        raise BadInput(f"recipe listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if runs < 1:
        raise BadInput("--runs must be at least 1")
    out = Path(outdir)
    if (out / "report.json").exists() and not force:
        raise OutputExists(f"{out / 'report.json'} exists; pass --force to overwrite the comparison")
    out.mkdir(parents=True, exist_ok=True)

    ev = evalset or build_evalset(out / "evalset")
    quality = FidelityAndSpeed(ev, runs, n_threads, say)
    conv, results = run_recipes(source, out, chosen, scorers=[quality, *(optional(s, say) for s in extra)],
                                log=say, verbose=verbose, keep_files=keep_files)
    ref, threads = quality.ref, quality.threads
    if ref is None:
        raise InternalError("the F16 reference was never scored")
    rows = [ComparedRecipe(*r) for r in results]
    if not recipes:  # the default set reads best from the largest file to the smallest
        rows.sort(key=lambda r: -r.total_bytes)
    front = pareto_front([(r.total_bytes, r.scores["kl_mean"]) for r in rows])
    report = CompareReport(
        rows=tuple(replace(r, pareto=on_front) for r, on_front in zip(rows, front)),
        summaries={k: v for s in extra if hasattr(s, "summary") for k, v in s.summary().items()},
        checkpoint=str(source), variant=conv.facts.variant, reference=F16Files(conv.model, conv.mmproj, conv.model.stat().st_size, conv.mmproj.stat().st_size),
        evalset={"texts": len(ev.texts), "images": len(ev.images), "positions": ref.n_positions,
                 "seeds": list(ev.seeds), "scenes": len(ev.scenes), "answer_tokens": ev.answer_tokens,
                 "speed_prompt_tokens": rows[0].scores.get("prefill_tokens") if rows else None,
                 "decode_tokens": ev.decode_tokens},
        host={"machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(),
              "threads": threads, "runs": runs})
    paths = write_report(report.to_dict(), out, force=True)
    return replace(report, plot=paths.get("png"))


# ---------------------------------------------------------------- report files

def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["recipes"]
    host = report["host"]
    lines = [
        f"# Recipe comparison: {Path(report['checkpoint']).name}",
        "",
        (f"Variant `{report['variant']}`; reference: the F16 files (LM {_mb(report['reference']['lm_bytes'])} MB, "
         f"mmproj {_mb(report['reference']['mmproj_bytes'])} MB). KL and top-1 over {report['evalset']['positions']} "
         f"next-token positions: {report['evalset'].get('answer_tokens')} tokens the F16 files sample after "
         f"each of the questions about {report['evalset'].get('scenes')} synthetic scenes in "
         f"{len(report['evalset'].get('seeds') or [])} seeds; KL seeds: the lowest and highest per-seed mean. "
         f"KL text: {report['evalset']['texts']} fixed text prompts (all positions) and "
         f"{report['evalset']['images']} image prompts (last position). Speed on this host "
         f"({host['machine']}, {host['threads']} threads), medians of {host['runs']} runs, through llama-cpp-python "
         f"{report['versions']['llama_cpp_python']} (logits kept for every position, so prefill includes the "
         "output layer on each token; `imp-gguf bench` has llama-bench numbers)."),
        "",
        ("| recipe | LM MB | mmproj MB | LM bpw | KL mean | KL seeds | KL p99 | KL text | top-1 | image cos min | "
         "prefill t/s | decode t/s | encode ms | Pareto |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        spread = "-".join(f"{x:.5f}" for x in r["kl_spread"]) if r.get("kl_spread") else "n/a"
        lines.append(
            f"| {r['recipe']} | {_mb(r['lm_bytes'])} | {_mb(r['mmproj_bytes'])} | {r['bpw']:.2f} | "
            f"{r['kl_mean']:.5f} | {spread} | {r['kl_p99']:.5f} | {_fmt(r.get('kl_text_mean'), '.5f')} | "
            f"{r['top1']:.3f} | {_fmt(r['image_cos_min'], '.5f')} | "
            f"{r['prefill_tps']:.1f} | {r['decode_tps']:.1f} | {_fmt(r['encode_ms'], '.2f')} | "
            f"{'yes' if r.get('pareto') else ''} |")
    if any("accuracy" in r for r in rows):
        held = report.get("heldout", {})
        pt = held.get("pytorch_accuracy")
        lines += ["", f"Held-out accuracy (tiny Imp, {held.get('n', '?')} questions; exact answers): "
                  + (f"PyTorch {pt:.3f}; " if pt is not None else "") + ", ".join(
                      f"{r['recipe']} {r['accuracy']:.3f}" for r in rows if "accuracy" in r)]
    lines += ["", "## Recipes", ""]
    lines += [f"- **{r['recipe']}** ({r['encoding']}): {r['description']}" for r in rows]
    lines += ["", "## Tensor types", "", "| recipe | language model | mmproj |", "|---|---|---|"]
    for r in rows:
        lm = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
        mm = ", ".join(f"{k} {v}" for k, v in r["mmproj_tensor_types"].items())
        lines.append(f"| {r['recipe']} | {lm} | {mm} |")
    lines += ["", "## Shape fallbacks", "",
              "Rows whose width is not a multiple of the wanted type's block get llama.cpp's fallback type.", ""]
    grouped: dict[tuple, list[str]] = {}  # the same fallback in several recipes is listed once
    for r in rows:
        for f in r["fallbacks"]:
            grouped.setdefault((f["part"], f["tensor"], f["ne0"], f["wanted"], f["type"]), []).append(r["recipe"])
    for (part, tensor, ne0, wanted, typ), names in grouped.items():
        lines.append(f"- `{tensor}` ({part}, {ne0} columns): {wanted} -> **{typ}** in {', '.join(names)}")
    if not grouped:
        lines.append("None.")
    if report.get("plot"):
        lines += ["", f"![size against KL divergence]({Path(report['plot']).name})"]
    if report.get("baseline"):
        b = report["baseline"]
        lines += ["", "## Baseline", "", f"Checked against `{b['file']}`: "
                  + ("no regression." if not b["regressions"] else "; ".join(b["regressions"]))]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], outdir: str | Path, *, force: bool = True) -> dict[str, Path]:
    """report.json, report.md and (with matplotlib) report.png, each written atomically."""
    out = Path(outdir)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    if plot.available():
        with atomic_outputs([paths["png"]], force) as (png_tmp,):
            plot.plot_size_vs_kl(report["recipes"], png_tmp, title=Path(report["checkpoint"]).name)
        report["plot"] = str(paths["png"])
    else:  # matplotlib is the optional `plot` extra
        report["plot"] = None
        paths.pop("png")
    with atomic_outputs([paths["json"], paths["md"]], force) as (json_tmp, md_tmp):
        json_tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        md_tmp.write_text(render_markdown(report))
    return paths


# ---------------------------------------------------------------- baselines

def make_baseline(report: dict[str, Any], tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "schema": BASELINE_SCHEMA,
        "checkpoint": Path(report["checkpoint"]).name,
        "variant": report.get("variant"),
        "versions": report.get("versions"),
        "tolerance": dict(tolerance or DEFAULT_TOLERANCE),
        "evalset": {k: report.get("evalset", {}).get(k) for k in ("seeds", "scenes", "answer_tokens", "positions")},
        "heldout": report.get("heldout"),
        "recipes": {r["recipe"]: {"kl_mean": r["kl_mean"], "kl_seeds": r.get("kl_seeds"), "lm_bytes": r["lm_bytes"],
                                  "bpw": r["bpw"], **({"accuracy": r["accuracy"]} if "accuracy" in r else {}),
                                  "lm_fallbacks": [f"{f['tensor']} {f['wanted']}->{f['type']}" for f in r["fallbacks"]
                                                   if f["part"] == "lm"]}
                    for r in report["recipes"]},
    }


def write_baseline(report: dict[str, Any], path: str | Path, *, force: bool = False,
                   tolerance: dict[str, float] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([path], force) as (tmp,):
        tmp.write_text(json.dumps(make_baseline(report, tolerance), indent=2) + "\n")
    return path


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInput(f"baseline {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"baseline {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("recipes"), dict):
        raise BadInput(f"baseline {path} is not an imp-gguf recipes baseline (schema {BASELINE_SCHEMA})")
    return data


def check_baseline(report: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """One message per regression: KL mean or LM size above the baseline plus its tolerance, or
    held-out accuracy (when both sides have it) below the baseline minus its tolerance."""
    rows = {r["recipe"]: r for r in report["recipes"]}
    common = [n for n in baseline["recipes"] if n in rows]
    if not common:
        raise BadInput("the baseline names none of the compared recipes")
    problems = []
    for name in common:
        base = baseline["recipes"][name]
        tol = {**DEFAULT_TOLERANCE, **baseline.get("tolerance", {}), **base.get("tolerance", {})}
        row = rows[name]
        kl_limit = base["kl_mean"] * (1 + tol["kl_mean_rel"]) + tol["kl_mean_abs"]
        if row["kl_mean"] > kl_limit:
            problems.append(f"recipe {name}: kl_mean {row['kl_mean']:.6g} > {kl_limit:.6g} "
                            f"(baseline {base['kl_mean']:.6g} + tolerance)")
        size_limit = base["lm_bytes"] * (1 + tol["lm_bytes_rel"])
        if row["lm_bytes"] > size_limit:
            problems.append(f"recipe {name}: lm_bytes {row['lm_bytes']} > {size_limit:.0f} "
                            f"(baseline {base['lm_bytes']} + tolerance)")
        if "accuracy" in base and "accuracy" in row:
            acc_floor = base["accuracy"] - tol["accuracy_abs"]
            if row["accuracy"] < acc_floor:
                problems.append(f"recipe {name}: held-out accuracy {row['accuracy']:.3f} < {acc_floor:.3f} "
                                f"(baseline {base['accuracy']:.3f} - tolerance)")
    return problems


def apply_baseline(report: dict[str, Any], path: str | Path, outdir: str | Path) -> list[str]:
    """Check the report against a baseline file, record the outcome in the report files, return the regressions."""
    baseline = load_baseline(path)
    problems = check_baseline(report, baseline)
    report["baseline"] = {"file": str(path), "regressions": problems,
                          "not_compared": [n for n in baseline["recipes"] if n not in {r["recipe"] for r in report["recipes"]}]}
    write_report(report, outdir, force=True)
    return problems
