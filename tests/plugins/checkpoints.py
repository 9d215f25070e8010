"""Fixtures giving tests tiny Imp checkpoints (all five layouts) and their converted GGUFs."""

from __future__ import annotations

from pathlib import Path

import pytest

VARIANT_NAMES = ["imp-v1-3b", "Imp-v1.5-3B-196", "Imp-v1.5-3B-Phi2", "Imp-v1.5-2B-Qwen1.5", "Imp-v1.5-4B-Phi3"]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from imp_gguf.synthetic_checkpoints.tiny import make_all

    return make_all(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def converted(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """convert(variant, outtype) -> the conversion's result as its JSON (ConversionResult.to_dict()), cached per session."""
    from imp_gguf.convert import convert

    cache: dict[tuple[str, str], dict] = {}
    root = tmp_path_factory.mktemp("gguf")

    def get(variant: str, outtype: str = "f32") -> dict:
        key = (variant, outtype)
        if key not in cache:
            cache[key] = convert(tiny_checkpoints[variant], root / f"{variant}-{outtype}", outtype=outtype).to_dict()
        return cache[key]

    return get


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deterministic non-square RGB image (so squash-resizing is exercised)."""
    from imp_gguf.synthetic_images import photo_like

    return photo_like(tmp_path_factory.mktemp("img") / "test.png", 130, 90)
