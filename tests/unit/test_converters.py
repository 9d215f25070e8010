"""Each converter on its own, from tensor shapes only (no files, no torch): hyper-parameters from the
weights, the config class's defaults where the config is silent, contradictions refused, and the
tensor plan in gguf-py's names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gguf
import pytest

from imp_gguf.converters.registry import FAMILIES, detect_family
from imp_gguf.converters.base import LMHparams
from imp_gguf.converters.phi2 import Phi2
from imp_gguf.converters.phi2_msft import Phi2Msft
from imp_gguf.converters.phi3 import Phi3
from imp_gguf.converters.qwen2 import Qwen2
from imp_gguf.converters.siglip import FEATURE_LAYER_KEY, VISION, add_mmproj_kv, plan as plan_vision, vision_hparams
from imp_gguf.errors import BadInput


def hp(arch: str, **kw: Any) -> LMHparams:
    base = dict(arch=arch, n_vocab=1000, n_embd=2560, n_ff=10240, n_layer=2, n_head=32, n_head_kv=32, n_ctx=2048,
                rope_dims=32, rope_theta=10000.0, norm_eps=1e-5)
    return LMHparams(**(base | kw))


def tensors_for(family: Any, h: LMHparams) -> dict[str, Any]:
    """The checkpoint the family's own table describes: name -> an object with a shape."""
    return {src: SimpleNamespace(shape=shape) for rule in family.rules for src, _dst, shape in rule.expand(h)}


def gguf_name(tensor: gguf.MODEL_TENSOR, bid: int | None = None, kind: str = "weight") -> str:
    name = gguf.TENSOR_NAMES[tensor]
    return (name.format(bid=bid) if bid is not None else name) + "." + kind


# ---------------------------------------------------------------- detection

def test_families_are_listed_by_name() -> None:
    assert list(FAMILIES) == ["phi2_msft", "phi2", "phi3", "qwen2"]
    assert all(FAMILIES[name].name == name for name in FAMILIES)


@pytest.mark.parametrize("family,model_type", [(Phi2Msft, "imp"), (Phi2, "imp"), (Qwen2, "imp_qwen2"), (Phi3, "imp_phi3")])
def test_layout_from_tensor_names(family: Any, model_type: str) -> None:
    names = set(tensors_for(family, hp(family.arch)))
    assert detect_family({"model_type": model_type}, names) is family


def test_model_type_must_agree_with_the_tensors() -> None:
    names = set(tensors_for(Qwen2, hp("qwen2")))
    with pytest.raises(BadInput, match="does not match the tensors"):
        detect_family({"model_type": "imp"}, names)
    with pytest.raises(BadInput, match="unknown model_type"):
        detect_family({"model_type": "llama"}, names)
    with pytest.raises(BadInput, match="no model_type"):
        detect_family({}, names)


# ---------------------------------------------------------------- hyper-parameters

@pytest.mark.parametrize("family", [Phi2Msft, Phi2])
def test_phi2_sizes_from_weights_rest_from_imp_defaults(family: Any) -> None:
    want = hp("phi2", n_layer=3)
    got = family.hparams({"model_type": "imp"}, tensors_for(family, want))
    assert (got.n_vocab, got.n_embd, got.n_ff, got.n_layer) == (1000, 2560, 10240, 3)
    assert (got.n_head, got.rope_dims, got.n_ctx, got.norm_eps, got.rope_theta) == (32, 32, 2048, 1e-5, 10000.0)
    assert set(got.defaults) == {"n_head", "rotary_dim", "norm_eps", "n_ctx", "rope_theta"}
    assert "ImpConfig" in got.defaults_from


def test_phi2_config_values_win_over_defaults() -> None:
    cfg = {"model_type": "phi", "num_attention_heads": 20, "partial_rotary_factor": 0.25, "layer_norm_eps": 1e-6,
           "max_position_embeddings": 4096, "rope_theta": 5e5}
    got = Phi2.hparams(cfg, tensors_for(Phi2, hp("phi2")))
    assert (got.n_head, got.rope_dims, got.n_ctx, got.norm_eps, got.rope_theta) == (20, 32, 4096, 1e-6, 5e5)
    assert got.defaults == {}


