"""Held-out accuracy of the tiny Imp: PyTorch (the checkpoint itself) versus llama.cpp (its GGUFs).

    imp-gguf eval [CHECKPOINT] --recipes f16,q8_0,q4_k,q3_k [-n 200] [--json]

Answers are compared by exact match after `data.normalise` (lowercase, punctuation stripped).
The held-out stream (`imp-tiny-heldout-{seed}`) is disjoint from training's (`imp-tiny-train-...`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union, cast

from PIL import Image

from imp_gguf.tiny_imp import data as D
from imp_gguf.errors import BadInput
from imp_gguf.images import load_image
from imp_gguf.quant.quantize import run_recipes
from imp_gguf.quant.recipes import load_recipe
from imp_gguf.runtime.bindings import Session
from imp_gguf.tiny_imp.bundled import default_checkpoint, is_tiny_imp

if TYPE_CHECKING:
    from imp_gguf.convert import ConversionResult
    from imp_gguf.quant.quantize import RecipeResult
    from imp_gguf.quant.recipes import Recipe

ImageLike = Union[str, Path, Image.Image]
HeldoutItem = tuple[ImageLike, str, str]  # (image, question, golden answer)

N_HELDOUT = 200  # tests, `imp-gguf eval` and the recipe comparison score the same questions


def heldout_set(n: int = N_HELDOUT, seed: int = 1) -> list[HeldoutItem]:
    """n (PIL image, question, answer) items, balanced over the five question kinds."""
    return [(ex.image, ex.question, ex.answer) for ex in D.heldout_examples(n, seed)]


def is_correct(predicted: str, golden: str) -> bool:
    return D.normalise(predicted) == D.normalise(golden)


def accuracy(preds: Sequence[str], items: Sequence[HeldoutItem]) -> float:
    """Share of exact answers (after normalise)."""
    return sum(is_correct(p, it[2]) for p, it in zip(preds, items, strict=True)) / max(1, len(items))


def _model_image(image: ImageLike, size: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return D.to_model_size(image, size)
    return load_image(image, size)


Tick = Callable[[], None]  # called once per answered question (progress bars)


def model_predictions(model: Any, codec: Any, items: Sequence[HeldoutItem], size: int,
                      max_tokens: int = 16, tick: Tick | None = None) -> list[str]:
    import torch

    from imp_gguf.tiny_imp.model import pixels

    out = []
    with torch.no_grad():
        for image, question, _ in items:
            before, after = codec.prompt(question)
            pix = pixels([_model_image(image, size)], size)[0]
            out.append(codec.decode(model.generate(before, pix, after, stop_id=codec.stop_id, max_tokens=max_tokens)))
            if tick:
                tick()
    return out


def model_accuracy(model: Any, codec: Any, items: Sequence[HeldoutItem], size: int) -> float:
    preds = model_predictions(model, codec, items, size)
    return accuracy(preds, items)


def pytorch_available() -> bool:
    """The PyTorch side needs the [reference] extra (torch, transformers)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def pytorch_predictions(ckpt_dir: str | Path, items: Sequence[HeldoutItem], tick: Tick | None = None) -> list[str]:
    """Greedy answers of the checkpoint run by our own PyTorch rebuild of its modules (float32)."""
    import torch

    from imp_gguf.reference.model import ImpModel
    from imp_gguf.tiny_imp.model import TextCodec

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = ImpModel.from_checkpoint(ckpt_dir, fast=True)
    size = cast(int, model.vision.config.image_size)  # SigLIP's: one side
    return model_predictions(model, TextCodec(ckpt_dir), items, size, tick=tick)


def pytorch_accuracy(ckpt_dir: str | Path, items: Sequence[HeldoutItem] | None = None) -> float:
    items = heldout_set() if items is None else items
    preds = pytorch_predictions(ckpt_dir, items)
    return accuracy(preds, items)


def _as_paths(items: Sequence[HeldoutItem], tmp: Path) -> list[tuple[Path, str, str]]:
    out = []
    for i, (image, q, a) in enumerate(items):
        if isinstance(image, Image.Image):
            path = tmp / f"heldout-{i:04d}.png"
            image.save(path)
            image = path
        out.append((Path(image), q, a))
    return out


def llama_predictions(model_gguf: str | Path, mmproj_gguf: str | Path, items: Sequence[HeldoutItem], *,
                      max_tokens: int = 16, n_threads: int | None = 1,
                      tick: Tick | None = None) -> list[str]:
    """Greedy answers through llama.cpp (imp_gguf.runtime.bindings.Session, which keeps libmtmd's
    per-image log quiet unless --verbose), images written as PNG."""
    with tempfile.TemporaryDirectory(prefix="tiny-imp-eval-") as td:
        paths = _as_paths(items, Path(td))
        out = []
        with Session(model_gguf, mmproj_gguf, n_ctx=512, n_threads=n_threads or 1) as s:
            for p, q, _ in paths:
                out.append(s.generate(s.chat_prompt(q), [p], max_tokens=max_tokens))
                if tick:
                    tick()
        return out


