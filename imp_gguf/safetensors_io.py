"""A strict, torch-free safetensors reader: validated headers, memory-mapped tensors.

Hostile files are expected (half-downloaded, truncated, crafted), so every offset is checked
against the file before any byte is read, and nothing is ever executed or unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imp_gguf.errors import BadInput

# safetensors dtype -> (numpy storage dtype, bytes per element)
_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # stored as raw 16-bit words, widened to f32 on load
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives; reading it maps only its own bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute file offset
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> np.ndarray:
        """Return the tensor as float32 (floats) or its integer dtype; a fresh array, not a view."""
        storage, _ = _DTYPES[self.dtype]
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,))
        try:
            raw = np.frombuffer(mm, dtype=storage).reshape(self.shape)
            if self.dtype == "BF16":
                return (raw.astype(np.uint32) << 16).view(np.float32)
            if self.dtype in ("F16", "F64"):
                return raw.astype(np.float32)
            return np.array(raw)
        finally:
            del mm


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate a safetensors header; raise BadInput naming the file on any problem."""
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInput(f"{name}: truncated safetensors file (no header)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES or 8 + hlen > size:
                raise BadInput(f"{name}: safetensors header length {hlen} runs past the file ({size} bytes)")
            raw = f.read(hlen)
    except OSError as exc:
        raise BadInput(f"{name}: cannot read: {exc.strerror}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{name}: safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise BadInput(f"{name}: safetensors header is not a JSON object")
    data_start = 8 + hlen
    data_len = size - data_start
    refs: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for tname, meta in header.items():
        if tname == "__metadata__":
            continue
        try:
            dtype = meta["dtype"]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{name}: malformed header entry for tensor {tname!r}") from exc
        if dtype not in _DTYPES:
            raise BadInput(f"{name}: tensor {tname!r} has unsupported dtype {dtype}")
        if any(d < 0 for d in shape):
            raise BadInput(f"{name}: tensor {tname!r} has a negative dimension")
        expected = math.prod(shape) * _DTYPES[dtype][1]
        if begin < 0 or end < begin or end - begin != expected:
            raise BadInput(f"{name}: tensor {tname!r} offsets [{begin},{end}) do not match shape {list(shape)} {dtype}")
        if end > data_len:
            raise BadInput(f"{name}: truncated file: tensor {tname!r} ends at byte {end} of a {data_len}-byte data section")
        spans.append((begin, end, tname))
        refs[tname] = TensorRef(tname, dtype, shape, path, data_start + begin, end - begin)
    spans.sort()
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadInput(f"{name}: tensors {n0!r} and {n1!r} overlap in the file")
    return refs
