"""Our language-model GGUF against llama.cpp's own converter on the same weights (F32):
same tensor names, shapes and data, same architecture keys."""

from __future__ import annotations

import numpy as np
import pytest

from tests.plugins.checkpoints import VARIANT_NAMES


@pytest.fixture(scope="module")
def llama_cpp_tree():
    from imp_gguf.runtime.source import ensure_source

    return ensure_source().llama_cpp


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_lm_gguf_matches_upstream_converter(variant, tiny_checkpoints, converted, llama_cpp_tree, tmp_path):
    from gguf import GGUFReader

    from imp_gguf.converters.registry import detect_family
    from imp_gguf.gguf_info import read_gguf_meta
    from imp_gguf.reference.upstream import run_upstream, stage_plain_checkpoint
    from imp_gguf.checkpoint import open_checkpoint

    ck = open_checkpoint(tiny_checkpoints[variant])
    family = detect_family(ck.config, set(ck.tensors))
    staged = stage_plain_checkpoint(tiny_checkpoints[variant], tmp_path / "staged")
    theirs_path = run_upstream(staged, tmp_path / "upstream.gguf", llama_cpp_tree, family.tokenizer_pre)
    ours_path = converted(variant, "f32")["model"]

    ours = {t.name: t for t in GGUFReader(ours_path).tensors}
    theirs = {t.name: t for t in GGUFReader(theirs_path).tensors}
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        o = ours[name]
        assert list(o.shape) == list(t.shape), name
        assert o.tensor_type == t.tensor_type, name
        np.testing.assert_array_equal(np.asarray(o.data), np.asarray(t.data), err_msg=name)

    arch = family.arch
    mine, up = read_gguf_meta(ours_path), read_gguf_meta(theirs_path)
    arch_keys = {k for k in up if k.startswith(arch + ".")}
    assert arch_keys, "upstream wrote no architecture keys"
    assert {k for k in mine if k.startswith(arch + ".")} == arch_keys
    for k in arch_keys:
        assert mine[k] == pytest.approx(up[k]), k
    assert mine["general.architecture"] == up["general.architecture"] == arch
    assert mine["tokenizer.ggml.model"] == up["tokenizer.ggml.model"]
    from imp_gguf.gguf_info import field_value

    tok_ours = field_value(GGUFReader(ours_path).fields["tokenizer.ggml.tokens"])
    tok_up = field_value(GGUFReader(theirs_path).fields["tokenizer.ggml.tokens"])
    assert tok_ours == tok_up
