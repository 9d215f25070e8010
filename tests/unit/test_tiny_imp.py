"""The bundled tiny Imp's demo items (moved from tests/e2e/test_tiny_imp.py, which trains and runs it)."""

from __future__ import annotations

from imp_gguf.tiny_imp import data as D
from imp_gguf.tiny_imp.bundled import demo_items


def test_demo_images_are_held_out_and_golden() -> None:
    demos = demo_items()
    assert len(demos) >= 4
    for d in demos:
        assert d["image"].is_file() and d["image"].suffix == ".png"
        assert d["expect"] in D.normalise(d["answer"]).split()
        assert D.normalise(d["answer"]) in {D.normalise(a) for a in D.all_answers()}
    assert {d["kind"] for d in demos} == set(D.KINDS)
