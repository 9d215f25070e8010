"""Recipe comparison: fidelity ordering on every fixture variant, the report's fields and files, and
the baseline gate CI runs (bench/baselines/recipes-tiny-phi2.json). Speed is reported, never timed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imp_gguf.cli.main import main
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.quant.compare import (check_baseline, compare_recipes, kl_divergence, load_baseline,
                                    log_softmax, make_baseline, pareto_front)
from imp_gguf.quant.evalset import build_evalset
from imp_gguf.synthetic_checkpoints.tiny import VARIANTS

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "bench" / "baselines" / "recipes-tiny-phi2.json"
ROW_KEYS = ("recipe", "lm_bytes", "mmproj_bytes", "bpw", "kl_mean", "kl_p99", "top1", "image_cos_min",
            "prefill_tps", "decode_tps", "encode_ms", "tensor_types")


# ---------------------------------------------------------------- metrics and baselines (no llama.cpp)

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


# ---------------------------------------------------------------- the comparison on every variant

def test_accuracy_hook_only_for_the_tiny_imp(tmp_path: Path, tiny_checkpoints) -> None:
    from imp_gguf.tiny_imp.bundled import CHECKPOINT_NAME, default_checkpoint
    from imp_gguf.tiny_imp.evaluate import accuracy_scorer as _accuracy_hook

    assert _accuracy_hook(tiny_checkpoints["Imp-v1.5-3B-196"]) is None
    assert _accuracy_hook(tmp_path / "missing") is None
    assert _accuracy_hook(default_checkpoint()) is not None
    # What counts is how it was trained (recorded in its config), not the folder's name.
    renamed = tmp_path / CHECKPOINT_NAME
    renamed.mkdir()
    (renamed / "config.json").write_text(json.dumps({"model_type": "imp"}))
    assert _accuracy_hook(renamed) is None
    (renamed / "config.json").write_text(json.dumps({"model_type": "imp", "tiny_imp": {"seed": 0}}))
    assert _accuracy_hook(renamed) is not None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kl_orders_recipes(variant: str, tiny_checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The accuracy column appears when the hook applies (here: a stand-in, so any checkpoint qualifies).
    from imp_gguf.tiny_imp.evaluate import accuracy_scorer

    monkeypatch.setattr("imp_gguf.tiny_imp.bundled.is_tiny_imp", lambda source: True)
    monkeypatch.setattr("imp_gguf.tiny_imp.evaluate.heldout_accuracy", lambda m, mm, n_threads=None: 0.5)
    monkeypatch.setattr("imp_gguf.tiny_imp.evaluate._pytorch_accuracy", lambda source: 0.625)
    # One thread: tiny models gain nothing from more, and a busy CI box makes thread barriers crawl.
    quick = build_evalset(tmp_path / "evalset", n_texts=3, n_images=2, decode_tokens=8, seeds=(0, 1),
                          scenes_per_seed=2, answer_tokens=8)
    report = compare_recipes(tiny_checkpoints[variant], ["q8_0", "q4_k", "q3_k"], tmp_path, runs=1, n_threads=1,
                             evalset=quick, scorers=[accuracy_scorer(tiny_checkpoints[variant], n_threads=1)]).to_dict()
    rows = {r["recipe"]: r for r in report["recipes"]}
    assert [r["recipe"] for r in report["recipes"]] == ["q8_0", "q4_k", "q3_k"]  # the order asked for
    assert rows["q8_0"]["kl_mean"] < rows["q4_k"]["kl_mean"] < rows["q3_k"]["kl_mean"]
    assert rows["q4_k"]["lm_bytes"] < rows["q8_0"]["lm_bytes"]
    assert rows["q3_k"]["lm_bytes"] < rows["q4_k"]["lm_bytes"]
    for r in rows.values():
        assert set(ROW_KEYS) <= set(r)
        assert r["kl_p99"] >= r["kl_mean"] > 0 and 0 < r["top1"] <= 1
        assert 0.99 < r["image_cos_min"] <= 1.0 + 1e-9  # Q8_0 mmproj against F16
        assert r["prefill_tps"] > 0 and r["decode_tps"] > 0 and r["encode_ms"] > 0
        assert r["bpw"] > 0 and r["mmproj_bytes"] > 0 and sum(r["tensor_types"].values()) > 0
        assert Path(r["model"]).is_file() and Path(r["mmproj"]).is_file()
        assert r["accuracy"] == 0.5
    assert rows["q8_0"]["top1"] >= rows["q3_k"]["top1"]
    assert report["evalset"]["positions"] > 10 and report["evalset"]["seeds"] == [0, 1]
    assert all(set(r["kl_seeds"]) == {"0", "1"} and r["kl_text_mean"] > 0 for r in rows.values())
    assert all(r["pareto"] for r in rows.values())  # smaller and lossier, one after the other
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["recipes"][0]["recipe"] == "q8_0"
    md = (tmp_path / "report.md").read_text()
    assert "| q4_k |" in md and "KL mean" in md and "KL seeds" in md
    assert report["heldout"]["pytorch_accuracy"] == 0.625 and "PyTorch 0.625" in md
    if variant == "Imp-v1.5-2B-Qwen1.5":  # the fallback is in the report, not silent
        assert "blk.1.ffn_down.weight" in md and "Q6_K -> **Q8_0**" in md
    with pytest.raises(OutputExists):
        compare_recipes(tiny_checkpoints[variant], ["q8_0"], tmp_path, evalset=quick)


# ---------------------------------------------------------------- the CLI and the CI gate

def test_cli_compare_against_committed_baseline(tiny_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = load_baseline(BASELINE)
    new = tmp_path / "new-baseline.json"
    rc = main(["recipes", "compare", str(tiny_checkpoints["Imp-v1.5-3B-Phi2"]), "--recipes", ",".join(committed["recipes"]),
               "--out", str(tmp_path / "cmp"), "--baseline", str(BASELINE), "--write-baseline", str(new),
               "--runs", "1", "--threads", "1", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    report = json.loads(out.out)
    assert [r["recipe"] for r in report["recipes"]] == list(committed["recipes"])
    for r in report["recipes"]:
        assert all(k in r for k in ROW_KEYS)
        assert isinstance(r["tensor_types"], dict)
    assert report["baseline"]["regressions"] == []
    fresh = load_baseline(new)
    assert list(fresh["recipes"]) == list(committed["recipes"])
    for name, row in committed["recipes"].items():  # same fixture, same quantizer: only metadata may move
        assert fresh["recipes"][name]["lm_bytes"] == pytest.approx(row["lm_bytes"], rel=0.01)


def test_cli_baseline_regression_exits_3(tiny_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict = {"schema": "imp-gguf/recipes-baseline/1", "tolerance": {"kl_mean_rel": 0.0, "kl_mean_abs": 0.0,
                                                                     "lm_bytes_rel": 0.0},
              "recipes": {"q4_k": {"kl_mean": 1e-9, "lm_bytes": 1000}}}
    path = tmp_path / "strict.json"
    path.write_text(json.dumps(strict))
    rc = main(["recipes", "compare", str(tiny_checkpoints["Imp-v1.5-3B-Phi2"]), "--recipes", "q4_k",
               "--out", str(tmp_path / "cmp"), "--baseline", str(path), "--runs", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 3  # a check that ran and failed
    last = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(last) == 1 and "q4_k" in last[0] and "kl_mean" in last[0] and "lm_bytes" in last[0]
    saved = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert len(saved["baseline"]["regressions"]) == 2  # the report records the failure too
