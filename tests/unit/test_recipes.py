"""Quantization recipes without llama.cpp: the registry, the recipe files, and the per-tensor rules
(expected_types mirrors llama.cpp's mixture and shape fallbacks). Moved from tests/e2e/test_recipes.py,
which quantizes real files and compares them with these rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from imp_gguf.errors import BadInput
from imp_gguf.quant.recipes import RECIPE_DIR, list_recipes, load_recipe
from imp_gguf.quant.rules import expected_types, fallbacks, use_more_bits

REQUIRED = {"f16": "F16", "q8_0": "Q8_0", "q4_k": "Q4_K_M", "q4_k_s": "Q4_K_S", "q3_k": "Q3_K_M",
            "q3_k_s": "Q3_K_S", "q4_0": "Q4_0"}
REPO = Path(__file__).resolve().parents[2]


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
