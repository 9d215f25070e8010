"""Held-out accuracy of the tiny Imp: PyTorch (the checkpoint itself) versus llama.cpp (its GGUFs).

    python -m imp_gguf.tiny_imp.evaluate [--ckpt DIR] [--recipes f16,q8_0,q4_k_m] [-n 250]

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
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from PIL import Image

from imp_gguf.tiny_imp import data as D

ImageLike = Union[str, Path, Image.Image]
HeldoutItem = tuple[ImageLike, str, str]  # (image, question, golden answer)

# Recipes plain conversion writes; anything else goes through imp_gguf.quant when it exists.
DIRECT = ("f32", "f16", "bf16", "q8_0")


def heldout_set(n: int = 250, seed: int = 1) -> list[HeldoutItem]:
    """n (PIL image, question, answer) items, balanced over the five question kinds."""
    return [(ex.image, ex.question, ex.answer) for ex in D.heldout_examples(n, seed)]


def is_correct(predicted: str, golden: str) -> bool:
    return D.normalise(predicted) == D.normalise(golden)


def _model_image(image: ImageLike, size: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return D.to_model_size(image, size)
    from imp_gguf.images import load_image

    return load_image(image, size)


def model_predictions(model: Any, codec: Any, items: Sequence[HeldoutItem], size: int,
                      max_tokens: int = 16) -> list[str]:
    import torch

    from imp_gguf.tiny_imp.model import pixels

    out = []
    with torch.no_grad():
        for image, question, _ in items:
            before, after = codec.prompt(question)
            pix = pixels([_model_image(image, size)], size)[0]
            out.append(codec.decode(model.generate(before, pix, after, stop_id=codec.stop_id, max_tokens=max_tokens)))
    return out


def model_accuracy(model: Any, codec: Any, items: Sequence[HeldoutItem], size: int) -> float:
    preds = model_predictions(model, codec, items, size)
    return sum(is_correct(p, it[2]) for p, it in zip(preds, items)) / max(1, len(items))


def pytorch_predictions(ckpt_dir: str | Path, items: Sequence[HeldoutItem]) -> list[str]:
    """Greedy answers of the checkpoint run by our own PyTorch rebuild of its modules (float32)."""
    import torch

    from imp_gguf.tiny_imp.model import TextCodec, load_checkpoint

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = load_checkpoint(ckpt_dir)
    size = model.vision.config.image_size
    return model_predictions(model, TextCodec(ckpt_dir), items, size)


def pytorch_accuracy(ckpt_dir: str | Path, items: Sequence[HeldoutItem] | None = None) -> float:
    items = heldout_set() if items is None else items
    preds = pytorch_predictions(ckpt_dir, items)
    return sum(is_correct(p, it[2]) for p, it in zip(preds, items)) / max(1, len(items))


@contextlib.contextmanager
def _quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """libmtmd logs every image to stderr; silence the file descriptor while we loop."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
                      max_tokens: int = 16, quiet: bool = True, n_threads: int | None = None) -> list[str]:
    """Greedy answers through llama.cpp (imp_gguf.runtime.bindings.Session), images written as PNG."""
    from imp_gguf.runtime.bindings import Session

    with tempfile.TemporaryDirectory(prefix="tiny-imp-eval-") as td, _quiet_stderr(quiet):
        paths = _as_paths(items, Path(td))
        with Session(model_gguf, mmproj_gguf, n_ctx=512, n_threads=n_threads) as s:
            return [s.generate(s.chat_prompt(q), [p], max_tokens=max_tokens) for p, q, _ in paths]


def heldout_accuracy(model_gguf: str | Path, mmproj_gguf: str | Path,
                     items: Sequence[HeldoutItem] | None = None, **kw: Any) -> float:
    items = heldout_set() if items is None else items
    preds = llama_predictions(model_gguf, mmproj_gguf, items, **kw)
    return sum(is_correct(p, it[2]) for p, it in zip(preds, items)) / max(1, len(items))


# ---------------------------------------------------------------- GGUFs per recipe

_LLAMA_FTYPES = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q2_k": "Q2_K",
                 "q3_k_m": "Q3_K_M", "q4_k": "Q4_K_M", "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M",
                 "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}