def heldout_accuracy(model_gguf: str | Path, mmproj_gguf: str | Path,
                     items: Sequence[HeldoutItem] | None = None, **kw: Any) -> float:
    items = heldout_set() if items is None else items
    preds = llama_predictions(model_gguf, mmproj_gguf, items, **kw)
    return accuracy(preds, items)


# ---------------------------------------------------------------- as a scorer of `recipes compare`

def _pytorch_accuracy(source: str | Path) -> float | None:
    """The checkpoint's own held-out accuracy, for scale (needs the [reference] extra's torch)."""
    return pytorch_accuracy(source) if pytorch_available() else None


class HeldoutAccuracy:
    """A recipe scorer (imp_gguf.quant.quantize.Scorer): each recipe's held-out accuracy through
    llama.cpp, and PyTorch's for scale in the report ("heldout")."""

    __name__ = "accuracy"  # names the column in a "skipped" note

    def __init__(self, source: str | Path, n_threads: int | None = None):
        self.source, self.n_threads = source, n_threads

    def __call__(self, recipe: Recipe, result: RecipeResult, f16: ConversionResult) -> dict[str, float]:
        return {"accuracy": float(heldout_accuracy(result.model, result.mmproj, n_threads=self.n_threads))}

    def summary(self) -> dict[str, Any]:
        return {"heldout": {"n": N_HELDOUT, "pytorch_accuracy": _pytorch_accuracy(self.source)}}


def accuracy_scorer(source: str | Path, n_threads: int | None = None) -> HeldoutAccuracy | None:
    """The held-out accuracy scorer when the checkpoint is the tiny Imp (bundled or trained by
    imp_gguf.tiny_imp.train): other checkpoints were never trained on its task."""
    return HeldoutAccuracy(source, n_threads) if is_tiny_imp(source) else None


# ---------------------------------------------------------------- GGUFs per recipe and the report

def recipe_ggufs(ckpt_dir: str | Path, workdir: str | Path, recipes: Sequence[str], *,
                 log: Callable[[str], None] | None = None, verbose: bool = False) -> dict[str, dict[str, Any]]:
    """{recipe: {"model", "mmproj", "lm_bytes"}}: one F16 conversion, then each recipe applied to it
    by imp_gguf.quant (llama.cpp's quantizer), as `imp-gguf convert --quant` would."""
    _, rows = run_recipes(ckpt_dir, workdir, [load_recipe(r) for r in recipes], log=log, verbose=verbose)
    return {r.recipe: {"model": str(r.model), "mmproj": str(r.mmproj), "lm_bytes": r.lm_bytes,
                       "mmproj_bytes": r.mmproj_bytes, "bpw": r.bpw} for r, _ in rows}


def _kinds(n: int) -> list[str]:
    return [D.KINDS[i % len(D.KINDS)] for i in range(n)]  # heldout_examples cycles through KINDS


@dataclass(frozen=True)
class Score:
    """Accuracy over all answers and per question kind."""

    accuracy: float
    by_kind: dict[str, float]


def score(preds: Sequence[str], items: Sequence[HeldoutItem]) -> Score:
    """Accuracy, overall and by kind, of answers to heldout_set items."""
    by_kind: dict[str, list[int]] = {}
    for i, kind in enumerate(_kinds(len(items))):
        by_kind.setdefault(kind, []).append(i)
    return Score(accuracy=round(accuracy(preds, items), 4),
                 by_kind={k: round(accuracy([preds[i] for i in ix], [items[i] for i in ix]), 4)
                          for k, ix in by_kind.items()})


@dataclass(frozen=True)
class AnswerDetails:
    """Every question, its golden answer and each runtime's answer (accuracy_report(details=True))."""

    golden: list[str]
    questions: list[str]
    predictions: dict[str, list[str]]  # runtime -> answers


@dataclass(frozen=True)
class AccuracyReport:
    """`imp-gguf eval`'s report. A runtime is "pytorch" or a recipe name."""

    checkpoint: str
    n: int
    seed: int
    accuracy: dict[str, float]  # runtime -> accuracy
    by_kind: dict[str, dict[str, float]]  # runtime -> kind -> accuracy
    agreement_with_pytorch: dict[str, float]  # recipe -> share of answers identical to PyTorch's ({}: no PyTorch)
    files: dict[str, dict[str, Any]]  # recipe -> the recipe result's files and sizes (paths only with a workdir)
    details: AnswerDetails | None = None
    plot: str | None = None  # the PNG `eval --plot` wrote

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checkpoint": self.checkpoint, "n": self.n, "seed": self.seed,
                               "accuracy": self.accuracy, "by_kind": self.by_kind,
                               "agreement_with_pytorch": self.agreement_with_pytorch, "files": self.files}
        if self.details is not None:
            out.update(golden=self.details.golden, questions=self.details.questions,
                       predictions=self.details.predictions)
        if self.plot is not None:
            out["plot"] = self.plot
        return out


