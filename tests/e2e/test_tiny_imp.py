"""The bundled tiny Imp really sees, in PyTorch and through llama.cpp after conversion.

Uses the committed checkpoint (imp_gguf/data/tiny-imp/); never trains, except the slow-marked
determinism check of the training script.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from imp_gguf.tiny_imp.bundled import default_checkpoint, demo_items, is_tiny_imp
from imp_gguf.tiny_imp import data as D
from imp_gguf.tiny_imp.evaluate import (N_HELDOUT, accuracy, heldout_set, is_correct, llama_predictions,
                                        pytorch_predictions, recipe_ggufs, score)

SEED = 1
TOLERANCE = 0.05  # llama.cpp vs PyTorch, absolute accuracy
FLOOR = 0.80  # a clear margin above chance (about 0.3 over the five question kinds)
Q4K = "q4_k"


@pytest.fixture(scope="module")
def ckpt() -> Path:
    return default_checkpoint()


@pytest.fixture(scope="module")
def items() -> list:
    return heldout_set(N_HELDOUT, SEED)


@pytest.fixture(scope="module")
def pytorch_preds(ckpt: Path, items: list) -> list[str]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return pytorch_predictions(ckpt, items)


@pytest.fixture(scope="module")
def ggufs(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    pytest.importorskip("llama_cpp")
    return recipe_ggufs(ckpt, tmp_path_factory.mktemp("tiny-imp-gguf"), ["f16", Q4K])


@pytest.fixture(scope="module")
def llama_preds(ggufs: dict[str, dict], items: list) -> dict[str, list[str]]:
    return {r: llama_predictions(g["model"], g["mmproj"], items) for r, g in ggufs.items()}


# ---------------------------------------------------------------- the committed checkpoint

def test_checkpoint_is_imp_layout_a(ckpt: Path) -> None:
    from imp_gguf.checkpoint import open_checkpoint

    cfg = json.loads((ckpt / "config.json").read_text())
    assert ckpt.name == "Tiny-Imp-v1.5-56px"
    assert cfg["model_type"] == "imp" and cfg["architectures"] == ["ImpForCausalLM"]
    assert cfg["n_embd"] == 256 and 2 <= cfg["n_layer"] <= 4 and cfg["n_inner"] is None
    assert cfg["rotary_dim"] < cfg["n_embd"] // cfg["n_head"]  # partial rotary, like Phi-2
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_vision_select_layer"] == -2
    vtc = cfg["vision_tower_config"]
    assert vtc["hidden_act"] == "gelu_pytorch_tanh" and vtc["intermediate_size"] != vtc["hidden_size"]
    assert vtc["image_size"] == 56 and vtc["patch_size"] == 14

    c = open_checkpoint(ckpt)
    names = set(c.tensors)
    vp = "transformer.vision_tower.vision_tower.vision_model."
    blocks = {int(n[len(vp):].split(".")[2]) for n in names if n.startswith(vp + "encoder.layers.")}
    assert blocks == set(range(vtc["num_hidden_layers"] - 1))  # Imp's surgery: last block dropped
    assert not any(n.startswith(vp + "post_layernorm") or n.startswith(vp + "head.") for n in names)
    assert c.tensors[vp + "embeddings.position_embedding.weight"].shape == (16, vtc["hidden_size"])
    assert {"transformer.embd.wte.weight", "lm_head.ln.weight", "lm_head.linear.bias",
            "transformer.h.0.mixer.Wqkv.weight", "transformer.mm_projector.2.bias"} <= names
    assert not any(n.startswith("model.") for n in names)
    assert all(t.dtype == "BF16" for t in c.tensors.values())
    assert (ckpt / "model.safetensors.index.json").is_file() and len(c.weight_files) >= 2

    tok = json.loads((ckpt / "tokenizer.json").read_text())
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    assert cfg["image_token_index"] == added["<image>"] == added["</s>"] + 1
    assert sum(f.stat().st_size for f in ckpt.iterdir()) < 20_000_000


def test_checkpoint_records_the_default_training_run(ckpt: Path) -> None:
    """`python -m imp_gguf.tiny_imp.train --out DIR` with no flags is how the committed weights were made."""
    pytest.importorskip("torch")
    from imp_gguf.tiny_imp.model import TinySpec
    from imp_gguf.tiny_imp.train import DEFAULTS

    cfg = json.loads((ckpt / "config.json").read_text())
    run = cfg["tiny_imp"]
    assert run["seed"] == 0 and run["threads"] == 1
    for key in ("vision_steps", "steps", "images_per_step", "lr"):
        assert run[key] == DEFAULTS[key], key
    assert cfg["n_layer"] == TinySpec().dims.n_layer and cfg["n_embd"] == TinySpec().dims.n_embd


def test_llama_cpp_tokenizes_like_the_checkpoint(ckpt: Path, ggufs: dict[str, dict]) -> None:
    """Training split the prompt around <image> and tokenized each side; llama.cpp must agree."""
    from imp_gguf.runtime.bindings import Session
    from imp_gguf.tiny_imp.model import TextCodec

    codec = TextCodec(ckpt)
    with Session(ggufs["f16"]["model"]) as s:
        for q in D.all_questions()[:6]:
            before, after = codec.prompt(q)
            text = s.chat_prompt(q)
            head, tail = text.split("<__media__>")
            assert s.tokenize(head) == before
            assert s.tokenize(tail) == after
        for a in D.all_answers()[:12]:
            assert s.tokenize(" " + a + "</s>") == codec.answer(a)


# ---------------------------------------------------------------- accuracy

def test_pytorch_model_sees(pytorch_preds: list[str], items: list) -> None:
    result = score(pytorch_preds, items)
    assert result.accuracy >= FLOOR, f"PyTorch held-out accuracy {result.accuracy:.3f}"
    assert set(result.by_kind) == set(D.KINDS)
    for kind, kacc in result.by_kind.items():  # every question kind is learnt, not just the easy ones
        assert kacc >= 0.6, f"{kind}: {kacc:.2f}"


def test_f16_gguf_matches_pytorch(llama_preds: dict[str, list[str]], pytorch_preds: list[str], items: list) -> None:
    pt, f16 = accuracy(pytorch_preds, items), accuracy(llama_preds["f16"], items)
    assert f16 >= FLOOR, f"llama.cpp F16 accuracy {f16:.3f}"
    assert abs(f16 - pt) <= TOLERANCE, f"F16 {f16:.3f} vs PyTorch {pt:.3f}"
    same = sum(D.normalise(a) == D.normalise(b) for a, b in zip(llama_preds["f16"], pytorch_preds)) / len(items)
    assert same >= 0.95, f"F16 and PyTorch give the same answer on only {same:.1%} of the questions"


def test_q4_k_gguf_matches_pytorch(llama_preds: dict[str, list[str]], pytorch_preds: list[str], items: list) -> None:
    pt, q4 = accuracy(pytorch_preds, items), accuracy(llama_preds[Q4K], items)
    assert q4 >= FLOOR, f"llama.cpp {Q4K} accuracy {q4:.3f}"
    assert abs(q4 - pt) <= TOLERANCE, f"{Q4K} {q4:.3f} vs PyTorch {pt:.3f}"


# ---------------------------------------------------------------- bundled demo images

def test_demo_images_answered_by_llama_cpp(ggufs: dict[str, dict]) -> None:
    demos = demo_items()
    g = ggufs["f16"]
    preds = llama_predictions(g["model"], g["mmproj"], [(d["image"], d["question"], d["answer"]) for d in demos])
    for d, p in zip(demos, preds):
        assert d["expect"] in D.normalise(p).split(), f"{d['image'].name}: {d['question']!r} -> {p!r}"


def test_demo_images_answered_by_pytorch(ckpt: Path) -> None:
    pytest.importorskip("torch")
    demos = demo_items()
    preds = pytorch_predictions(ckpt, [(d["image"], d["question"], d["answer"]) for d in demos])
    for d, p in zip(demos, preds):
        assert is_correct(p, d["answer"]), f"{d['image'].name}: {d['question']!r} -> {p!r}"


def _mtmd_cli_golden(binary: Path, ggufs: dict[str, dict], runner=None) -> None:
    """As llama.cpp's tools/mtmd/tests.sh: run the CLI greedily on fixed images and look for the
    expected word in what it prints."""
    from imp_gguf.runtime.cli_backend import run_mtmd_cli

    g = ggufs[Q4K]
    for d in demo_items()[:4]:
        out = run_mtmd_cli(binary, Path(g["model"]), Path(g["mmproj"]), d["image"], d["question"],
                           max_tokens=16, threads=2, runner=runner)
        assert d["expect"] in D.normalise(out).split(), f"{d['image'].name}: {d['question']!r} -> {out!r}"


@pytest.mark.slow
def test_demo_images_golden_through_host_mtmd_cli(host_tools: dict[str, Path], ggufs: dict[str, dict]) -> None:
    _mtmd_cli_golden(host_tools["llama-mtmd-cli"], ggufs)


@pytest.mark.slow
@pytest.mark.cross
def test_demo_images_golden_through_arm64_mtmd_cli_under_qemu(arm64_tools: dict[str, Path],
                                                              ggufs: dict[str, dict]) -> None:
    """The phone build (NEON/dotprod/i8mm kernels on Q4_K) still sees."""
    from imp_gguf.runtime.runner import QemuRunner

    _mtmd_cli_golden(arm64_tools["llama-mtmd-cli"], ggufs, runner=QemuRunner())


def test_demo_command_answers_correctly_at_q4_k(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The README's first command, end to end."""
    from imp_gguf.cli.main import main

    assert main(["demo", "--outdir", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["recipe"] == Q4K and Path(rep["model"]).name == "Tiny-Imp-v1.5-2.9M-56px-Q4_K_M.gguf"
    assert Path(rep["mmproj"]).is_file() and len(rep["answers"]) == 5
    assert {Path(a["image"]).name for a in rep["answers"]} == {d["image"].name for d in demo_items()}
    assert rep["correct"] == 5, rep["answers"]


# ---------------------------------------------------------------- `imp-gguf eval` and the recipe comparison

def test_eval_command_reports_pytorch_and_recipes(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    from imp_gguf.cli.main import main

    plot = tmp_path / "acc.png"
    rc = main(["eval", "-r", "f16,q3_k", "-n", "25", "--json", "--plot", str(plot), "--outdir", str(tmp_path / "g")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 25 and rep["checkpoint"] == str(ckpt)
    assert list(rep["accuracy"]) == ["pytorch", "f16", "q3_k"]
    assert set(rep["by_kind"]["q3_k"]) == set(D.KINDS)
    assert rep["accuracy"]["f16"] >= 0.6 and rep["agreement_with_pytorch"]["f16"] >= 0.9
    assert rep["files"]["q3_k"]["lm_bytes"] < rep["files"]["f16"]["lm_bytes"]
    assert Path(rep["files"]["q3_k"]["model"]).is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same plot path again is refused without --force, before any work.
    assert main(["eval", "-n", "1", "--plot", str(plot), "--no-pytorch"]) == 2


def test_eval_refuses_checkpoints_without_the_task(tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from imp_gguf.cli.main import main

    fixture = tiny_checkpoints["Imp-v1.5-3B-196"]
    assert not is_tiny_imp(fixture)
    assert main(["eval", str(fixture), "--no-pytorch", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "not a tiny Imp" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(fixture.parent / "nowhere"), "--no-pytorch"]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and len(err.strip().splitlines()) == 1


def test_recipe_comparison_gates_accuracy_on_the_committed_baseline(ckpt: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """What CI compares recipes with: accuracy next to KL and size, against the shipped baseline
    (imp_gguf/data/measured/recipes-tiny-imp.json, what `recipes list` shows)."""
    pytest.importorskip("torch")
    from imp_gguf.cli.main import main
    from imp_gguf.quant.compare import load_baseline

    from imp_gguf.quant.catalog import BASELINE as baseline
    assert all("accuracy" in r for r in load_baseline(baseline)["recipes"].values())
    rc = main(["recipes", "compare", str(ckpt), "--recipes", "q8_0,q4_k,q3_k", "--out", str(tmp_path / "cmp"),
               "--baseline", str(baseline), "--runs", "1", "--threads", "1", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    rep = json.loads(out.out)
    assert rep["baseline"]["regressions"] == []
    accs = {r["recipe"]: r["accuracy"] for r in rep["recipes"]}
    assert set(accs) == {"q8_0", "q4_k", "q3_k"} and min(accs.values()) >= FLOOR
    assert rep["heldout"]["n"] == N_HELDOUT and rep["heldout"]["pytorch_accuracy"] >= FLOOR
    assert abs(accs["q4_k"] - rep["heldout"]["pytorch_accuracy"]) <= TOLERANCE
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "Held-out accuracy" in md and f"PyTorch {rep['heldout']['pytorch_accuracy']:.3f}" in md


# ---------------------------------------------------------------- the training script

@pytest.mark.slow
def test_training_runs_and_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.train import main, train

    kw = dict(seed=3, vision_steps=3, steps=4, images_per_step=2, eval_n=0, log_every=0, log=lambda s: None)
    ra, rb = train(None, **kw), train(None, **kw)
    a = ra["vision_losses"] + ra["losses"]
    assert a == rb["vision_losses"] + rb["losses"]  # same seed, same losses, bit for bit
    assert len(a) == 7 and all(math.isfinite(x) for x in a)
    rc = train(None, **dict(kw, seed=4))
    assert rc["vision_losses"] + rc["losses"] != a
    # The command line writes a checkpoint the converter accepts.
    out = tmp_path / "Tiny-Imp-v1.5-56px"
    assert main(["--out", str(out), "--vision-steps", "2", "--steps", "2", "--images-per-step", "1",
                 "--eval-n", "0", "--log-every", "0"]) == 0
    r = convert(out, tmp_path / "gguf", outtype="f16", force=True).to_dict()
    assert Path(r["model"]).is_file() and Path(r["mmproj"]).is_file()