def _quantize_lm_with_llama_cpp(src: Path, dst: Path, recipe: str) -> None:
    """Fallback while imp_gguf.quant does not exist: llama.cpp's own quantizer on the F16 LM."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{_LLAMA_FTYPES[recipe]}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = min(2, os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed for {recipe} (code {rc})")


def _quant_module() -> Any:
    try:
        from imp_gguf import quant
    except ImportError:
        return None
    return quant if hasattr(quant, "convert_and_quantize") else None


def recipe_available(recipe: str) -> bool:
    return recipe in DIRECT or _quant_module() is not None or recipe in _LLAMA_FTYPES


def gguf_for_recipe(ckpt_dir: str | Path, outdir: str | Path, recipe: str) -> dict[str, Any]:
    """{"model": path, "mmproj": path, "via": ...} for one recipe."""
    from imp_gguf.convert import convert

    outdir = Path(outdir) / recipe
    if recipe in DIRECT:
        r = convert(ckpt_dir, outdir, outtype=recipe, force=True)
        return {"model": r["model"], "mmproj": r["mmproj"], "via": "imp_gguf.convert"}
    quant = _quant_module()
    if quant is not None:
        r = quant.convert_and_quantize(ckpt_dir, outdir, recipe, force=True)
        return {"model": r["model"], "mmproj": r["mmproj"], "via": "imp_gguf.quant"}
    if recipe not in _LLAMA_FTYPES:
        raise ValueError(f"unknown recipe {recipe!r} (imp_gguf.quant is not available)")
    r = convert(ckpt_dir, outdir, outtype="f16", force=True)
    dst = Path(str(r["model"]).replace("-F16.gguf", f"-{recipe.upper()}.gguf"))
    _quantize_lm_with_llama_cpp(Path(r["model"]), dst, recipe)
    return {"model": str(dst), "mmproj": r["mmproj"], "via": "llama_model_quantize (LM only; mmproj F16)"}


def accuracy_report(ckpt_dir: str | Path | None = None, recipes: Sequence[str] = ("f16", "q8_0"), *,
                    items: Sequence[HeldoutItem] | None = None, n: int = 250, seed: int = 1,
                    workdir: str | Path | None = None, details: bool = False) -> dict[str, Any]:
    """{"pytorch": acc, "<recipe>": acc, ...} on the same held-out items (default: the bundled tiny Imp).

    details=True adds "n" and "predictions" (per recipe, the raw answers) for debugging."""
    from imp_gguf.tiny_imp import default_checkpoint

    ckpt = Path(ckpt_dir) if ckpt_dir is not None else default_checkpoint()
    items = heldout_set(n, seed) if items is None else items
    golden = [it[2] for it in items]

    def score(preds: list[str]) -> float:
        return round(sum(is_correct(p, g) for p, g in zip(preds, golden)) / max(1, len(items)), 4)

    preds: dict[str, list[str]] = {"pytorch": pytorch_predictions(ckpt, items)}
    report: dict[str, Any] = {"pytorch": score(preds["pytorch"])}
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tiny-imp-")))
        for recipe in recipes:
            g = gguf_for_recipe(ckpt, work, recipe)
            preds[recipe] = llama_predictions(g["model"], g["mmproj"], items)
            report[recipe] = score(preds[recipe])
    if details:
        report["n"] = len(items)
        report["predictions"] = preds
        report["golden"] = golden
    return report


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
    ap = argparse.ArgumentParser(prog="python -m imp_gguf.tiny_imp.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="checkpoint folder (default: the bundled tiny Imp)")
    ap.add_argument("--recipes", default="f16,q8_0", help="comma-separated (f16, q8_0, q4_k_m, ...)")
    ap.add_argument("-n", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="keep the GGUFs here")
    ap.add_argument("--write-demo", metavar="DIR", help="only (re)write the demo images and demo.json into DIR")
    a = ap.parse_args(argv)
    if a.write_demo:
        print(write_demo_images(a.write_demo))
        return 0
    rep = accuracy_report(a.ckpt, [r for r in a.recipes.split(",") if r], n=a.n, seed=a.seed, workdir=a.workdir)
    print(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
