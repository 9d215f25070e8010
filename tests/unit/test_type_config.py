"""The type checker's configuration ([tool.mypy] in pyproject.toml, run over the package by scripts/test.sh)
catches a changed result shape: a caller reading a field a result dataclass no longer has is an error,
even inside a function without annotations (check_untyped_defs), where mypy's defaults say nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
SNIPPET = '''
from dataclasses import dataclass


@dataclass
class Converted:
    model: str


def convert() -> Converted:
    return Converted("m.gguf")


def show(json_out):  # no annotations, like many command helpers
    return convert().mmproj  # the field was renamed or dropped
'''


def _mypy(config: str, tmp_path: Path) -> tuple[str, int]:
    src = tmp_path / "snippet.py"
    src.write_text(SNIPPET)
    out, err, status = api.run(["--config-file", config, "--cache-dir", str(tmp_path / "cache"), str(src)])
    return out + err, status


def test_the_config_catches_a_missing_result_field(tmp_path: Path) -> None:
    out, status = _mypy(str(PYPROJECT), tmp_path)
    assert status == 1 and '"Converted" has no attribute "mmproj"  [attr-defined]' in out, out


def test_mypys_defaults_would_not(tmp_path: Path) -> None:
    out, status = _mypy("", tmp_path)
    assert status == 0, out
