"""The README's first command: embedded tiny Imp -> GGUF (+ q4_k) -> an answer about a bundled image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def _default_source(workdir: Path) -> tuple[Path, list[dict[str, Any]], bool]:
    """(checkpoint, demo items, trained?). The trained tiny Imp if bundled, else a random-weight fixture."""
    try:
        from imp_gguf.tiny_imp import default_checkpoint, demo_items

        return default_checkpoint(), demo_items(), True
    except Exception:  # noqa: BLE001 - fall back to a random fixture, and say so
        from PIL import Image, ImageDraw

        from imp_gguf.reference.fixtures import make_checkpoint

        ckpt = make_checkpoint("Imp-v1.5-3B-196", workdir / "Imp-v1.5-3B-196")
        img = Image.new("RGB", (96, 96), (30, 90, 200))
        ImageDraw.Draw(img).ellipse([20, 20, 70, 70], fill=(220, 30, 30))
        path = workdir / "demo.png"
        img.save(path)
        return ckpt, [{"image": path, "question": "What colour is the shape?", "answer": None}], False


def run_demo(outdir: str | Path, *, quant: str | None = "q4_k", force: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from imp_gguf.runtime.bindings import Session

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ckpt, items, trained = _default_source(outdir)
    log(f"checkpoint: {ckpt}" + ("" if trained else "  (random weights: answers are noise)"))
    if quant:
        try:
            from imp_gguf.quant import convert_and_quantize
        except ImportError:
            quant = None
    if quant:
        result = convert_and_quantize(ckpt, outdir, quant, force=force)
    else:
        from imp_gguf.convert import convert

        result = convert(ckpt, outdir, outtype="f16", force=force)
    log(f"model:  {result['model']}")
    log(f"mmproj: {result['mmproj']}")
    answers = []
    with Session(result["model"], result["mmproj"]) as s:
        for item in items[:3]:
            answer = s.generate(s.chat_prompt(item["question"]), [item["image"]], max_tokens=24).strip()
            ok = None if item.get("answer") is None else _normal(item["answer"]) == _normal(answer)
            answers.append({"image": str(item["image"]), "question": item["question"], "answer": answer,
                            "expected": item.get("answer"), "correct": ok})
            mark = "" if ok is None else ("  [correct]" if ok else f"  [expected: {item['answer']}]")
            log(f"Q: {item['question']}  ({Path(item['image']).name})\nA: {answer}{mark}")
    if not trained:
        log("note: this checkpoint has random weights, so the answer is noise; the pipeline is what is shown.")
    return {"model": result["model"], "mmproj": result["mmproj"], "trained": trained, "answers": answers}


def _normal(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c == " ").strip()
