"""The five released checkpoints in their published form (full size, sparse data): they convert, with
sizes from the weights, defaults from the config classes that wrote them, 384 px images, and the
tokenizer file sets as shipped. Also the defaults tables against transformers' own config classes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from imp_gguf.cli.main import main
from imp_gguf.synthetic_checkpoints.published import RELEASES, make_published, published_config

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "published"

# release -> (arch, family, n_embd, n_layer, n_ff, n_head, n_head_kv, rows, rope dims, image px, tokens, aspect)
EXPECT = {
    "imp-v1-3b": ("phi2", "phi2", 2560, 32, 10240, 32, 32, 51200, 32, 384, 729, "square"),
    "Imp-v1.5-3B-Phi2": ("phi2", "phi2", 2560, 32, 10240, 32, 32, 51200, 32, 384, 729, "square"),
    "Imp-v1.5-3B-196": ("phi2", "phi2_msft", 2560, 32, 10240, 32, 32, 51200, 32, 196, 196, "square"),
    "Imp-v1.5-2B-Qwen1.5": ("qwen2", "qwen2", 2048, 24, 5504, 16, 16, 151936, 128, 384, 729, "square"),
    "Imp-v1.5-4B-Phi3": ("phi3", "phi3", 3072, 32, 8192, 32, 32, 32064, 96, 384, 729, "pad"),
}
PHI2_DEFAULTS = {"n_head": 32, "rotary_dim": 32, "n_ctx": 2048, "norm_eps": 1e-5, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {name: make_published(name, root / name) for name in RELEASES}


@pytest.mark.parametrize("name", ["imp-v1-3b", "Imp-v1.5-2B-Qwen1.5", "Imp-v1.5-4B-Phi3"])
def test_shipped_configs_are_the_published_ones(name):
    if not SHARED.is_dir():
        pytest.skip("the shared reference folder is not beside this checkout")
    shared = json.loads((SHARED / f"{name}.config.json").read_text())
    assert published_config(RELEASES[name]) == shared


def test_phi2_configs_carry_no_lm_sizes():
    """The form that broke three of five conversions: every Phi-2 value left to ImpConfig's defaults."""
    for name in ("imp-v1-3b", "Imp-v1.5-3B-Phi2", "Imp-v1.5-3B-196"):
        cfg = published_config(RELEASES[name])
        assert not {"n_embd", "hidden_size", "n_layer", "num_hidden_layers", "n_head", "num_attention_heads",
                    "rotary_dim", "partial_rotary_factor", "n_positions", "vocab_size", "layer_norm_epsilon"} & set(cfg)


def test_published_files_are_sparse_and_shaped(published):
    from imp_gguf.checkpoint import open_checkpoint

    for name, path in published.items():
        r = RELEASES[name]
        shards = sorted(path.glob("*.safetensors"))
        assert len(shards) == r.shards
        ck = open_checkpoint(path)
        assert {t.dtype for t in ck.tensors.values()} == {r.dtype}
        logical = sum(p.stat().st_size for p in shards)
        on_disk = sum(p.stat().st_blocks * 512 for p in shards)
        assert logical > 3e9 and on_disk < 50e6, f"{name}: {logical} bytes, {on_disk} on disk"


