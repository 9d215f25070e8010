"""Open an Imp checkpoint folder: config, validated tensor index, tokenizer files.

Nothing from the checkpoint is executed: no remote code, no auto_map imports, and pickle weights
are refused unless the user opts in, and then loaded with torch.load(weights_only=True).
Every file an index names must resolve inside the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imp_gguf.errors import BadInput, ToolMissing
from imp_gguf.hub import (HUB_ID, HubSource, cache_source, is_cache_link, download, verify_weights, remote_tensors,
                          listed_files)
from imp_gguf.safetensors_io import read_header
from imp_gguf.spelling import closest

PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "added_tokens.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "generation_config.json")


class TensorSource(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...

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
    hub: HubSource | None = None  # repo and commit when root is a snapshot of the Hugging Face cache

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

    def license(self) -> str | None:
        """The license the checkpoint's model card states (`license:` in README.md's front matter), if any."""
        path = self.file("README.md")
        if path is None:
            return None
        front = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---", path.read_text(encoding="utf-8", errors="replace")[:65536],
                         re.S)
        for line in front[1].splitlines() if front else []:
            key, _, value = line.partition(":")
            if key.strip() == "license" and value.strip():
                return value.strip().strip("'\"")
        return None

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
    """Resolve relname inside root; refuse absolute paths, '..' escapes and symlinks leaving root,
    except the Hugging Face cache's own links from a snapshot into its repo's blobs/ (hub.is_cache_link)."""
    if not relname or Path(relname).is_absolute():
        raise BadInput(f"refusing path {relname!r}: it must be relative to the checkpoint folder")
    root_r = root.resolve()
    target = (root / relname).resolve()
    if target != root_r and root_r not in target.parents and not is_cache_link(root, relname):
        raise BadInput(f"refusing {relname!r}: it points outside the checkpoint folder")
    return target


MAX_JSON_BYTES = 256 * 1024 * 1024  # the largest real tokenizer.json is ~10 MB


def _load_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise BadInput(f"{path.name}: {path.stat().st_size} bytes is too large for a JSON file of a checkpoint")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{path.name}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path.name}: expected a JSON object")
    return data


# config.json keys the converter reads, by the JSON type they must have (null means absent). Checked
# once on open, so a hand-edited or hostile config gives one clear line, not a TypeError in a family.
_COUNT_KEYS = ("n_embd", "hidden_size", "n_layer", "num_hidden_layers", "n_head", "num_attention_heads",
               "num_key_value_heads", "n_inner", "intermediate_size", "n_positions", "max_position_embeddings",
               "original_max_position_embeddings", "vocab_size", "mm_hidden_size", "image_size", "patch_size")
_INT_KEYS = ("rotary_dim", "sliding_window", "mm_vision_select_layer", "image_token_index")
_FLOAT_KEYS = ("partial_rotary_factor", "rope_theta", "layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps")
_STR_KEYS = ("model_type", "mm_projector_type", "image_aspect_ratio")
_NESTED = ("vision_tower_config", "vision_config", "rope_parameters", "rope_scaling")


def check_config(config: dict[str, Any], where: str = "config.json") -> None:
    """Raise BadInput naming the first known key whose value has the wrong type or range."""
    for key, value in config.items():
        if value is None:
            continue
        what = None
        if key in _COUNT_KEYS or key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool):
                what = "an integer"
            elif key in _COUNT_KEYS and value <= 0 or key in ("rotary_dim", "sliding_window") and value < 0:
                what = "a positive integer" if key in _COUNT_KEYS else "a non-negative integer"
        elif key in _FLOAT_KEYS:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                what = "a finite number"
            elif value < 0:
                what = "a non-negative number"
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                what = "a string"
        elif key in _NESTED:
            if not isinstance(value, dict):
                what = "a JSON object"
            else:
                check_config(value, f"{where}: {key}")
                continue
        if what:
            raise BadInput(f"{where}: {key} must be {what}, not {json.dumps(value)[:40]}")


# What a hub download fetches: exactly the files the converter reads (never remote code), the model
# card for its license, and the weights unless metadata_only; pickle weights only with allow_pickle.
HUB_FILES = ["config.json", "model.safetensors.index.json", "README.md", *TOKENIZER_FILES]
HUB_WEIGHTS = ["*.safetensors"]


def resolve_source(spec: str, *, metadata_only: bool = False, allow_pickle: bool = False) -> Path:
    """A local folder, or a hub repo id (org/name[@revision]) fetched through huggingface_hub.

    A string that could be a relative path is read as one first: if it names no folder, the error says
    so (with the nearest name in its parent folder), and the hub reading is offered only as an
    alternative. metadata_only fetches the config, index and tokenizer files, never the weights.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise BadInput(f"{spec}: not a checkpoint folder")
    missing = f"{spec}: no such checkpoint folder{_nearest(path)}"
    if not HUB_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise BadInput(missing)
    try:
        local = download(spec, HUB_FILES if metadata_only else HUB_FILES + HUB_WEIGHTS)
        if allow_pickle and not metadata_only and not any(local.glob("*.safetensors")):
            local = download(spec, [*HUB_FILES, *PICKLE_NAMES])  # no safetensors: the opted-in pickle files
    except BadInput as exc:
        if not path.parent.is_dir() or path.parent == Path("."):
            raise
        # "models/X" next to an existing models/ folder is more likely a mistyped path than a hub repo
        raise BadInput(f"{missing}; or, if you meant the hub repo {spec}, check its name and the network "
                       f"({exc})") from exc
    verify_weights(local)
    return local