def accuracy_report(ckpt_dir: str | Path | None = None, recipes: Sequence[str] = ("f16", "q8_0", "q4_k"), *,
                    n: int = N_HELDOUT, seed: int = 1, pytorch: bool = True, workdir: str | Path | None = None,
                    n_threads: int = 1, details: bool = False, log: Callable[[str], None] | None = None,
                    progress: Callable[[str, int], Tick] | None = None, verbose: bool = False) -> AccuracyReport:
    """Held-out accuracy of the PyTorch checkpoint and of each recipe's GGUFs through llama.cpp, on
    the same n questions (default checkpoint: the bundled tiny Imp).

    files {recipe: {model, mmproj, lm_bytes, ...}} keeps paths only with workdir; details=True adds
    questions, golden and predictions. progress(runtime, n) returns the per-answer tick for a runtime."""
    say = log or (lambda _m: None)
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else default_checkpoint()
    check_tiny_imp(ckpt)
    items = heldout_set(n, seed)
    preds: dict[str, list[str]] = {}
    if pytorch:
        say(f"pytorch: answering {len(items)} held-out questions")
        preds["pytorch"] = pytorch_predictions(ckpt, items, tick=progress("pytorch", len(items)) if progress else None)
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tiny-imp-")))
        files = recipe_ggufs(ckpt, work, recipes, log=say, verbose=verbose)
        for recipe, g in files.items():
            say(f"{recipe}: answering {len(items)} held-out questions through llama.cpp")
            preds[recipe] = llama_predictions(g["model"], g["mmproj"], items, n_threads=n_threads,
                                              tick=progress(recipe, len(items)) if progress else None)
    scores = {k: score(v, items) for k, v in preds.items()}
    return AccuracyReport(
        checkpoint=str(ckpt), n=len(items), seed=seed,
        accuracy={k: s.accuracy for k, s in scores.items()},
        by_kind={k: s.by_kind for k, s in scores.items()},
        agreement_with_pytorch=({r: round(sum(D.normalise(a) == D.normalise(b) for a, b in
                                              zip(preds[r], preds["pytorch"])) / max(1, len(items)), 4)
                                 for r in files} if "pytorch" in preds else {}),
        files=files if workdir else {k: {x: v for x, v in f.items() if x not in ("model", "mmproj")}
                                     for k, f in files.items()},
        details=AnswerDetails(golden=[it[2] for it in items], questions=[it[1] for it in items],
                              predictions=preds) if details else None)


def check_tiny_imp(ckpt: str | Path) -> None:
    """The held-out questions are the tiny Imp's task: refuse checkpoints never trained on it."""
    if not (Path(ckpt) / "config.json").is_file():
        raise BadInput(f"{ckpt}: not a checkpoint folder (no config.json)")
    if not is_tiny_imp(ckpt):
        raise BadInput(f"{ckpt} is not a tiny Imp trained by imp_gguf.tiny_imp.train (its config.json has no "
                       "'tiny_imp' section); held-out accuracy is measured on that model's synthetic task only")


def write_demo_images(dest: str | Path) -> Path:
    """(Re)generate the bundled demo images and demo.json (golden Q/A and the word to expect)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (scene, image, qa) in enumerate(D.demo_examples(), 1):
        name = f"shapes-{i:02d}.png"
        image.save(dest / name, optimize=True)
        for q, a, kind in qa:
            items.append({"image": name, "question": q, "answer": a, "kind": kind, "expect": D.key_word(kind, a)})
    doc = {"about": "Held-out demo images for the bundled tiny Imp (not in its training stream); regenerate "
                    "with `python -m imp_gguf.tiny_imp.evaluate --write-demo DIR`. A correct answer contains "
                    "`expect`; `answer` is the exact golden answer.",
           "image_size_on_disk": D.RENDER, "items": items}
    (dest / "demo.json").write_text(json.dumps(doc, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    """Maintainers' helper; accuracy itself is `imp-gguf eval`."""
    ap = argparse.ArgumentParser(prog="python -m imp_gguf.tiny_imp.evaluate",
                                 description="(Re)write the bundled demo images and demo.json.")
    ap.add_argument("--write-demo", metavar="DIR", required=True, help="folder for the images and demo.json")
    print(write_demo_images(ap.parse_args(argv).write_demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
