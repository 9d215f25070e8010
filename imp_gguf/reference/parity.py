"""`imp-gguf verify`: the parity report users can run on their own conversion (needs the reference extra)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from imp_gguf.chat_templates import MEDIA_MARKER, TEMPLATES, imp_prompt
from imp_gguf.synthetic_images import photo_like
from imp_gguf.runtime.bindings import Session

DEFAULT_PROMPT = "There is a red circle on the left. How many shapes are there in the picture today?"
TOKENIZER_PROBES = ["Hello world", "  two  spaces\tand\ttabs\n\n", "3.14159 and 2024", "你好 🙂 café",
                    "What is in the image? It's red."]


@dataclass(frozen=True)
class ParityReport:
    """`imp-gguf verify`'s report: llama.cpp against the PyTorch reference. A comparison that cannot be made
    (a constant reference, an all-zero embedding) is None, never NaN; `problems` says why parity failed."""

    checkpoint: str
    model: str
    mmproj: str
    variant: str
    text_logits_std: float  # a flat reference would make every error look small
    text_logits_max_err_over_std: float | None
    text_top1_agreement: float | None  # top-1 of a constant row is a tie any output "matches": undefined
    image_cos_min: float | None
    image_cos_mean: float | None
    image_prompt_max_err_over_std: float | None
    image_prompt_top1_match: bool | None
    tokenizer_mismatches: list[str]

    @property
    def problems(self) -> list[str]:
        return problems(self)

    @property
    def ok(self) -> bool:
        return not self.problems

    def measurements(self) -> list[tuple[str, str | float | bool | list[str] | None]]:
        """(name, value) of every field, in the JSON's order (what verify prints without --json)."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]

    def to_dict(self) -> dict[str, Any]:
        return {**dict(self.measurements()), "problems": self.problems, "ok": self.ok}


def verify(ckpt: str | Path, model: str | Path, mmproj: str | Path, *, image: str | Path | None = None,
           n_threads: int | None = None) -> ParityReport:
    """Compare llama.cpp running MODEL+MMPROJ with the PyTorch reference built from CKPT."""
    import tempfile

    from imp_gguf.reference.model import ImpModel, hf_tokenizer

    ref, tok = ImpModel.from_checkpoint(ckpt), hf_tokenizer(ckpt)
    family, vh = ref.family, ref.vh
    assert family is not None and vh is not None  # set by from_checkpoint
    with tempfile.TemporaryDirectory() as td, Session(model, mmproj, f32_kv=True, n_threads=n_threads) as s:
        img = Path(image) if image else photo_like(Path(td) / "probe.png", 2 * vh.image_size, vh.image_size)
        ids = tok.encode(DEFAULT_PROMPT)[:16]
        want, got = ref.logits(ids), s.text_logits(ids)
        text_err = _err_over_std(got, want)
        feats, emb = ref.image_features(img), s.image_embeddings(img)
        norms = np.linalg.norm(emb, axis=-1) * np.linalg.norm(feats, axis=-1)
        cos = (emb * feats).sum(-1) / norms if np.all(norms > 0) else None
        prompt = imp_prompt(TEMPLATES[family.chat_template], "What colour is the shape?")
        before, after = prompt.split(MEDIA_MARKER)
        ids_before = [i for i in tok.encode(before)]
        if family.add_bos:
            bos = tok.convert_tokens_to_ids("<s>")
            ids_before = [bos] + [i for i in ids_before if i != bos]
        want_l = ref.logits_with_image(ids_before, feats, tok.encode(after, add_special_tokens=False))
        got_l = s.eval_prompt(prompt, [img])
        prompt_err = _err_over_std(got_l, want_l)
        mism = [t for t in TOKENIZER_PROBES if s.tokenize(t) != tok.encode(t, add_special_tokens=False)]
    return ParityReport(
        checkpoint=str(ckpt), model=str(model), mmproj=str(mmproj), variant=family.name,
        text_logits_std=float(want.std()), text_logits_max_err_over_std=text_err,
        text_top1_agreement=float((got.argmax(-1) == want.argmax(-1)).mean()) if text_err is not None else None,
        image_cos_min=float(cos.min()) if cos is not None else None,
        image_cos_mean=float(cos.mean()) if cos is not None else None,
        image_prompt_max_err_over_std=prompt_err,
        image_prompt_top1_match=bool(got_l.argmax() == want_l.argmax()) if prompt_err is not None else None,
        tokenizer_mismatches=mism)


def _err_over_std(got: np.ndarray, want: np.ndarray) -> float | None:
    """Largest error relative to the reference's spread; None (undefined) when the reference is constant."""
    std = float(want.std())
    return float(np.abs(got - want).max() / std) if std > 0 and np.isfinite(std) else None


# What makes a comparison undefined (the report holds None there instead of a NaN).
UNDEFINED = {"text_logits_max_err_over_std": "the PyTorch text logits are constant",
             "image_cos_min": "an image embedding is all zeros",
             "image_prompt_max_err_over_std": "the PyTorch image-prompt logits are constant"}


def problems(report: ParityReport) -> list[str]:
    """Why parity failed, one phrase each (empty: it passed); an undefined comparison says why it is."""
    undefined = [why for key, why in UNDEFINED.items() if getattr(report, key) is None]
    out = [f"undefined: {', '.join(undefined)} (all-zero weights?), so no error can be measured against them"
           ] if undefined else []
    if report.image_cos_min is not None and report.image_cos_min < 0.99:
        out.append(f"image embeddings: cosine {report.image_cos_min:.4f} < 0.99")
    if report.text_top1_agreement is not None and report.text_top1_agreement < 0.9:
        out.append(f"text top-1 agreement {report.text_top1_agreement:.2f} < 0.9")
    if report.image_prompt_top1_match is False:
        out.append("the image prompt's top-1 token differs")
    if report.tokenizer_mismatches:
        out.append(f"the tokenizer differs on {len(report.tokenizer_mismatches)} probe(s)")
    return out
