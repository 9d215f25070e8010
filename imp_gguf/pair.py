"""A language model and an mmproj that belong together, checked from their headers before any work.

Every command that takes both files (run, bench, bundle, verify) calls check_pair first: a swapped
pair, two language models, a projector for another width or files from two different checkpoints are
refused with one line, instead of a 30 MB bundle that fails on the phone ("CLIP cannot be used as
main model") or a crash deep inside llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import Keys

from imp_gguf.errors import BadInput
from imp_gguf.gguf_info import MMPROJ_ARCH as CLIP, check_gguf
from imp_gguf.gguf_naming import SOURCE_KEY


@dataclass(frozen=True)
class Pair:
    model: Path
    mmproj: Path
    arch: str
    n_embd: int
    image_size: int


def check_pair(model: str | Path, mmproj: str | Path) -> Pair:
    """Both files are GGUFs (header walked, so damage is caught too), MODEL is a language model,
    MMPROJ is an mmproj whose projector output width is the model's width, and, when both carry
    imp-gguf provenance, they were converted from the same checkpoint."""
    model, mmproj = Path(model), Path(mmproj)
    lm, mm = _header(model, "--model"), _header(mmproj, "--mmproj")
    lm_arch, mm_arch = lm.get(Keys.General.ARCHITECTURE), mm.get(Keys.General.ARCHITECTURE)
    if lm_arch == CLIP and mm_arch != CLIP:
        raise BadInput(f"--model and --mmproj are swapped: {model.name} is the mmproj (arch {CLIP}) and "
                       f"{mmproj.name} the language model (arch {mm_arch})")
    if lm_arch == CLIP:
        raise BadInput(f"--model {model.name} is an mmproj (arch {CLIP}), not a language model")
    if mm_arch != CLIP:
        raise BadInput(f"--mmproj {mmproj.name} is not an mmproj: its arch is {mm_arch}, not {CLIP} "
                       "(a language model given twice?)")
    n_embd = lm.get(Keys.LLM.EMBEDDING_LENGTH.format(arch=lm_arch))
    width = mm.get(Keys.ClipVision.PROJECTION_DIM)
    if isinstance(n_embd, int) and isinstance(width, int) and n_embd != width:
        raise BadInput(f"{mmproj.name} projects to width {width} but {model.name} is {n_embd} wide: "
                       "they are from different models")
    a, b = lm.get(SOURCE_KEY), mm.get(SOURCE_KEY)
    if a and b and a != b:
        raise BadInput(f"{model.name} and {mmproj.name} were converted from different checkpoints "
                       f"({SOURCE_KEY} {a[:12]} vs {b[:12]})")
    return Pair(model, mmproj, str(lm_arch), int(n_embd or 0), int(mm.get(Keys.ClipVision.IMAGE_SIZE) or 0))


def _header(path: Path, flag: str) -> dict[str, Any]:
    if not path.exists():
        raise BadInput(f"{flag} {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{flag} {path} is a folder, not a GGUF file")
    return check_gguf(path)