def test_a_config_size_that_contradicts_the_weights_is_refused() -> None:
    with pytest.raises(BadInput, match="hidden_size is 2048 but the weights have 2560"):
        Phi2.hparams({"model_type": "imp", "hidden_size": 2048}, tensors_for(Phi2, hp("phi2")))
    with pytest.raises(BadInput, match="num_hidden_layers is 5 but the weights have 2 blocks"):
        Qwen2.hparams({"model_type": "qwen2", "num_attention_heads": 16, "num_hidden_layers": 5},
                      tensors_for(Qwen2, hp("qwen2", n_embd=2048, n_ff=5504, n_head=16, n_head_kv=16)))


def test_phi2_rotary_dims_must_fit_the_heads() -> None:
    small = hp("phi2", n_embd=256, n_ff=1024)  # 32 heads of 8: Imp's 32 rotary dims do not fit
    with pytest.raises(BadInput, match="rotary dimensions do not fit heads of 8"):
        Phi2Msft.hparams({"model_type": "imp"}, tensors_for(Phi2Msft, small))


def test_qwen2_key_value_heads_from_the_key_rows_and_rope_base_default() -> None:
    want = hp("qwen2", n_embd=2048, n_ff=5504, n_head=16, n_head_kv=4, rope_dims=128)
    got = Qwen2.hparams({"model_type": "imp_qwen2", "num_attention_heads": 16}, tensors_for(Qwen2, want))
    assert (got.n_head, got.n_head_kv, got.rope_dims, got.n_ff) == (16, 4, 128, 5504)
    assert got.rope_theta == 10000.0 and got.defaults["rope_theta"] == 10000.0  # Qwen2Config's, recorded
    explicit = Qwen2.hparams({"model_type": "imp_qwen2", "num_attention_heads": 16, "rope_theta": 1e6},
                             tensors_for(Qwen2, want))
    assert explicit.rope_theta == 1e6 and "rope_theta" not in explicit.defaults


def test_phi3_fused_shapes_give_ffn_and_kv_heads() -> None:
    want = hp("phi3", n_embd=3072, n_ff=8192, n_head=32, n_head_kv=32, rope_dims=96,
              extra={"orig_ctx": 4096, "sliding_window": 0})
    got = Phi3.hparams({"model_type": "imp_phi3"}, tensors_for(Phi3, want))
    assert (got.n_ff, got.n_head_kv, got.rope_dims, got.n_ctx) == (8192, 32, 96, 4096)
    assert got.extra == {"orig_ctx": 4096, "sliding_window": 0}


# ---------------------------------------------------------------- tensor plans

def test_plan_uses_gguf_py_names() -> None:
    h = hp("phi2")
    rows = dict((src, dst) for src, dst, _ in Phi2Msft.plan(h, tensors_for(Phi2Msft, h)))
    assert rows["transformer.h.1.mixer.Wqkv.bias"] == gguf_name(gguf.MODEL_TENSOR.ATTN_QKV, 1, "bias")
    assert rows["lm_head.linear.weight"] == gguf_name(gguf.MODEL_TENSOR.OUTPUT)
    rows = dict((src, dst) for src, dst, _ in Phi2.plan(h, tensors_for(Phi2, h)))
    assert rows["model.layers.0.self_attn.dense.weight"] == "blk.0.attn_output.weight"
    assert rows["model.layers.1.self_attn.k_proj.bias"] == "blk.1.attn_k.bias"


def test_plan_refuses_missing_unexpected_and_misshaped_tensors() -> None:
    h = hp("phi2")
    ts = tensors_for(Phi2, h)
    with pytest.raises(BadInput, match="missing tensor 'model.layers.1.mlp.fc2.bias'"):
        Phi2.plan(h, {k: v for k, v in ts.items() if k != "model.layers.1.mlp.fc2.bias"})
    with pytest.raises(BadInput, match="unexpected tensor 'model.layers.0.extra.weight'"):
        Phi2.plan(h, ts | {"model.layers.0.extra.weight": SimpleNamespace(shape=(1,))})
    with pytest.raises(BadInput, match=r"has shape \[5\], config says \[2560\]"):
        Phi2.plan(h, ts | {"model.final_layernorm.bias": SimpleNamespace(shape=(5,))})
    # ignored: rotary caches; vision tower and projector belong to the mmproj plan
    Phi2.plan(h, ts | {"model.layers.0.self_attn.rotary_emb.inv_freq": SimpleNamespace(shape=(16,)),
                       "model.mm_projector.0.weight": SimpleNamespace(shape=(2560, 1152))})


