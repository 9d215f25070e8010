"""The tiny Imp: Imp's exact architecture at toy size (`reference.model.ImpModel`), saved in layout A.

SigLIP tower holding only the blocks Imp runs (the config says one more, `mm_vision_select_layer = -2`),
mlp2x_gelu projector, Phi-2 LLM saved with phi-msft names under `transformer.` like
MILVLG/Imp-v1.5-3B-196, a GPT-2-style byte-level BPE with `</s>` and `<image>` added, Imp's config
keys: written through `imp_gguf.synthetic_checkpoints`' config, tokenizer and shard writers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from imp_gguf.chat_templates import SYSTEM
from imp_gguf.errors import BadInput
from imp_gguf.synthetic_checkpoints.configs import imp_config
from imp_gguf.synthetic_checkpoints.shards import write_torch_state
from imp_gguf.synthetic_checkpoints.tiny import Dims, Variant, lm_config, vision_config
from imp_gguf.synthetic_checkpoints.tokenizers import write_bpe
from imp_gguf.reference.model import FAST_GELU_NEW, ImpModel
from imp_gguf.tiny_imp import data as D
from imp_gguf.images import pixel_values
from imp_gguf.synthetic_checkpoints.corpus import corpus

FAMILY = "phi2_msft"  # checkpoint layout A, as MILVLG/Imp-v1.5-3B-196
NAME = "Tiny-Imp-v1.5-56px"
IMAGE_TOKEN = "<image>"
STOP = "</s>"
SPECIALS = ("<|endoftext|>", STOP, IMAGE_TOKEN)  # Phi-2's base vocab ends with <|endoftext|>; Imp adds </s>, <image>


@dataclass(frozen=True)
class TinySpec:
    name: str = NAME
    image_size: int = D.IMAGE_SIZE
    dims: Dims = field(default_factory=lambda: Dims(
        n_embd=256, n_layer=3, n_head=4, n_ff_phi2=1024, rotary_dim=32, bpe_vocab=1021,
        v_embd=192, v_ff=720, v_head=4, v_layers_original=4, patch=14))

    @property
    def variant(self) -> Variant:
        return Variant(self.name, FAMILY, self.image_size, "imp", image_aspect_ratio="square")

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.dims.patch) ** 2


# ---------------------------------------------------------------- tokenizer

def prompt_parts(question: str) -> tuple[str, str]:
    """Imp's phi2 prompt `S USER: <image>\\n{q} ASSISTANT:` split around the image token."""
    return f"{SYSTEM} USER: ", f"\n{question} ASSISTANT:"


def tokenizer_corpus() -> list[str]:
    lines: list[str] = []
    for q in D.all_questions():
        for a in D.all_answers():
            before, after = prompt_parts(q)
            lines.append(f"{before}{after} {a}")
    return lines + corpus()


def write_tokenizer(dest: Path, vocab_size: int) -> tuple[int, dict[str, int]]:
    """tokenizer.json + tokenizer_config.json, trained on the task's text."""
    return write_bpe(dest, "gpt2", vocab_size, list(SPECIALS), lines=tokenizer_corpus())


class TextCodec:
    """The checkpoint's tokenizer (tokenizers library, no remote code) plus Imp's prompt split."""

    def __init__(self, ckpt_dir: str | Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(ckpt_dir) / "tokenizer.json"))
        stop_id = self.tok.token_to_id(STOP)
        if stop_id is None:
            raise BadInput(f"{ckpt_dir}: its tokenizer has no {STOP} token (not a tiny Imp)")
        self.stop_id: int = stop_id
        self.image_id = self.tok.token_to_id(IMAGE_TOKEN)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tok.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        before, after = prompt_parts(question)
        return self.encode(before), self.encode(after)

    def answer(self, answer: str) -> list[int]:
        return self.encode(" " + answer) + [self.stop_id]


# ---------------------------------------------------------------- model

def build(spec: TinySpec, n_rows: int, ids: dict[str, int]) -> tuple[ImpModel, Any, Any]:
    lm_cfg = lm_config(FAMILY, spec.dims, n_rows, ids)
    lm_cfg.hidden_act = FAST_GELU_NEW
    lm_cfg._attn_implementation = "sdpa"
    vcfg = vision_config(spec.variant, spec.dims)
    model = ImpModel(lm_cfg, vcfg, spec.dims.v_layers_original - 1)
    with torch.no_grad():  # SigLIP's 1/sqrt(width) init leaves "where" too faint to learn quickly
        model.vision.embeddings.position_embedding.weight.normal_(0.0, 1.0)
    return model, lm_cfg, vcfg


def save_checkpoint(model: ImpModel, spec: TinySpec, lm_cfg: Any, vcfg: Any, ids: dict[str, int], dest: Path, *,
                    dtype: torch.dtype = torch.bfloat16, n_shards: int = 2, extra: dict[str, Any] | None = None) -> None:
    """Weights (sharded safetensors + index), config.json and generation_config.json into dest
    (the tokenizer files are written there by write_tokenizer)."""
    write_torch_state(dest, model.checkpoint_state(FAMILY), dtype, n_shards)
    v = spec.variant
    cfg = imp_config(v.name, v.family, v.model_type, lm_cfg, vcfg, ids, aspect=v.image_aspect_ratio)
    cfg["_name_or_path"] = spec.name
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    if extra:
        cfg["tiny_imp"] = extra
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": ids[STOP]}) + "\n")


def pixels(images: list[Any], size: int) -> torch.Tensor:
    """PIL images (any size) -> [B, 3, size, size], exactly load_image's resize + pixel_values."""
    return torch.from_numpy(np.stack([pixel_values(D.to_model_size(im, size)) for im in images]))


def n_params(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
