"""The bundled tiny Imp really sees, in PyTorch and through llama.cpp after conversion.

Uses the committed checkpoint (imp_gguf/data/tiny-imp/); never trains, except the slow-marked
determinism check of the training script.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from imp_gguf.tiny_imp import CHECKPOINT_NAME, DATA_DIR

if not (DATA_DIR / CHECKPOINT_NAME / "config.json").is_file():
    # Issue 7 is open: training on 2 shared cores did not reach the accuracy floor this session.
    pytest.skip("the trained tiny Imp checkpoint is not committed yet", allow_module_level=True)

from imp_gguf.tiny_imp import default_checkpoint, demo_items  # noqa: E402
from imp_gguf.tiny_imp import data as D  # noqa: E402
from imp_gguf.tiny_imp.evaluate import (gguf_for_recipe, heldout_set, is_correct, llama_predictions,
                                        pytorch_predictions, recipe_available)

N_HELDOUT = 200
SEED = 1
TOLERANCE = 0.05  # llama.cpp vs PyTorch, absolute accuracy
FLOOR = 0.80  # a clear margin above chance (about 0.3 over the five question kinds)
Q4K = "q4_k_m"


def _acc(preds: list[str], items: list) -> float:
    return sum(is_correct(p, it[2]) for p, it in zip(preds, items)) / len(items)


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
    out = tmp_path_factory.mktemp("tiny-imp-gguf")
    recipes = ["f16"] + ([Q4K] if recipe_available(Q4K) else [])
    return {r: gguf_for_recipe(ckpt, out, r) for r in recipes}


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
    acc = _acc(pytorch_preds, items)
    assert acc >= FLOOR, f"PyTorch held-out accuracy {acc:.3f}"
    for kind in D.KINDS:  # every question kind is learnt, not just the easy ones
        sub = [(p, it) for p, it, k in zip(pytorch_preds, items, _kinds()) if k == kind]
        kacc = sum(is_correct(p, it[2]) for p, it in sub) / len(sub)
        assert kacc >= 0.6, f"{kind}: {kacc:.2f}"


def _kinds() -> list[str]:
    return [D.KINDS[i % len(D.KINDS)] for i in range(N_HELDOUT)]


def test_f16_gguf_matches_pytorch(llama_preds: dict[str, list[str]], pytorch_preds: list[str], items: list) -> None:
    pt, f16 = _acc(pytorch_preds, items), _acc(llama_preds["f16"], items)
    assert f16 >= FLOOR, f"llama.cpp F16 accuracy {f16:.3f}"
    assert abs(f16 - pt) <= TOLERANCE, f"F16 {f16:.3f} vs PyTorch {pt:.3f}"
    same = sum(D.normalise(a) == D.normalise(b) for a, b in zip(llama_preds["f16"], pytorch_preds)) / len(items)
    assert same >= 0.95, f"F16 and PyTorch give the same answer on only {same:.1%} of the questions"


def test_q4_k_gguf_matches_pytorch(llama_preds: dict[str, list[str]], pytorch_preds: list[str], items: list) -> None:
    if Q4K not in llama_preds:
        pytest.skip(f"no {Q4K} quantizer available")
    pt, q4 = _acc(pytorch_preds, items), _acc(llama_preds[Q4K], items)
    assert q4 >= FLOOR, f"llama.cpp {Q4K} accuracy {q4:.3f}"
    assert abs(q4 - pt) <= TOLERANCE, f"{Q4K} {q4:.3f} vs PyTorch {pt:.3f}"


# ---------------------------------------------------------------- bundled demo images

def test_demo_images_are_held_out_and_golden() -> None:
    demos = demo_items()
    assert len(demos) >= 4
    for d in demos:
        assert d["image"].is_file() and d["image"].suffix == ".png"
        assert d["expect"] in D.normalise(d["answer"]).split()
        assert D.normalise(d["answer"]) in {D.normalise(a) for a in D.all_answers()}
    assert {d["kind"] for d in demos} == set(D.KINDS)


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


# ---------------------------------------------------------------- the training script

@pytest.mark.slow
def test_training_runs_and_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.train import main, train

    kw = dict(seed=3, steps=4, batch_size=4, eval_n=0, log_every=0, log=lambda s: None)
    a = train(None, **kw)["losses"]
    b = train(None, **kw)["losses"]
    assert a == b and len(a) == 4 and all(math.isfinite(x) for x in a)
    c = train(None, **dict(kw, seed=4))["losses"]
    assert c != a
    # The command line writes a checkpoint the converter accepts.
    out = tmp_path / "Tiny-Imp-v1.5-56px"
    assert main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--eval-n", "0", "--log-every", "0"]) == 0
    r = convert(out, tmp_path / "gguf", outtype="f16", force=True)
    assert Path(r["model"]).is_file() and Path(r["mmproj"]).is_file()
