"""Hub checkpoints without their weights: tensor names, dtypes and shapes read from the safetensors
headers on the hub (HTTP range requests through huggingface_hub), so `convert --dry-run` on a hub id
plans the conversion after fetching only the config, index and tokenizer files."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imp_gguf.errors import BadInput, ToolMissing


@dataclass(frozen=True)
class RemoteTensor:
    """A tensor known from its header only; a dry run never loads it."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> np.ndarray:
        raise BadInput(f"tensor {self.name!r} was not downloaded (dry run on a hub id)")


def remote_tensors(spec: str) -> dict[str, RemoteTensor]:
    """{name: RemoteTensor} of hub repo `spec` (org/name[@revision]) from its safetensors headers."""
    try:
        from huggingface_hub import get_safetensors_metadata
    except ImportError as exc:
        raise ToolMissing(f"{spec} looks like a hub repo id: pip install huggingface_hub to read it") from exc
    repo, _, rev = spec.partition("@")
    try:
        meta = get_safetensors_metadata(repo, revision=rev or None)
    except Exception as exc:  # noqa: BLE001 - network/auth/format errors from the hub client vary widely
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{spec}: cannot read its safetensors headers from the hub ({why})") from exc
    out: dict[str, RemoteTensor] = {}
    for file_meta in meta.files_metadata.values():
        for name, info in file_meta.tensors.items():
            out[name] = RemoteTensor(name, str(info.dtype), tuple(int(x) for x in info.shape))
    if not out:
        raise BadInput(f"{spec}: no safetensors weights on the hub")
    return out
