"""Quantization recipes: files that match their recipe (the registry and the rules alone are in
tests/unit/test_recipes.py).

Every quantized file is read back and each tensor's type is compared with expected_types, which
mirrors llama.cpp's mixture and shape fallbacks (Qwen's ffn_down of 352 columns, like the real 5504,
and SigLIP's FFN of 344, like the real 4304, exercise them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imp_gguf.cli.main import main
from imp_gguf.errors import OutputExists
from imp_gguf.gguf_info import read_gguf_meta, summary, tensor_table
from imp_gguf.quant.quantize import apply_recipe, convert_and_quantize
from imp_gguf.quant.rules import expected_types
from imp_gguf.quant.recipes import list_recipes, load_recipe
from imp_gguf.quant.recipes import FTYPE_BASE, TENSOR_TYPES, ftype_id, ggml_type_id
from imp_gguf.synthetic_checkpoints.tiny import VARIANTS, dims_with, make_checkpoint

from tests.unit.test_recipes import REQUIRED


# ---------------------------------------------------------------- fixtures (shared cache with test_compare)

@pytest.fixture(scope="session")
def f16_files(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    from imp_gguf.convert import convert

    root = tmp_path_factory.getbasetemp() / "quant-f16"
    out = {}
    for name, ckpt in tiny_checkpoints.items():
        res = convert(ckpt, root / name, outtype="f16", force=True)
        out[name] = (res.model, res.mmproj)
    return out


def _types(path: Path) -> dict[str, str]:
    return {t["name"]: t["type"] for t in tensor_table(path)}


def _predicted(recipe, lm: Path, mm: Path) -> tuple[dict[str, str], dict[str, str]]:
    meta = read_gguf_meta(lm)
    n_layer = meta[f"{meta['general.architecture']}.block_count"]
    return ({c.name: c.type for c in expected_types(recipe, tensor_table(lm), n_layer, part="lm")},
            {c.name: c.type for c in expected_types(recipe, tensor_table(mm), 0, part="mmproj")})


# ---------------------------------------------------------------- llama.cpp's own type ids

def test_type_ids_match_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for name in FTYPE_BASE:
        assert ftype_id(name) == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}"), name
    for name in TENSOR_TYPES:
        if hasattr(llama_cpp, f"GGML_TYPE_{name}"):
            assert ggml_type_id(name) == getattr(llama_cpp, f"GGML_TYPE_{name}"), name


# ---------------------------------------------------------------- llama.cpp writes what the recipe says

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_recipe_on_every_variant(variant: str, f16_files, tmp_path: Path) -> None:
    lm, mm = f16_files[variant]
    for recipe in list_recipes():
        res = apply_recipe(recipe, lm, mm, tmp_path / recipe.name)
        want_lm, want_mm = _predicted(recipe, lm, mm)
        assert _types(res.model) == want_lm, recipe.name
        assert _types(res.mmproj) == want_mm, recipe.name
        assert res.model.name.endswith(f"-{recipe.encoding}.gguf")
        assert res.mmproj.name.startswith("mmproj-") and res.mmproj.name.endswith(f"-{recipe.mmproj.ftype}.gguf")
        assert res.tensor_types == summary(res.model)["tensor_types"]
        mm_fb = {f.tensor: f.type for f in res.fallbacks if f.part == "mmproj"}
        if recipe.mmproj.ftype == "Q8_0":  # SigLIP FFN rows of 344 are not divisible by 32
            assert mm_fb == {"v.blk.0.ffn_down.weight": "F16", "v.blk.1.ffn_down.weight": "F16"}
        if recipe.name != "f16":
            meta = read_gguf_meta(res.model)
            assert meta["imp_gguf.recipe"] == recipe.name and meta["general.file_type"] == ftype_id(recipe.lm.ftype)
        lm_fb = {f.tensor: (f.wanted, f.type) for f in res.fallbacks if f.part == "lm"}
        if variant == "Imp-v1.5-2B-Qwen1.5" and recipe.name == "q4_k":
            # 2 layers: use_more_bits picks layer 1 -> Q6_K -> Q8_0; layer 0 Q4_K -> Q5_0
            assert lm_fb == {"blk.0.ffn_down.weight": ("Q4_K", "Q5_0"), "blk.1.ffn_down.weight": ("Q6_K", "Q8_0")}
        elif variant != "Imp-v1.5-2B-Qwen1.5" or recipe.name in ("f16", "q8_0", "q4_0", "q4_k_iq4nl"):
            assert lm_fb == {}, (variant, recipe.name)


@pytest.fixture(scope="module")
def deep_f16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """16-layer tiny models: enough layers for use_more_bits, n/8 and n/16 to pick different layers."""
    from imp_gguf.convert import convert

    root = tmp_path_factory.mktemp("deep")
    out = {}
    for variant in ("Imp-v1.5-2B-Qwen1.5", "Imp-v1.5-3B-Phi2"):
        ckpt = make_checkpoint(variant, root / "ckpt" / variant, dims=dims_with(n_layer=16))
        res = convert(ckpt, root / "f16" / variant, outtype="f16")
        out[variant] = (res.model, res.mmproj)
    return out


CUSTOM = {
    "q4_k_m_deep": '[lm]\nftype = "Q4_K_M"\n',
    "q3_k_m_deep": '[lm]\nftype = "Q3_K_M"\n',
    "q3_k_l_deep": '[lm]\nftype = "Q3_K_L"\n',
    "q4_k_s_deep": '[lm]\nftype = "Q4_K_S"\n',
    "q5_k_m_deep": '[lm]\nftype = "Q5_K_M"\n',
    "io_types": '[lm]\nftype = "Q4_K_M"\noutput = "Q8_0"\ntoken_embd = "Q6_K"\n',
    "pure": '[lm]\nftype = "Q3_K_M"\npure = true\n',
    # first match wins; a 256-block override still gets the shape fallback; counters skip overridden tensors
    "overrides": '[lm]\nftype = "Q4_K_M"\n[lm.overrides]\n"blk\\\\.1[0-9]\\\\.ffn_down" = "Q8_0"\n'
                 '"ffn_down" = "Q4_K"\n"blk\\\\.3\\\\.attn_" = "Q2_K"\n',
}


@pytest.mark.parametrize("name", list(CUSTOM))
def test_mixture_rules_on_deep_models(name: str, deep_f16, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'description = "test {name}"\n' + CUSTOM[name] + '[mmproj]\ntype = "Q8_0"\n')
    recipe = load_recipe(path)
    for variant, (lm, mm) in deep_f16.items():
        res = apply_recipe(recipe, lm, mm, tmp_path / variant)  # raises if llama.cpp disagrees
        want_lm, _ = _predicted(recipe, lm, mm)
        got = _types(res.model)
        assert got == want_lm, (variant, name)
        if name == "io_types":
            assert got["output.weight"] == "Q8_0" and got["token_embd.weight"] == "Q6_K"
        if name == "overrides":
            assert got["blk.12.ffn_down.weight"] == "Q8_0" and got["blk.3.attn_output.weight"] == "Q2_K"
            expect_down = "Q5_0" if "Qwen" in variant else "Q4_K"
            assert got["blk.2.ffn_down.weight"] == expect_down


# ---------------------------------------------------------------- one call: checkpoint -> recipe outputs

def test_convert_and_quantize(tiny_checkpoints, tmp_path: Path) -> None:
    ckpt = tiny_checkpoints["Imp-v1.5-2B-Qwen1.5"]
    q4_k = load_recipe("q4_k")
    res = convert_and_quantize(ckpt, tmp_path, q4_k)
    assert res.model.name == "Imp-v1.5-2B-Qwen1.5-Q4_K_M.gguf"
    assert res.mmproj.name == "mmproj-Imp-v1.5-2B-Qwen1.5-Q8_0.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([res.model.name, res.mmproj.name])
    assert res.recipe.recipe == "q4_k" and res.intermediate is None
    assert res.recipe.tensor_types["Q5_0"] == 1 and res.recipe.tensor_types["Q8_0"] == 1
    assert {f.tensor for f in res.recipe.fallbacks if f.part == "lm"} == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}
    with pytest.raises(OutputExists):
        convert_and_quantize(ckpt, tmp_path, q4_k)
    assert len(list(tmp_path.iterdir())) == 2  # refused before converting: no temporary folder left
    again = convert_and_quantize(ckpt, tmp_path, q4_k, force=True, keep_intermediate=True)
    assert again.intermediate is not None and again.intermediate[0].name == "Imp-v1.5-2B-Qwen1.5-F16.gguf"
    assert again.intermediate[0].exists()
    f16 = convert_and_quantize(ckpt, tmp_path / "f16", load_recipe("f16"))
    assert f16.model.name == "Imp-v1.5-2B-Qwen1.5-F16.gguf" and len(list((tmp_path / "f16").iterdir())) == 2
    assert f16.recipe.tensor_types == {"F16": 16, "F32": 11}


# ---------------------------------------------------------------- CLI

def test_cli_list_and_show(capsys: pytest.CaptureFixture[str], f16_files) -> None:
    assert main(["recipes", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["recipes"]
    assert {r["name"] for r in rows} >= set(REQUIRED)
    assert all(r["description"] for r in rows)
    assert main(["recipes", "list"]) == 0
    assert "q4_k" in capsys.readouterr().out
    assert main(["recipes", "show", "q4_k", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lm"]["ftype"] == "Q4_K_M" and shown["mmproj"]["type"] == "Q8_0" and shown["description"]
    released = shown["released_fallbacks"]  # the real Qwen1.5-1.8B (24 layers, FFN 5504): never a silent 5-bit
    assert sorted(released["Qwen1.5-1.8B (Imp-v1.5-2B-Qwen1.5)"]) == [
        "blk.*.ffn_down.weight x12: Q4_K -> Q5_0", "blk.*.ffn_down.weight x12: Q6_K -> Q8_0"]
    assert released["SigLIP mmproj (all variants)"] == ["v.blk.*.ffn_down.weight x26: Q8_0 -> F16"]
    assert all(not v for k, v in released.items() if k.startswith("Phi"))
    assert main(["recipes", "show", "q4_k"]) == 0
    assert "Q4_K -> Q5_0" in capsys.readouterr().out
    lm, _ = f16_files["Imp-v1.5-2B-Qwen1.5"]
    assert main(["recipes", "show", "q4_k", "--plan", str(lm)]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in out and "Q8_0" in out and "shape fallback" in out
    assert main(["recipes", "show", "nope"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
