"""The README's first command: the bundled tiny Imp -> GGUF (+ q4_k) -> answers about bundled images
it never trained on, checked against their golden answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from imp_gguf.tiny_imp import default_checkpoint, demo_items


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
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from imp_gguf.runtime.bindings import Session
    from imp_gguf.tiny_imp.evaluate import is_correct

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt, items = default_checkpoint(), demo_questions()
    log(f"checkpoint: {ckpt}  (the bundled tiny Imp: Imp's architecture and layout A at toy size)")
    if quant:
        from imp_gguf.quant import convert_and_quantize

        result = convert_and_quantize(ckpt, outdir, quant, force=force)
    else:
        from imp_gguf.convert import convert

        result = convert(ckpt, outdir, outtype="f16", force=force)
    log(f"model:  {result['model']}")
    log(f"mmproj: {result['mmproj']}")
    answers = []
    with Session(result["model"], result["mmproj"]) as s:
        for item in items:
            answer = s.generate(s.chat_prompt(item["question"]), [item["image"]], max_tokens=24).strip()
            ok = is_correct(answer, item["answer"])
            answers.append({"image": str(item["image"]), "question": item["question"], "answer": answer,
                            "expected": item["answer"], "correct": ok})
            log(f"Q: {item['question']}  ({Path(item['image']).name})\nA: {answer}"
                + ("  [correct]" if ok else f"  [expected: {item['answer']}]"))
    n_ok = sum(a["correct"] for a in answers)
    log(f"{n_ok}/{len(answers)} correct through llama.cpp ({quant or 'f16'})")
    return {"model": result["model"], "mmproj": result["mmproj"], "recipe": quant or "f16",
            "answers": answers, "correct": n_ok}
