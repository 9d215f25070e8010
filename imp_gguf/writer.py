"""The one GGUF writer: streams tensors one at a time into a temporary file, renames at the end.

Peak memory stays near the largest tensor (plus its converted copy). An existing output is never
replaced without force; on any failure (bad tensor, full disk, Ctrl-C, SIGTERM) the temporary file
is removed and nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFWriter
from gguf.quants import quantize

from imp_gguf.errors import BadInput, OutputExists


@dataclass
class PlannedTensor:
    src: str
    dst: str
    shape: tuple[int, ...]
    gtype: T
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.gtype]
        return int(np.prod(self.shape)) // block * size


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExists(f"{path} exists; pass --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise BadInput(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"output folder {parent} is not writable")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def atomic_outputs(paths: list[Path], force: bool) -> Iterator[list[Path]]:
    """Yield temporary paths in the same folders; rename them onto `paths` only if the body succeeds.

    All outputs are checked before any work starts, so a refused overwrite costs nothing.
    """
    for p in paths:
        check_output(p, force)
    tmps = [temp_name(p) for p in paths]
    try:
        yield tmps
        for p in paths:
            if p.exists() and not force:  # appeared while we worked
                raise OutputExists(f"{p} appeared during conversion; pass --force to overwrite it")
        for tmp, p in zip(tmps, paths):
            os.replace(tmp, p)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def encode(arr: np.ndarray, gtype: T, name: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise BadInput(f"tensor {name!r} has {bad} NaN/Inf values")
    if gtype == T.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if gtype == T.F16:
        return np.ascontiguousarray(arr, dtype=np.float16)
    return quantize(np.ascontiguousarray(arr, dtype=np.float32), gtype)


def write_gguf(tmp: Path, arch: str, add_kv: Callable[[GGUFWriter], None], tensors: list[PlannedTensor], *,
               progress: Callable[[int], None] | None = None) -> int:
    """Stream one GGUF file to `tmp` (a name from atomic_outputs); returns its size in bytes."""
    w = GGUFWriter(path=None, arch=arch)
    try:
        add_kv(w)
        for t in tensors:
            if t.gtype in (T.F32, T.F16):
                w.add_tensor_info(t.dst, t.shape, np.dtype(np.float32 if t.gtype == T.F32 else np.float16), t.nbytes)
            else:
                byte_shape = (*t.shape[:-1], t.nbytes // int(np.prod(t.shape[:-1], dtype=np.int64)))
                w.add_tensor_info(t.dst, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.gtype)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tensors:
            data = encode(t.load(), t.gtype, t.src)
            if data.nbytes != t.nbytes:
                raise BadInput(f"tensor {t.src!r}: {data.nbytes} bytes after conversion, expected {t.nbytes}")
            w.write_tensor_data(data)
            if progress:
                progress(data.nbytes)
            del data
        for f in w.fout or []:
            f.flush()
            os.fsync(f.fileno())
    finally:
        w.close()
    size = tmp.stat().st_size
    return size


def kv_adder(*parts: Callable[[Any], None]) -> Callable[[GGUFWriter], None]:
    def add(w: GGUFWriter) -> None:
        for p in parts:
            p(w)
    return add