@pytest.mark.parametrize("name", list(EXPECT))
def test_dry_run_json(name, published, tmp_path, capsys):
    arch, family, n_embd, n_layer, n_ff, n_head, n_kv, rows, rope, px, tokens, aspect = EXPECT[name]
    assert main(["convert", str(published[name]), "--outdir", str(tmp_path), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["arch"], out["variant"], out["image_size"], out["image_tokens"]) == (arch, family, px, tokens)
    assert out["image_aspect_ratio"] == aspect
    hp = out["hparams"]
    assert (hp["n_embd"], hp["n_layer"], hp["n_ff"], hp["n_head"], hp["n_head_kv"], hp["n_vocab"], hp["rope_dims"]) == (
        n_embd, n_layer, n_ff, n_head, n_kv, rows, rope)
    assert hp["vision_blocks"] == 26 and hp["vision_n_embd"] == 1152 and hp["vision_head_count"] == 16
    if arch == "phi2":  # what the config left out is named, with the class it comes from
        assert {k: d["value"] for k, d in out["defaults"].items()} == PHI2_DEFAULTS
        assert {d["from"] for d in out["defaults"].values()} == {"Imp's ImpConfig (Phi-2 values)"}
    else:  # the 2B and 4B configs carry their sizes; the 2B has no vision_tower_config at all
        assert not {"n_head", "n_ctx", "rope_theta", "norm_eps"} & set(out["defaults"])
    if name == "Imp-v1.5-2B-Qwen1.5":
        assert hp["rope_theta"] == 1e6  # explicit in its config
        assert out["defaults"]["vision.image_size"]["value"] == 384


def test_full_f16_conversion_tensor_by_tensor(published, tmp_path):
    """imp-v1-3b as published (transformers-Phi names, no LM sizes, 384 px): every tensor and key checked."""
    import gguf

    from imp_gguf.checkpoint import open_checkpoint
    from imp_gguf.convert import convert

    src = published["imp-v1-3b"]
    r = convert(src, tmp_path, outtype="f16").to_dict()
    ck = open_checkpoint(src)
    lm, mm = gguf.GGUFReader(r["model"]), gguf.GGUFReader(r["mmproj"])

    def kv(reader, key):
        return reader.fields[key].contents()

    assert kv(lm, "general.architecture") == "phi2"
    assert (kv(lm, "phi2.embedding_length"), kv(lm, "phi2.block_count"), kv(lm, "phi2.attention.head_count"),
            kv(lm, "phi2.rope.dimension_count"), kv(lm, "phi2.feed_forward_length"),
            kv(lm, "phi2.context_length")) == (2560, 32, 32, 32, 10240, 2048)
    assert abs(kv(lm, "phi2.attention.layer_norm_epsilon") - 1e-5) < 1e-12
    assert len(kv(lm, "tokenizer.ggml.tokens")) == 51200
    assert kv(lm, "tokenizer.ggml.eos_token_id") == 50295
    assert kv(lm, "imp_gguf.config_defaults") == [
        "Imp's ImpConfig (Phi-2 values): n_head=32, rotary_dim=32, n_ctx=2048, rope_theta=10000.0, norm_eps=1e-05"]
    assert (kv(mm, "clip.vision.image_size"), kv(mm, "clip.vision.patch_size"), kv(mm, "clip.vision.block_count"),
            kv(mm, "clip.vision.feature_layer"), kv(mm, "imp_gguf.image_aspect_ratio")) == (384, 14, 26, [26], "square")
    # every source tensor lands once, with its shape and the dtype policy's type
    lm_src = {n: t for n, t in ck.tensors.items() if not n.startswith("model.vision_tower.")
              and not n.startswith("model.mm_projector.")}
    mm_src = {n: t for n, t in ck.tensors.items() if n not in lm_src}
    assert len(lm.tensors) == len(lm_src) == 3 + 32 * 14 + 2
    assert len(mm.tensors) == len(mm_src) == 3 + 26 * 16 + 4
    for reader in (lm, mm):
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            want = gguf.GGMLQuantizationType.F32 if len(shape) == 1 or t.name == "v.position_embd.weight" \
                else gguf.GGMLQuantizationType.F16
            assert t.tensor_type == want, t.name
            assert math.prod(shape) == int(t.n_elements)
    by_name = {t.name: t for t in lm.tensors}
    assert tuple(reversed(by_name["token_embd.weight"].shape.tolist())) == (51200, 2560)
    assert tuple(reversed(by_name["blk.31.ffn_up.weight"].shape.tolist())) == (10240, 2560)
    assert not np.any(by_name["blk.0.attn_q.weight"].data[:8])  # sparse zeros, carried through


# ---------------------------------------------------------------- tokenizers as shipped

def _vocab(path):
    from imp_gguf.convert import plan_conversion

    return plan_conversion(path, path.parent / "out-unused").vocab


def test_bpe_from_vocab_and_merges_alone(published):
    """3B-Phi2: vocab.json + merges.txt + added_tokens.json, no tokenizer.json; padded as llama.cpp pads."""
    assert not (published["Imp-v1.5-3B-Phi2"] / "tokenizer.json").exists()
    v = _vocab(published["Imp-v1.5-3B-Phi2"])
    assert v.model == "gpt2" and len(v.tokens) == 51200 and v.n_real == 50297
    assert (v.tokens[50256], v.tokens[50295], v.tokens[50296]) == ("<|endoftext|>", "</s>", "<image>")
    assert v.types[50296] == 3 and v.types[50260] == 4  # <image> control, whitespace user-defined
    assert v.tokens[50297] == "[PAD50297]" and set(v.types[50297:]) == {5}  # UNUSED, as convert_hf_to_gguf
    assert v.special["eos"] == v.special["eot"] == 50295
    lines = (published["Imp-v1.5-3B-Phi2"] / "merges.txt").read_text().splitlines()
    assert v.merges == lines[1:] and len(v.merges) > 500  # every merge, without the "#version" line


def test_both_kinds_present_picks_the_models_own(published):
    """4B: SentencePiece tokenizer.model wins over the stray Phi-2 vocab.json/merges.txt."""
    path = published["Imp-v1.5-4B-Phi3"]
    assert (path / "vocab.json").exists() and (path / "tokenizer.model").exists()
    v = _vocab(path)
    assert v.model == "llama" and len(v.tokens) == 32064 and v.n_real == 32012
    assert (v.tokens[32007], v.tokens[32011]) == ("<|end|>", "<image>")
    assert v.special["eos"] == 32007 and v.add_bos
    assert v.scores[32063] == -10000.0 and v.scores[32007] == -1000.0


def test_no_image_token_is_normal(published):
    """2B: added_tokens.json has only Qwen's three specials; no <image>, and that is fine."""
    v = _vocab(published["Imp-v1.5-2B-Qwen1.5"])
    assert "<image>" not in v.tokens and len(v.tokens) == 151936 and v.n_real == 151646
    assert v.special["eos"] == 151645 and v.pre == "qwen2"


# ---------------------------------------------------------------- defaults are the config classes' own

def test_defaults_tables_match_transformers_config_classes():
    """A default is the default of the class that wrote the config, read here from transformers itself."""
    from transformers import Phi3Config, PhiConfig, Qwen2Config

    from imp_gguf.converters.phi2 import PHI2_DEFAULTS as phi
    from imp_gguf.converters.phi3 import PHI3_DEFAULTS as phi3
    from imp_gguf.converters.qwen2 import QWEN2_DEFAULTS as qwen

    def rope(c, key):
        return (getattr(c, "rope_parameters", None) or {}).get(key, getattr(c, key, None))

    q, p3, p = Qwen2Config(), Phi3Config(), PhiConfig()
    for table in (qwen["qwen2"], qwen["imp_qwen2"]):
        assert table.values == {"n_head": q.num_attention_heads, "n_ctx": q.max_position_embeddings,
                                "rope_theta": rope(q, "rope_theta"), "norm_eps": q.rms_norm_eps}
    for table in (phi3["phi3"], phi3["imp_phi3"]):
        assert table.values == {"n_head": p3.num_attention_heads, "n_ctx": p3.max_position_embeddings,
                                "orig_ctx": p3.original_max_position_embeddings, "rope_theta": rope(p3, "rope_theta"),
                                "norm_eps": p3.rms_norm_eps, "partial_rotary_factor": rope(p3, "partial_rotary_factor")}
    assert phi["phi"].values == {"n_head": p.num_attention_heads, "partial_rotary_factor": rope(p, "partial_rotary_factor"),
                                 "norm_eps": p.layer_norm_eps, "n_ctx": p.max_position_embeddings,
                                 "rope_theta": rope(p, "rope_theta")}
    # Imp's own class carries Phi-2's values (microsoft/phi-2: 32 heads of 80, 32 rotary dims, 2048 positions)
    assert phi["imp"].values == PHI2_DEFAULTS


def test_qwen2_without_rope_theta_gets_qwen2configs_default(tiny_checkpoints, tmp_path):
    """Not Imp-2B's 1e6: a Qwen2-layout config that omits rope_theta means Qwen2Config's 10000."""
    import shutil

    from imp_gguf.convert import plan_conversion

    ck = Path(shutil.copytree(tiny_checkpoints["Imp-v1.5-2B-Qwen1.5"], tmp_path / "q"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg.pop("rope_theta", None)
    (cfg.get("rope_parameters") or {}).pop("rope_theta", None)
    (ck / "config.json").write_text(json.dumps(cfg))
    plan = plan_conversion(ck, tmp_path / "out")
    assert plan.hp.rope_theta == 10000.0
    assert plan.defaults["rope_theta"].to_dict() == {"value": 10000.0, "from": "Imp's ImpQwen2Config (= Qwen2Config)"}


def test_published_form_tiny_converts_like_its_full_config(tiny_checkpoints, tmp_path):
    """The tiny 3B-196 omits what the real config omits; written out in full (the values the fixture was
    built with), it must give the same hyper-parameters: the defaults are right, not merely present."""
    import shutil

    from imp_gguf.convert import plan_conversion

    ck = Path(shutil.copytree(tiny_checkpoints["Imp-v1.5-3B-196"], tmp_path / "full"))
    stripped = plan_conversion(tiny_checkpoints["Imp-v1.5-3B-196"], tmp_path / "a")
    assert set(stripped.defaults) == {"rotary_dim", "n_ctx", "norm_eps", "rope_theta"}  # n_head kept: 32 cannot fit
    cfg = json.loads((ck / "config.json").read_text())
    cfg |= {"n_embd": 256, "n_layer": 2, "n_inner": 1024, "n_head": 4, "rotary_dim": 32, "n_positions": 2048,
            "layer_norm_epsilon": 1e-5, "vocab_size": stripped.hp.n_vocab}
    (ck / "config.json").write_text(json.dumps(cfg))
    full = plan_conversion(ck, tmp_path / "b")
    assert set(full.defaults) == {"rope_theta"}  # phi-msft configs have no key for it: 10000 in its code
    assert (full.hp.n_embd, full.hp.n_layer, full.hp.n_ff, full.hp.n_head, full.hp.rope_dims, full.hp.n_ctx,
            full.hp.norm_eps, full.hp.rope_theta) == (stripped.hp.n_embd, stripped.hp.n_layer, stripped.hp.n_ff,
                                                      stripped.hp.n_head, stripped.hp.rope_dims, stripped.hp.n_ctx,
                                                      stripped.hp.norm_eps, stripped.hp.rope_theta)


def test_fixtures_published_command(tmp_path, capsys):
    out = tmp_path / "Imp-v1.5-3B-196"
    assert main(["fixtures", "published", "Imp-v1.5-3B-196", str(out)]) == 0
    assert (out / "config.json").is_file() and len(list(out.glob("*.safetensors"))) == 7
    assert main(["fixtures", "published", "Imp-v1.5-3B-196", str(out)]) == 2  # exists, no --force
    assert main(["fixtures", "published", "Imp-9B", str(tmp_path / "x")]) == 2
    assert "unknown release" in capsys.readouterr().err
