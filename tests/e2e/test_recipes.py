"""Quantization recipes: the registry, llama.cpp's per-tensor rules, and files that match their recipe.

Every quantized file is read back and each tensor's type is compared with expected_types, which
mirrors llama.cpp's mixture and shape fallbacks (Qwen's ffn_down of 352 columns, like the real 5504,
and SigLIP's FFN of 344, like the real 4304, exercise them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imp_gguf.cli.main import main
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.gguf_info import read_gguf_meta, summary, tensor_table
from imp_gguf.quant.quantize import apply_recipe, convert_and_quantize
from imp_gguf.quant.rules import expected_types
from imp_gguf.quant.recipes import list_recipes, load_recipe
from imp_gguf.quant.recipes import FTYPE_BASE, RECIPE_DIR, TENSOR_TYPES, ftype_id, ggml_type_id
from imp_gguf.quant.rules import fallbacks, use_more_bits
from imp_gguf.synthetic_checkpoints.tiny import VARIANTS, dims_with, make_checkpoint

REQUIRED = {"f16": "F16", "q8_0": "Q8_0", "q4_k": "Q4_K_M", "q4_k_s": "Q4_K_S", "q3_k": "Q3_K_M",
            "q3_k_s": "Q3_K_S", "q4_0": "Q4_0"}
REPO = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------- registry

def test_shipped_recipes_cover_the_issue() -> None:
    recipes = {r.name: r for r in list_recipes()}
    for name, ftype in REQUIRED.items():
        assert recipes[name].lm.ftype == ftype
    for r in recipes.values():
        assert r.description and "\n" not in r.description
        assert r.mmproj.ftype in ("F16", "Q8_0")
        assert r.path is not None and r.path.parent == RECIPE_DIR
    assert recipes["f16"].mmproj.ftype == "F16" and recipes["q4_k"].mmproj.ftype == "Q8_0"
    assert recipes["q4_k"].encoding == "Q4_K_M"
    assert dict(recipes["q4_k_iq4nl"].lm.overrides) == {"ffn_down": "IQ4_NL"}


def test_top_level_folder_is_the_package_data() -> None:
    top = REPO / "quant_recipes"
    assert top.is_symlink() and top.resolve() == RECIPE_DIR.resolve()
    assert sorted(p.name for p in top.glob("*.toml")) == sorted(p.name for p in RECIPE_DIR.glob("*.toml"))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"quant_recipes/*.toml"' in pyproject


def test_type_ids_match_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for name in FTYPE_BASE:
        assert ftype_id(name) == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}"), name
    for name in TENSOR_TYPES:
        if hasattr(llama_cpp, f"GGML_TYPE_{name}"):
            assert ggml_type_id(name) == getattr(llama_cpp, f"GGML_TYPE_{name}"), name


def test_load_by_path_and_alias(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text('description = "test"\n[lm]\nftype = "q4_k"\noutput = "q8_0"\n[lm.overrides]\n'
                 '"blk\\\\.0\\\\." = "q5_k"\n[mmproj]\ntype = "f16"\n')
    r = load_recipe(str(p))
    assert (r.name, r.lm.ftype, r.lm.output, r.encoding, r.mmproj.ftype) == ("mine", "Q4_K_M", "Q8_0", "Q4_K_M", "F16")
    assert r.lm.overrides == (("blk\\.0\\.", "Q5_K"),)
    assert load_recipe("q4_k").name == "q4_k"
    assert load_recipe("Q4_K_M").name == "q4_k" and load_recipe("q3_k_m").name == "q3_k"  # llama.cpp's names


@pytest.mark.parametrize("text, message", [
    ('description = "x"\n[lm]\nftype = "Q9_K"\n[mmproj]\ntype = "F16"\n', "lm.ftype"),
    ('description = "x"\n[lm]\nftype = "Q4_0"\n[mmproj]\ntype = "Q4_0"\n', "mmproj.type"),
    ('description = "x"\n[lm]\nftype = "Q4_0"\nfoo = 1\n[mmproj]\ntype = "F16"\n', "unknown key 'foo'"),
    ('[lm]\nftype = "Q4_0"\n[mmproj]\ntype = "F16"\n', "one-line description"),
    ('description = "x"\n[lm]\nftype = "Q4_0"\n[lm.overrides]\n"(" = "Q8_0"\n[mmproj]\ntype = "F16"\n', "regular expression"),
    ('description = "x"\n[lm]\nftype = "Q4_0"\n[lm.overrides]\n"a" = "IQ2_XXS"\n[mmproj]\ntype = "F16"\n', "override"),
    ('description = "x"\n[lm]\nftype = "F16"\npure = true\n[mmproj]\ntype = "F16"\n', "quantized lm.ftype"),
    ('description = "x"\n[lm]\nftype = "Q4_0"\n', "[mmproj]"),
    ('description = "x"\n[lm\n', "not valid TOML"),
])
def test_bad_recipes_are_bad_input(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_recipe(p)


def test_unknown_recipe() -> None:
    with pytest.raises(BadInput, match="unknown recipe 'q9'"):
        load_recipe("q9")
    with pytest.raises(BadInput, match="does not exist"):
        load_recipe("missing.toml")


# ---------------------------------------------------------------- rules (no llama.cpp)

def test_use_more_bits_matches_reference() -> None:
    # llama.cpp's rule (docs/architecture.md): for 32 layers, 0-3, 6, 9, ..., 27, 28-31 (16 layers)
    picked = [i for i in range(32) if use_more_bits(i, 32)]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert sum(use_more_bits(i, 24) for i in range(24)) == 12


def _qwen_like(n_layer: int, n_embd: int, n_ff: int) -> list[dict]:
    ts = [{"name": "token_embd.weight", "type": "F16", "shape": [n_embd, 151936]},
          {"name": "output.weight", "type": "F16", "shape": [n_embd, 151936]},
          {"name": "output_norm.weight", "type": "F32", "shape": [n_embd]}]
    for i in range(n_layer):
        for t, shape in (("attn_q", [n_embd, n_embd]), ("attn_k", [n_embd, n_embd]), ("attn_v", [n_embd, n_embd]),
                         ("attn_output", [n_embd, n_embd]), ("ffn_gate", [n_embd, n_ff]), ("ffn_up", [n_embd, n_ff]),
                         ("ffn_down", [n_ff, n_embd])):
            ts.append({"name": f"blk.{i}.{t}.weight", "type": "F16", "shape": shape})
        ts.append({"name": f"blk.{i}.attn_norm.weight", "type": "F32", "shape": [n_embd]})
        ts.append({"name": f"blk.{i}.attn_q.bias", "type": "F32", "shape": [n_embd]})
    return ts


def test_real_qwen15_ffn_down_fallbacks_are_predicted() -> None:
    # Qwen1.5-1.8B: 24 layers, width 2048, FFN 5504 (not a multiple of 256)
    ts = _qwen_like(24, 2048, 5504)
    q4k = {c.name: c for c in expected_types(load_recipe("q4_k"), ts, 24)}
    for i in range(24):
        c = q4k[f"blk.{i}.ffn_down.weight"]
        assert (c.wanted, c.type) == (("Q6_K", "Q8_0") if use_more_bits(i, 24) else ("Q4_K", "Q5_0"))
        assert q4k[f"blk.{i}.attn_v.weight"].type == ("Q6_K" if use_more_bits(i, 24) else "Q4_K")
    assert q4k["output.weight"].type == "Q6_K" and q4k["token_embd.weight"].type == "Q4_K"
    assert q4k["blk.0.attn_norm.weight"].type == "F32"
    q3k = {c.name: c for c in expected_types(load_recipe("q3_k"), ts, 24)}
    assert q3k["blk.0.ffn_down.weight"].type == "Q5_1"  # i < n/16: Q5_K -> Q5_1
    assert q3k["blk.5.ffn_down.weight"].type == "Q5_0"  # Q4_K -> Q5_0
    assert [q3k[f"blk.{i}.attn_v.weight"].type for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert q3k["blk.3.attn_output.weight"].type == "Q4_K" and q3k["blk.3.ffn_up.weight"].type == "Q3_K"
    q3ks = {c.name: c for c in expected_types(load_recipe("q3_k_s"), ts, 24)}
    assert q3ks["blk.3.ffn_down.weight"].type == "Q4_0"  # Q3_K -> Q4_0
    nl = expected_types(load_recipe("q4_k_iq4nl"), ts, 24)
    assert not [c for c in fallbacks(nl) if "ffn_down" in c.name]  # the override keeps it 4-bit
    assert all(c.type == "IQ4_NL" for c in nl if "ffn_down" in c.name)


def test_siglip_ffn_down_stays_f16_in_q8_0_mmproj() -> None:
    ts = [{"name": "v.blk.0.ffn_down.weight", "type": "F16", "shape": [4304, 1152]},
          {"name": "v.blk.0.ffn_up.weight", "type": "F16", "shape": [1152, 4304]},
          {"name": "v.patch_embd.weight", "type": "F16", "shape": [14, 14, 3, 1152]},
          {"name": "v.position_embd.weight", "type": "F32", "shape": [1152, 729]},
          {"name": "mm.0.weight", "type": "F16", "shape": [1152, 2560]}]
    got = {c.name: c for c in expected_types(load_recipe("q4_k"), ts, 0, part="mmproj")}
    assert got["v.blk.0.ffn_down.weight"].type == "F16" and got["v.blk.0.ffn_down.weight"].fallback
    assert got["v.blk.0.ffn_up.weight"].type == "Q8_0"
    assert got["v.patch_embd.weight"].type == "F16" and got["v.position_embd.weight"].type == "F32"
    assert got["mm.0.weight"].type == "Q8_0"


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
