"""A strict, torch-free safetensors reader: validated headers, memory-mapped tensors.

Hostile files are expected (half-downloaded, truncated, crafted), so every offset is checked
against the file before any byte is read, and nothing is ever executed or unpickled.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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
# Float dtypes by their raw bits: (word, mask clearing the sign, smallest non-finite magnitude).
_NONFINITE_BITS: dict[str, tuple[np.dtype[Any], int, int]] = {
    "F16": (np.dtype("<u2"), 0x7FFF, 0x7C00), "BF16": (np.dtype("<u2"), 0x7FFF, 0x7F80),
    "F32": (np.dtype("<u4"), 0x7FFFFFFF, 0x7F800000)}
SCAN_BYTES = 16 << 20  # the window mapped at a time when scanning raw bits


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
        if self.nbytes == 0:  # mmap cannot map zero bytes
            return np.zeros(self.shape, dtype=np.float32 if self.dtype in ("BF16", "F16", "F64") else storage)
        try:
            mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,))
        except (OSError, ValueError) as exc:  # the file shrank or vanished since its header was read
            raise self._changed(exc) from exc
        try:
            raw = np.frombuffer(mm, dtype=storage).reshape(self.shape)
            if self.dtype == "BF16":
                return (raw.astype(np.uint32) << 16).view(np.float32)
            if self.dtype in ("F16", "F64"):
                return raw.astype(np.float32)
            return np.array(raw)
        finally:
            del mm

    def _changed(self, exc: Exception | None = None) -> BadInput:
        why = f" ({exc.__class__.__name__})" if exc else ""
        return BadInput(f"{self.path.name}: cannot read tensor {self.name!r}: the file changed or is truncated{why}")

    def chunks(self, step: int) -> Iterator[np.ndarray]:
        """The flattened tensor, `step` elements at a time, as load() would give it (float32 for floats).

        Each chunk is read with one pread into a fresh buffer, so memory stays at one chunk."""
        storage, size = _DTYPES[self.dtype]
        with open(self.path, "rb", buffering=0) as f:
            for start in range(0, self.numel, step):
                count = min(step, self.numel - start)
                raw = os.pread(f.fileno(), count * size, self.offset + start * size)
                if len(raw) != count * size:
                    raise self._changed()
                words = np.frombuffer(raw, dtype=storage)
                if self.dtype == "BF16":
                    wide = words.astype(np.uint32)
                    wide <<= 16
                    yield wide.view(np.float32)
                elif self.dtype in ("F16", "F64"):
                    yield words.astype(np.float32)
                else:
                    yield words.copy()

    def count_nonfinite(self) -> int:
        """NaN/Inf values of a float tensor, from its raw bits through a mapped window (no copy, no float
        conversion); 0 for other dtypes."""
        if self.dtype not in _NONFINITE_BITS or self.nbytes == 0:
            return 0
        word, mask, threshold = _NONFINITE_BITS[self.dtype]
        bad = 0
        with open(self.path, "rb", buffering=0) as f:
            lead = self.offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page aligned
            buf = np.empty(SCAN_BYTES // word.itemsize, dtype=word)
            for start in range(0, self.nbytes, SCAN_BYTES):
                n = min(SCAN_BYTES, self.nbytes - start)
                try:
                    mm = mmap.mmap(f.fileno(), lead + n, prot=mmap.PROT_READ, offset=self.offset + start - lead)
                except (OSError, ValueError) as exc:
                    raise self._changed(exc) from exc
                try:
                    bits = np.frombuffer(mm, dtype=word, count=n // word.itemsize, offset=lead)
                    out = buf[:bits.size]
                    np.bitwise_and(bits, mask, out=out)
                    del bits
                    if int(out.max()) >= threshold:
                        bad += int(np.count_nonzero(out >= threshold))
                finally:
                    mm.close()
        return bad


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
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise BadInput(f"{name}: safetensors header gives the key {exc.args[0]!r} twice") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
        # Strict JSON types, as the format demands: int() would quietly accept 1.5, "4", true or 1e400.
        ok = (isinstance(meta, dict) and isinstance(meta.get("dtype"), str)
              and isinstance(meta.get("shape"), list) and all(_is_int(d) for d in meta["shape"])
              and isinstance(meta.get("data_offsets"), list) and len(meta["data_offsets"]) == 2
              and all(_is_int(x) for x in meta["data_offsets"]))
        if not ok:
            raise BadInput(f"{name}: malformed header entry for tensor {tname!r}")
        dtype, shape = meta["dtype"], tuple(meta["shape"])
        begin, end = meta["data_offsets"]
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


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object hook: a key given twice could hide one tensor behind another, so refuse it."""
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out