def _nearest(path: Path) -> str:
    """ " (did you mean X?)" for a near miss among the folders next to `path`."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    guess = closest(path.name, siblings)
    return f" (did you mean {parent / guess}?)" if guess else ""


def open_checkpoint(spec: str | Path, *, allow_pickle: bool = False, metadata_only: bool = False) -> Checkpoint:
    """metadata_only (dry runs): a hub id is planned from its config, index, tokenizer and the safetensors
    headers read online; its weights are never downloaded (the tensors cannot be loaded)."""
    root = resolve_source(str(spec), metadata_only=metadata_only, allow_pickle=allow_pickle)
    cfg_path = safe_child(root, "config.json")  # before any stat: a link leaving the folder is refused
    if not cfg_path.is_file():
        raise BadInput(f"{root}: no config.json (is this an Imp checkpoint folder?)")
    config = _load_json(cfg_path)
    check_config(config)
    hub = cache_source(root)
    remote = metadata_only and not Path(str(spec)).expanduser().is_dir() and hub is not None
    tensors: dict[str, TensorSource]
    files: list[Path]
    if remote and hub is not None and not _weights_at_hand(root):
        tensors, files = dict(remote_tensors(hub, _shard_names(root))), []
    else:
        try:
            tensors, files = _index_weights(root, allow_pickle)
        except BadInput as exc:
            _pickle_only(hub, allow_pickle, exc)
            raise
    return Checkpoint(root=root, config=config, tensors=tensors, weight_files=files, hub=hub)


def _pickle_only(hub: HubSource | None, allow_pickle: bool, exc: BadInput) -> None:
    """A hub repo whose only weights are pickles was downloaded without them: say so, not "no weights"."""
    if hub is None or allow_pickle:
        return
    pickles = [n for n in listed_files(hub) if n in PICKLE_NAMES]
    if pickles:
        raise BadInput(f"{hub.repo} has pickle weights only ({', '.join(pickles)}), which are refused (they can "
                       "run code): pass --allow-pickle to download them and load them with "
                       "torch.load(weights_only=True)") from exc


def _shard_names(root: Path) -> list[str]:
    """The safetensors files an index names, or the single model.safetensors."""
    index = safe_child(root, "model.safetensors.index.json")
    if not index.is_file():
        return ["model.safetensors"]
    weight_map = _load_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise BadInput("model.safetensors.index.json: no weight_map of shard names")
    names = sorted(set(weight_map.values()))
    for name in names:
        safe_child(root, name)
    return names


def _weights_at_hand(root: Path) -> bool:
    """Every weight file is already in the cache (an earlier full download): a dry run reads it there."""
    return all((root / name).is_file() for name in _shard_names(root))


def _index_weights(root: Path, allow_pickle: bool) -> tuple[dict[str, TensorSource], list[Path]]:
    index = safe_child(root, "model.safetensors.index.json")
    if index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BadInput("model.safetensors.index.json: no weight_map")
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise BadInput("model.safetensors.index.json: shard names must be strings")
        shards = sorted(set(weight_map.values()))
        files = []
        for shard in shards:
            p = safe_child(root, shard)
            if not p.is_file():
                raise BadInput(f"shard {shard} named by model.safetensors.index.json is missing")
            files.append(p)
        tensors: dict[str, TensorSource] = {}
        for p in files:
            for name, ref in read_header(p).items():
                tensors[name] = ref
        for name, shard in weight_map.items():
            stored = tensors.get(name)
            if stored is None or getattr(stored, "path", None) != safe_child(root, shard):
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
        if pickles[0].endswith(".index.json"):
            raise BadInput(f"{pickles[0]}: sharded pickle weights are not supported; convert them to safetensors")
        return _load_pickle(root, pickles[0])
    raise BadInput(f"{root}: no weights found (model.safetensors, its index, or shards)")


def _load_pickle(root: Path, name: str) -> tuple[dict[str, TensorSource], list[Path]]:
    try:
        import torch
    except ImportError as exc:
        raise ToolMissing("--allow-pickle needs torch: pip install 'imp-gguf[reference]'") from exc
    path = safe_child(root, name)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # legacy (pre-zip) files cannot be memory-mapped; still weights_only
                if "mmap" not in str(exc):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text suggests weights_only=False; never that: name what was refused instead.
        why = next((ln.strip().rstrip(".") for ln in str(exc).splitlines() if "nsupported" in ln), "unsupported content")
        raise BadInput(f"{name}: refused: it holds more than plain tensors, possibly code ({why})") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{name}: cannot load with weights_only=True: {first}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BadInput(f"{name}: expected a state dict of named tensors")
    dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    tensors: dict[str, TensorSource] = {
        k: PickledTensor(k, dtype_names.get(v.dtype, str(v.dtype)), tuple(v.shape), state) for k, v in state.items()
    }
    return tensors, [path]
