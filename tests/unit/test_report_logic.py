"""The pure logic behind issue #22's messages: fallback summaries, progress lines, the KL ladder check,
the accuracy-tie note and parity's reasons. No files, no llama.cpp."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from imp_gguf.cli._common import ProgressLines
from imp_gguf.quant.catalog import CatalogRow, TinyImpMeasure, accuracy_note, kl_order
from imp_gguf.quant.quantize import FallbackRow, fallback_summary
from imp_gguf.quant.recipes import load_recipe
from imp_gguf.reference.parity import ParityReport, problems


def _fb(tensor: str, part: str = "mmproj", ne0: int = 4304, extra: int = 1000) -> FallbackRow:
    return FallbackRow(part=part, tensor=tensor, ne0=ne0, wanted="Q8_0", type="F16", rule="x", extra_bytes=extra)


def test_fallback_summary_folds_blocks_and_sums_the_cost():
    rows = [_fb(f"v.blk.{i}.ffn_down.weight", extra=250_000) for i in range(26)] + [_fb("mm.0.weight", ne0=1152)]
    text = fallback_summary(rows)
    assert text.startswith("27 tensors written wider than the recipe asks")
    assert "v.blk.{0-25}.ffn_down.weight (mmproj, rows of 4304) Q8_0 -> F16" in text
    assert "mm.0.weight (mmproj, rows of 1152) Q8_0 -> F16" in text
    assert text.endswith("+6.50 MB")
    assert "{0,2,5-7}" in fallback_summary([_fb(f"blk.{i}.x.weight", part="lm") for i in (0, 2, 5, 6, 7)])
    assert fallback_summary([]) is None


def test_progress_lines_tick_every_few_seconds_and_at_each_phase():
    lines: list[str] = []
    lock = threading.Lock()

    def say(m: str) -> None:
        with lock:
            lines.append(m)

    with ProgressLines(say, every=0.05) as p:
        p.phase("converting to F16", 4_000_000)
        for _ in range(8):
            p.advance(500_000)
            time.sleep(0.05)
        p.phase("quantizing", 0)
        time.sleep(0.12)
    assert lines[0] == "  converting to F16: 0.0 / 4.0 MB (0%), 0 s"
    assert sum(ln.startswith("  converting to F16:") for ln in lines) >= 4  # ticks while the work runs
    assert any("(50%)" in ln or "(62%)" in ln or "(37%)" in ln for ln in lines)
    assert any(ln.startswith("  quantizing, ") for ln in lines)
    quiet: list[str] = []
    with ProgressLines(quiet.append, every=0.01, enabled=False) as p:
        p.phase("x", 1)
        time.sleep(0.05)
    assert quiet == []


def _rows(kl: dict[str, tuple[float, dict]], acc: dict[str, float] | None = None) -> list[CatalogRow]:
    bpw = {"q8_0": 8.5, "q6_k": 6.6, "q5_k": 5.9, "q4_k": 5.1, "q3_k": 4.5}
    return [CatalogRow(load_recipe(n), False, 0.0, 0, None,
                       TinyImpMeasure(bpw=bpw[n], kl_mean=m, kl_seeds=s, accuracy=(acc or {}).get(n),
                                      lm_fallbacks=["blk.0.ffn_down.weight Q6_K->Q8_0"] if n == "q6_k" else []))
            for n, (m, s) in kl.items()]


def test_kl_order_overall_and_per_seed():
    good = {"q8_0": (0.001, {"0": 0.001, "1": 0.001}), "q6_k": (0.005, {"0": 0.004, "1": 0.006}),
            "q5_k": (0.01, {"0": 0.01, "1": 0.01}), "q4_k": (0.05, {"0": 0.05, "1": 0.05}),
            "q3_k": (0.1, {"0": 0.1, "1": 0.1})}
    order = kl_order(_rows(good))
    assert order.ordered and order.recipes == ["q8_0", "q6_k", "q5_k", "q4_k", "q3_k"] and order.seeds == ["0", "1"]
    # the mean is in order but one seed is not: still a break, naming the seed and the fallbacks
    one_seed = dict(good, q6_k=(0.008, {"0": 0.004, "1": 0.012}))
    order = kl_order(_rows(one_seed))
    assert not order.ordered
    assert order.to_dict()["breaks"] == [{"higher_bits": "q6_k", "lower_bits": "q5_k", "seeds": ["1"],
                                          "fallbacks": ["blk.0.ffn_down.weight Q6_K->Q8_0"]}]
    assert kl_order([]).ordered is False


def test_accuracy_note_only_when_every_recipe_ties():
    kl = {"q8_0": (0.001, {}), "q4_k": (0.05, {})}
    assert "cannot separate" in accuracy_note(_rows(kl, {"q8_0": 0.935, "q4_k": 0.935}))
    assert accuracy_note(_rows(kl, {"q8_0": 0.935, "q4_k": 0.9})) is None
    assert accuracy_note(_rows(kl)) is None  # not measured: nothing to say


def test_parity_problems_say_why_instead_of_nan():
    ok = ParityReport(checkpoint="ckpt", model="m.gguf", mmproj="mm.gguf", variant="imp-v1-3b", text_logits_std=1.0,
                      text_logits_max_err_over_std=0.01, text_top1_agreement=1.0, image_cos_min=0.9999,
                      image_cos_mean=0.99995, image_prompt_max_err_over_std=0.02, image_prompt_top1_match=True,
                      tokenizer_mismatches=[])
    assert problems(ok) == [] and ok.ok and ok.to_dict()["problems"] == []
    flat = replace(ok, text_logits_max_err_over_std=None, text_top1_agreement=None)
    (why,) = problems(flat)
    assert why.startswith("undefined: the PyTorch text logits are constant")
    assert not flat.ok and flat.to_dict()["problems"] == [why]
    assert problems(replace(ok, image_cos_min=0.9)) == ["image embeddings: cosine 0.9000 < 0.99"]
