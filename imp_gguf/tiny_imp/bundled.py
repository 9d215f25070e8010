"""The tiny Imp as shipped: its checkpoint folder (`imp_gguf/data/tiny-imp/Tiny-Imp-v1.5-56px/`, Imp's
exact architecture and layout A, a few MB) and its held-out demo images with golden answers
(`imp_gguf/data/tiny-imp/images/demo.json`). Training: `python -m imp_gguf.tiny_imp.train`;
evaluation: `python -m imp_gguf.tiny_imp.evaluate`. Only training and the PyTorch check need torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imp_gguf.errors import InternalError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny-imp"
CHECKPOINT_NAME = "Tiny-Imp-v1.5-56px"


def default_checkpoint() -> Path:
    """The bundled tiny Imp checkpoint folder (layout A, like MILVLG/Imp-v1.5-3B-196)."""
    path = DATA_DIR / CHECKPOINT_NAME
    if not (path / "config.json").is_file():
        raise InternalError(f"the bundled tiny Imp checkpoint is missing from {path} (broken install?)")
    return path


def is_tiny_imp(ckpt: str | Path) -> bool:
    """Whether a checkpoint folder was written by imp_gguf.tiny_imp.train (its config records how)."""
    try:
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("tiny_imp"), dict)


def demo_items() -> list[dict[str, Any]]:
    """Bundled held-out demo images: [{"image": Path, "question", "answer", "expect"}], where
    `expect` is the word a correct answer must contain (e.g. the colour)."""
    spec = json.loads((DATA_DIR / "images" / "demo.json").read_text())
    return [dict(d, image=DATA_DIR / "images" / d["image"]) for d in spec["items"]]
