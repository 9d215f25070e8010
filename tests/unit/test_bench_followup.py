"""The follow-up protocol's prediction from the paper's rates (moved from tests/e2e/test_bench_followup.py)."""

from __future__ import annotations

import pytest

from imp_gguf.speed.protocols import PAPER_ROW, followup_prediction


def test_paper_rates_prediction() -> None:
    p = followup_prediction(196, 41, 15, 64)
    first = PAPER_ROW["vision_encode_s"] + 237 / PAPER_ROW["prompt_tps"] + 64 / PAPER_ROW["decode_tps"]
    follow = 15 / PAPER_ROW["prompt_tps"] + 64 / PAPER_ROW["decode_tps"]
    assert p.first_s == pytest.approx(first, abs=0.01) and p.followup_s == pytest.approx(follow, abs=0.01)
    assert p.ratio == pytest.approx(follow / first, abs=1e-3)
