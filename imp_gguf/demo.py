"""The README's first command: the bundled tiny Imp -> GGUF (+ q4_k) -> answers about bundled images
it never trained on, checked against their golden answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from imp_gguf.convert import JsonDict
from imp_gguf.tiny_imp.bundled import default_checkpoint, demo_items
from imp_gguf.convert import convert
from imp_gguf.quant.quantize import convert_and_quantize
from imp_gguf.quant.recipes import resolve_recipe
from imp_gguf.runtime.bindings import Session
from imp_gguf.tiny_imp.evaluate import is_correct


@dataclass(frozen=True)
class DemoAnswer:
    """One question about a bundled image, answered through llama.cpp."""

    image: Path
    question: str
    answer: str
    expected: str
    correct: bool

    def to_dict(self) -> JsonDict:
        return {"image": str(self.image), "question": self.question, "answer": self.answer,
                "expected": self.expected, "correct": self.correct}


@dataclass(frozen=True)
class DemoResult:
    """The demo's files and answers."""

    model: Path
    mmproj: Path
    recipe: str  # "f16" without one
    answers: tuple[DemoAnswer, ...]

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    def to_dict(self) -> JsonDict:
        return {"model": str(self.model), "mmproj": str(self.mmproj), "recipe": self.recipe,
                "answers": [a.to_dict() for a in self.answers], "correct": self.correct}


def demo_questions() -> list[dict[str, Any]]:
    """One question per bundled image: the first of each image's two, which together cover every kind."""
    seen: set[str] = set()
    out = []
    for item in demo_items():
        if item["image"].name not in seen:
            seen.add(item["image"].name)
            out.append(item)
    return out


def run_demo(outdir: str | Path, *, quant: str | None = "q4_k", force: bool = False,
             log: Callable[[str], None] = print, show: Callable[[str], None] | None = None,
             verbose: bool = False) -> DemoResult:
    """`log` gets progress, `show` the results (the files, each answer, the score; default: `log`).
    quant is a recipe name (any spelling `convert --quant` takes), or None / "none" for F16."""
    show = show or log
    recipe = resolve_recipe(quant)

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt, items = default_checkpoint(), demo_questions()
    log(f"checkpoint: {ckpt}  (the bundled tiny Imp: Imp's architecture and layout A at toy size)")
    if recipe is not None:
        done = convert_and_quantize(ckpt, outdir, recipe, force=force, verbose=verbose)
        model, mmproj = done.model, done.mmproj
    else:
        f16 = convert(ckpt, outdir, outtype="f16", force=force)
        model, mmproj = f16.model, f16.mmproj
    show(f"model:  {model}")
    show(f"mmproj: {mmproj}")
    answers = []
    with Session(model, mmproj) as s:
        for item in items:
            answer = s.generate(s.chat_prompt(item["question"]), [item["image"]], max_tokens=24).strip()
            ok = is_correct(answer, item["answer"])
            answers.append(DemoAnswer(Path(item["image"]), item["question"], answer, item["answer"], ok))
            show(f"Q: {item['question']}  ({Path(item['image']).name})\nA: {answer}"
                + ("  [correct]" if ok else f"  [expected: {item['answer']}]"))
    result = DemoResult(model, mmproj, recipe.name if recipe is not None else "f16", tuple(answers))
    show(f"{result.correct}/{len(answers)} correct through llama.cpp ({result.recipe})")
    return result
