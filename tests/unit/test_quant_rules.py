"""llama.cpp's per-tensor type rules (quant/rules.py) on their own: synthetic tensor tables, no files,
no llama.cpp."""

from __future__ import annotations

import pytest

from imp_gguf.quant.recipes import load_recipe, parse_recipe
from imp_gguf.quant.rules import category, estimated_bytes, expected_types, fallback, fallbacks, quantizer_order


def lm_table(n_layer: int = 4, n_embd: int = 256, n_ff: int = 1024, tied: bool = False) -> list[dict]:
    """gguf_info.tensor_table rows (shape in ggml order: row width first) of a small Phi-2-like model."""
    rows = [{"name": "token_embd.weight", "type": "F16", "shape": [n_embd, 1000]},
            {"name": "output_norm.weight", "type": "F32", "shape": [n_embd]}]
    if not tied:
        rows.append({"name": "output.weight", "type": "F16", "shape": [n_embd, 1000]})
    for i in range(n_layer):
        rows += [{"name": f"blk.{i}.attn_norm.weight", "type": "F32", "shape": [n_embd]},
                 {"name": f"blk.{i}.attn_qkv.weight", "type": "F16", "shape": [n_embd, 3 * n_embd]},
                 {"name": f"blk.{i}.attn_output.weight", "type": "F16", "shape": [n_embd, n_embd]},
                 {"name": f"blk.{i}.ffn_up.weight", "type": "F16", "shape": [n_embd, n_ff]},
                 {"name": f"blk.{i}.ffn_down.weight", "type": "F16", "shape": [n_ff, n_embd]}]
    return rows


def types(choices) -> dict[str, str]:
    return {c.name: c.type for c in choices}


def test_categories_and_order() -> None:
    assert category("output.weight") == "output" and category("blk.3.attn_qkv.weight") == "attn_qkv"
    assert category("blk.0.ffn_down.weight") == "ffn_down" and category("blk.0.attn_norm.weight") == "other"
    names = [t["name"] for t in quantizer_order(lm_table(n_layer=11))]
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]  # no block first
    assert names.index("blk.2.attn_qkv.weight") < names.index("blk.10.attn_qkv.weight")  # by block number


def test_fallback_to_a_32_block_type_then_f16() -> None:
    assert fallback("Q4_K", 512) == "Q4_K"
    assert fallback("Q4_K", 5504) == "Q5_0"  # Qwen1.5's FFN: not a multiple of 256
    assert fallback("Q6_K", 4304) == "F16"  # SigLIP's FFN: not even a multiple of 32
    assert fallback("Q8_0", 4304) == "F16"


def test_q4_k_m_mixture() -> None:
    got = types(expected_types(load_recipe("q4_k"), lm_table(), 4))
    assert got["output_norm.weight"] == "F32" and got["blk.0.attn_norm.weight"] == "F32"  # never quantized
    assert got["output.weight"] == "Q6_K"
    assert got["token_embd.weight"] == "Q4_K"
    # use_more_bits(i, 4): i >= 7*4//8 (block 3) or (i - 4//8) % 3 == 2 (block 2)
    assert [got[f"blk.{i}.attn_qkv.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert [got[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert got["blk.0.ffn_up.weight"] == "Q4_K" and got["blk.0.attn_output.weight"] == "Q4_K"


def test_tied_embeddings_take_the_output_rule() -> None:
    got = types(expected_types(load_recipe("q4_k"), lm_table(tied=True), 4))
    assert got["token_embd.weight"] == "Q6_K"


def test_shape_fallbacks_are_reported() -> None:
    choices = expected_types(load_recipe("q4_k"), lm_table(n_ff=5504), 4)
    down = {c.name: c for c in fallbacks(choices)}
    assert down["blk.0.ffn_down.weight"].wanted == "Q4_K" and down["blk.0.ffn_down.weight"].type == "Q5_0"
    assert down["blk.2.ffn_down.weight"].wanted == "Q6_K" and down["blk.2.ffn_down.weight"].type == "Q8_0"
    assert "blk.0.ffn_up.weight" not in down  # its rows are n_embd wide


def test_overrides_pure_and_copies() -> None:
    text = 'description = "test"\n[lm]\nftype = "Q4_K_M"\n[lm.overrides]\n"ffn_up" = "Q8_0"\n[mmproj]\ntype = "Q8_0"\n'
    got = types(expected_types(parse_recipe(text, "custom"), lm_table(), 4))
    assert got["blk.1.ffn_up.weight"] == "Q8_0" and got["blk.1.ffn_down.weight"] == "Q4_K"
    pure = types(expected_types(load_recipe("q4_0_pure"), lm_table(), 4))
    assert {pure[f"blk.{i}.attn_qkv.weight"] for i in range(4)} == {"Q4_0"}
    f16 = expected_types(load_recipe("f16"), lm_table(), 4)
    assert all(c.type == c.source and c.rule == "copied" for c in f16)


@pytest.mark.parametrize("width,want", [(1152, "Q8_0"), (4304, "F16")])
def test_mmproj_q8_0_where_rows_allow(width: int, want: str) -> None:
    table = [{"name": "v.blk.0.ffn_down.weight", "type": "F16", "shape": [width, 1152]},
             {"name": "v.patch_embd.weight", "type": "F16", "shape": [14, 14, 3, 1152]},
             {"name": "v.position_embd.weight", "type": "F32", "shape": [1152, 729]}]
    got = types(expected_types(load_recipe("q4_k"), table, 0, part="mmproj"))
    assert got == {"v.blk.0.ffn_down.weight": want, "v.patch_embd.weight": "F16", "v.position_embd.weight": "F32"}


def test_estimated_bytes_follow_the_types() -> None:
    table = lm_table()
    q8, n = estimated_bytes(expected_types(load_recipe("q8_0"), table, 4), table)
    q4, n4 = estimated_bytes(expected_types(load_recipe("q4_k"), table, 4), table)
    assert n == n4 and q4 < q8 < 2 * n  # fewer bytes than F16, Q4_K_M below Q8_0
