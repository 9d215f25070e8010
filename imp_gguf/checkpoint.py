"""Open an Imp checkpoint folder: config, validated tensor index, tokenizer files.

Nothing from the checkpoint is executed: no remote code, no auto_map imports, and pickle weights
are refused unless the user opts in, and then loaded with torch.load(weights_only=True).
Every file an index names must resolve inside the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imp_gguf.errors import BadInput, ToolMissing
from imp_gguf.safetensors_io import TensorRef, read_header

PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "added_tokens.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "generation_config.json")


class TensorSource(Protocol):
    name: str
    dtype: str
    shape: tuple[int, ...]

    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class PickledTensor:
    """A tensor from a weights_only torch.load (opt-in only)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    _state: dict = field(repr=False, compare=False)

    def load(self) -> np.ndarray:
        return self._state[self.name].float().numpy().copy()


@dataclass
class Checkpoint:
    root: Path
    config: dict[str, Any]
    tensors: dict[str, TensorSource]
    weight_files: list[Path]

    def file(self, relname: str) -> Path | None:
        """A file of the checkpoint by name, or None; refuses anything resolving outside the folder."""
        path = safe_child(self.root, relname)
        return path if path.is_file() else None

    def read_json(self, relname: str) -> dict[str, Any] | None:
        path = self.file(relname)
        if path is None:
            return None
        return _load_json(path)

    @property
    def name(self) -> str:
        return self.root.name

    def source_sha256(self) -> str:
        """A cheap identity of the checkpoint: config, tokenizer files and every safetensors header.

        Headers pin names, dtypes, shapes and offsets; hashing all weight bytes of a 6 GB model
        would cost more than the conversion itself.
        """
        h = hashlib.sha256()
        for rel in ("config.json", *TOKENIZER_FILES):
            p = self.file(rel)
            if p is not None:
                h.update(rel.encode())
                h.update(p.read_bytes())
        for wf in self.weight_files:
            with open(wf, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                h.update(wf.name.encode())
                h.update(head + f.read(min(n, 100 * 1024 * 1024)))
                h.update(str(wf.stat().st_size).encode())
        return h.hexdigest()


def safe_child(root: Path, relname: str) -> Path:
    """Resolve relname inside root; refuse absolute paths, '..' escapes and symlinks leaving root."""
    if not relname or Path(relname).is_absolute():
        raise BadInput(f"refusing path {relname!r}: it must be relative to the checkpoint folder")
    root_r = root.resolve()
    target = (root / relname).resolve()
    if target != root_r and root_r not in target.parents:
        raise BadInput(f"refusing {relname!r}: it points outside the checkpoint folder")
    return target


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path.name}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path.name}: expected a JSON object")
    return data


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def resolve_source(spec: str) -> Path:
    """A local folder, or a hub repo id (org/name[@revision]) fetched through huggingface_hub."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise BadInput(f"{spec}: not a checkpoint folder")
    if not HUB_ID.match(spec):
        raise BadInput(f"{spec}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download  # optional: only for hub ids
    except ImportError as exc:
        raise ToolMissing(f"{spec} looks like a hub repo id: pip install huggingface_hub to download it") from exc
    repo, _, rev = spec.partition("@")
    try:
        local = snapshot_download(repo, revision=rev or None,
                                  allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 - network/auth errors from the hub client vary widely
        raise BadInput(f"{spec}: download failed: {str(exc).splitlines()[0]}") from exc
    return Path(local)


def open_checkpoint(spec: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    root = resolve_source(str(spec))
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise BadInput(f"{root}: no config.json (is this an Imp checkpoint folder?)")
    safe_child(root, "config.json")
    config = _load_json(cfg_path)
    tensors, files = _index_weights(root, allow_pickle)
    return Checkpoint(root=root, config=config, tensors=tensors, weight_files=files)


def _index_weights(root: Path, allow_pickle: bool) -> tuple[dict[str, TensorSource], list[Path]]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BadInput("model.safetensors.index.json: no weight_map")
        shards = sorted(set(weight_map.values()))
        files = []
        for shard in shards:
            if not isinstance(shard, str):
                raise BadInput("model.safetensors.index.json: shard names must be strings")
            p = safe_child(root, shard)
            if not p.is_file():
                raise BadInput(f"shard {shard} named by model.safetensors.index.json is missing")
            files.append(p)
        tensors: dict[str, TensorSource] = {}
        for p in files:
            for name, ref in read_header(p).items():
                tensors[name] = ref
        for name, shard in weight_map.items():
            ref = tensors.get(name)
            if ref is None or getattr(ref, "path", None) != safe_child(root, shard):
                raise BadInput(f"tensor {name!r} is listed in the index under {shard} but not stored there")
        return tensors, files
    single = sorted(p for p in root.glob("*.safetensors"))
    if single:
        tensors = {}
        for p in single:
            safe_child(root, p.name)
            for name, ref in read_header(p).items():
                if name in tensors:
                    raise BadInput(f"tensor {name!r} is stored in more than one safetensors file")
                tensors[name] = ref
        return tensors, single
    pickles = [n for n in PICKLE_NAMES if (root / n).exists()]
    if pickles:
        if not allow_pickle:
            raise BadInput(f"{pickles[0]}: pickle weights are refused (they can run code); convert to safetensors "
                           "or pass --allow-pickle to load them with torch.load(weights_only=True)")
        return _load_pickle(root, pickles[0])
    raise BadInput(f"{root}: no weights found (model.safetensors, its index, or shards)")


def _load_pickle(root: Path, name: str) -> tuple[dict[str, TensorSource], list[Path]]:
    try:
        import torch
    except ImportError as exc:
        raise ToolMissing("--allow-pickle needs torch: pip install 'imp-gguf[reference]'") from exc
    path = safe_child(root, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        raise BadInput(f"{name}: cannot load with weights_only=True: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise BadInput(f"{name}: expected a state dict")
    dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    tensors: dict[str, TensorSource] = {
        k: PickledTensor(k, dtype_names.get(v.dtype, str(v.dtype)), tuple(v.shape), state) for k, v in state.items()
    }
    return tensors, [path]
