"""Recipe comparison without llama.cpp: KL divergence, the Pareto front, the baseline gate CI runs
(bench/baselines/recipes-tiny-phi2.json), the seeded evaluation set. Moved from tests/e2e/test_compare.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imp_gguf.errors import BadInput
from imp_gguf.quant.compare import check_baseline, kl_divergence, load_baseline, log_softmax, make_baseline, pareto_front
from imp_gguf.quant.evalset import build_evalset

BASELINE = Path(__file__).resolve().parents[2] / "bench" / "baselines" / "recipes-tiny-phi2.json"


def test_kl_divergence() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    ref = log_softmax(logits)
    assert np.allclose(kl_divergence(ref, logits), 0.0)
    q = np.array([[3.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
    p, qq = np.exp(ref[0]), np.exp(log_softmax(q[0]))
    kl = kl_divergence(ref, q)
    assert kl[0] == pytest.approx(float((p * np.log(p / qq)).sum())) and kl[1] == pytest.approx(0.0, abs=1e-12)


def test_pareto_front() -> None:
    pts = [(10, 0.0), (5, 0.01), (6, 0.02), (4, 0.05), (4, 0.06)]
    assert pareto_front(pts) == [True, True, False, True, False]


def _report(kl: float, size: int) -> dict:
    return {"checkpoint": "x", "variant": "v", "recipes": [{"recipe": "q4_k", "kl_mean": kl, "lm_bytes": size,
                                                            "bpw": 4.9, "fallbacks": []}]}


def test_check_baseline() -> None:
    base = make_baseline(_report(0.010, 1000))
    assert check_baseline(_report(0.0101, 1000), base) == []
    assert check_baseline(_report(0.005, 900), base) == []  # better is fine
    (msg,) = check_baseline(_report(0.020, 1000), base)
    assert "q4_k" in msg and "kl_mean" in msg
    (msg,) = check_baseline(_report(0.010, 1200), base)
    assert "q4_k" in msg and "lm_bytes" in msg
    base["recipes"]["q4_k"]["tolerance"] = {"kl_mean_rel": 2.0}  # per-recipe tolerance wins
    assert check_baseline(_report(0.020, 1000), base) == []
    with pytest.raises(BadInput, match="none of the compared"):
        check_baseline({"recipes": [{"recipe": "q8_0", "kl_mean": 0, "lm_bytes": 1}]}, base)


def test_check_baseline_accuracy() -> None:
    def rep(acc: float | None) -> dict:
        r = _report(0.010, 1000)
        if acc is not None:
            r["recipes"][0]["accuracy"] = acc
        return r

    base = make_baseline(rep(0.90))
    assert base["recipes"]["q4_k"]["accuracy"] == 0.90
    assert check_baseline(rep(0.88), base) == []  # within the 0.03 tolerance
    assert check_baseline(rep(0.95), base) == []
    (msg,) = check_baseline(rep(0.80), base)
    assert "q4_k" in msg and "accuracy 0.800 < 0.870" in msg
    assert check_baseline(rep(None), base) == []  # no accuracy measured: nothing to compare
    assert "accuracy" not in make_baseline(rep(None))["recipes"]["q4_k"]


def test_load_baseline_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_baseline(tmp_path / "none.json")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(BadInput, match="not an imp-gguf recipes baseline"):
        load_baseline(tmp_path / "b.json")


def test_committed_baseline_is_well_formed() -> None:
    data = load_baseline(BASELINE)
    assert {"q8_0", "q4_k", "q3_k"} <= set(data["recipes"])
    for row in data["recipes"].values():
        assert row["kl_mean"] >= 0 and row["lm_bytes"] > 0
    assert {"kl_mean_rel", "kl_mean_abs", "lm_bytes_rel"} <= set(data["tolerance"])
    for row in data["recipes"].values():  # KL per seed: its spread is part of the measurement
        assert len(row["kl_seeds"]) >= 3 and min(row["kl_seeds"].values()) <= row["kl_mean"] <= max(row["kl_seeds"].values())


def test_evalset_is_deterministic(tmp_path: Path) -> None:
    a, b = build_evalset(tmp_path / "a"), build_evalset(tmp_path / "b")
    assert len(a.texts) >= 4 and len(a.images) >= 3
    for pa, pb in zip(a.images, b.images):
        assert pa.image.read_bytes() == pb.image.read_bytes() and pa.question == pb.question
    assert len(a.seeds) >= 3 and len(a.scenes) == len(b.scenes) >= 30
    for sa, sb in zip(a.scenes, b.scenes):  # seeded scenes: the same pictures and questions on every machine
        assert sa.image.read_bytes() == sb.image.read_bytes() and (sa.seed, sa.question) == (sb.seed, sb.question)
    assert a.scenes[0].image.read_bytes() != a.scenes[1].image.read_bytes()
