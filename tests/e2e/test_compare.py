"""Recipe comparison: fidelity ordering on every fixture variant, the report's fields and files, and
the baseline gate CI runs (bench/baselines/recipes-tiny-phi2.json). Speed is reported, never timed here.
The metrics and the baseline checks alone are in tests/unit/test_compare.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imp_gguf.cli.main import main
from imp_gguf.errors import OutputExists
from imp_gguf.quant.compare import compare_recipes, load_baseline
from imp_gguf.quant.evalset import build_evalset
from imp_gguf.synthetic_checkpoints.tiny import VARIANTS

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "bench" / "baselines" / "recipes-tiny-phi2.json"
ROW_KEYS = ("recipe", "lm_bytes", "mmproj_bytes", "bpw", "kl_mean", "kl_p99", "top1", "image_cos_min",
            "prefill_tps", "decode_tps", "encode_ms", "tensor_types")


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

    monkeypatch.setattr("imp_gguf.tiny_imp.evaluate.is_tiny_imp", lambda source: True)  # where it is read
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