def test_qwen2_output_is_optional() -> None:
    h = hp("qwen2", n_embd=2048, n_ff=5504, n_head=16, n_head_kv=16)
    ts = tensors_for(Qwen2, h)
    ts.pop("lm_head.weight")
    assert "output.weight" not in {dst for _, dst, _ in Qwen2.plan(h, ts)}


# ---------------------------------------------------------------- the mmproj

def so400m(prefix: str, stored: int = 26, lm_width: int = 2560) -> dict[str, Any]:
    vp = prefix + VISION
    D, F = 1152, 4304
    ts = {vp + "embeddings.patch_embedding.weight": (D, 3, 14, 14), vp + "embeddings.patch_embedding.bias": (D,),
          vp + "embeddings.position_embedding.weight": (729, D)}
    for b in range(stored):
        for name, shape in (("layer_norm1", (D,)), ("layer_norm2", (D,)), ("self_attn.q_proj", (D, D)),
                            ("self_attn.k_proj", (D, D)), ("self_attn.v_proj", (D, D)),
                            ("self_attn.out_proj", (D, D)), ("mlp.fc1", (F, D)), ("mlp.fc2", (D, F))):
            ts[f"{vp}encoder.layers.{b}.{name}.weight"] = shape
            ts[f"{vp}encoder.layers.{b}.{name}.bias"] = shape[:1]
    ts |= {prefix + "mm_projector.0.weight": (lm_width, D), prefix + "mm_projector.0.bias": (lm_width,),
           prefix + "mm_projector.2.weight": (lm_width, lm_width), prefix + "mm_projector.2.bias": (lm_width,)}
    return {k: SimpleNamespace(shape=v) for k, v in ts.items()}


def test_siglip_defaults_run_blocks_and_names() -> None:
    ts = so400m("model.")
    vh = vision_hparams({"model_type": "imp_qwen2"}, ts, "model.", 2560)
    assert (vh.image_size, vh.grid, vh.n_head, vh.original_blocks, vh.run_blocks) == (384, 27, 16, 27, 26)
    assert vh.defaults["vision.image_size"] == 384 and vh.aspect == "square"
    rows = {src: dst for src, dst, _ in plan_vision(vh, ts, "model.")}
    assert rows["model." + VISION + "encoder.layers.25.self_attn.out_proj.bias"] == "v.blk.25.attn_out.bias"
    assert rows["model." + VISION + "embeddings.patch_embedding.weight"] == "v.patch_embd.weight"
    assert rows["model.mm_projector.2.weight"] == "mm.2.weight"


def test_siglip_refuses_too_few_blocks_and_a_wrong_projector_width() -> None:
    with pytest.raises(BadInput, match="stores 25 blocks but Imp runs 26"):
        vision_hparams({}, so400m("model.", stored=25), "model.", 2560)
    with pytest.raises(BadInput, match="projector output width 2048 does not match the language model width 2560"):
        vision_hparams({}, so400m("model.", lm_width=2048), "model.", 2560)
    with pytest.raises(BadInput, match="image_size 400 makes a 28x28 grid"):
        vision_hparams({"vision_tower_config": {"image_size": 400}}, so400m("model."), "model.", 2560)


def test_mmproj_keys_from_gguf_py_and_the_one_it_lacks() -> None:
    vh = vision_hparams({"image_aspect_ratio": "pad"}, so400m("model."), "model.", 2560)
    w = gguf.GGUFWriter(path=None, arch="clip")
    add_mmproj_kv(w, vh)
    kv = {k: v.value for k, v in w.kv_data[0].items()}
    assert not hasattr(gguf.Keys.ClipVision, "FEATURE_LAYER")  # else use gguf-py's name
    assert kv[FEATURE_LAYER_KEY] == [26] and kv[gguf.Keys.ClipVision.BLOCK_COUNT] == 26
    assert kv[gguf.Keys.ClipVision.IMAGE_SIZE] == 384 and kv[gguf.Keys.Clip.PROJECTOR_TYPE] == "mlp"
    assert kv[gguf.Keys.ClipVision.USE_GELU] is True and kv["imp_gguf.image_aspect_ratio"] == "pad"
