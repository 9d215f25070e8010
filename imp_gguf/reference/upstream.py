"""Run llama.cpp's own convert_hf_to_gguf.py (from the pinned tree) on the same weights staged as a
plain transformers checkpoint: a reference to test our converter against, never a dependency of it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from imp_gguf.checkpoint import open_checkpoint
from imp_gguf.converters.registry import detect_family
from imp_gguf.runtime.runner import LocalRunner

# Tiny test tokenizers have no known pre-tokenizer hash; the family decides it, as in imp-gguf.
_SHIM = """
import sys, runpy
sys.path.insert(0, {root!r}); sys.path.insert(1, {root!r} + "/gguf-py")
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
runpy.run_path({root!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def stage_plain_checkpoint(ckpt_dir: str | Path, dest: str | Path) -> Path:
    """LLM tensors only (names unchanged: upstream's map knows both Phi-2 layouts), a transformers config."""
    ckpt = open_checkpoint(ckpt_dir)
    family = detect_family(ckpt.config, set(ckpt.tensors))
    hp = family.hparams(ckpt.config, ckpt.tensors)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    state = {n: torch.from_numpy(r.load()) for n, r in ckpt.tensors.items() if not family.is_vision_or_projector(n)}
    save_file(state, str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps(family.reference_config(hp), indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                 "added_tokens.json", "vocab.json", "merges.txt"):
        if (ckpt.root / name).is_file():
            shutil.copy(ckpt.root / name, dest / name)
    return dest


def run_upstream(staged: Path, outfile: Path, llama_cpp_dir: Path, tokenizer_pre: str, outtype: str = "f32") -> Path:
    args = [str(staged), "--outfile", str(outfile), "--outtype", outtype]
    code = _SHIM.format(root=str(llama_cpp_dir), pre=tokenizer_pre, args=args)
    proc = LocalRunner().run([sys.executable, "-c", code], env={"NO_LOCAL_GGUF": "1"}, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"upstream converter failed:\n{proc.stderr[-3000:]}")
    return outfile
