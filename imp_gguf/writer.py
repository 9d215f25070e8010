"""The one GGUF writer: streams tensors one at a time into a temporary file, renames at the end.

Peak memory stays near the largest tensor (plus its converted copy). An existing output is never
replaced without force; on any failure (bad tensor, full disk, Ctrl-C, SIGTERM) the temporary file
is removed and nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
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
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a file; choose another output name")
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
        with _signals_held():  # Ctrl-C between two renames would leave half a pair
            for p in paths:
                if p.exists() and not force:  # appeared while we worked
                    raise OutputExists(f"{p} appeared during conversion; pass --force to overwrite it")
            for tmp, p in zip(tmps, paths):
                os.replace(tmp, p)
    finally:
        with _signals_held():  # ... and during cleanup would leave a temporary file
            for tmp in tmps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM over a few quick file operations, then deliver them as usual.

    Python-level, not pthread_sigmask: a blocked main thread would let the kernel hand the signal
    to another thread (numpy's BLAS pool), and Python would still run the handler right away.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in pending:
            signal.raise_signal(s)


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
    """Stream one GGUF file to `tmp` (a name from atomic_outputs); returns its size in bytes.

    A failed write (full disk, file size limit, I/O error) is reported as BadInput naming the folder;
    atomic_outputs then removes the partial file.
    """
    try:
        return _write_gguf(tmp, arch, add_kv, tensors, progress)
    except OSError as exc:
        raise BadInput(_write_failure(exc, tmp)) from exc


def _write_failure(exc: OSError, tmp: Path) -> str:
    if exc.errno is not None:
        reason = exc.strerror or os.strerror(exc.errno)
    else:  # numpy's tofile reports a short write without errno: "N requested and M written"
        try:
            full = shutil.disk_usage(tmp.parent).free < 1024 * 1024
        except OSError:
            full = False
        reason = os.strerror(errno.ENOSPC) if full else f"short write ({exc}; file size limit reached?)"
    return f"cannot write to {tmp.parent}: {reason}"


def _write_gguf(tmp: Path, arch: str, add_kv: Callable[[GGUFWriter], None], tensors: list[PlannedTensor],
                progress: Callable[[int], None] | None) -> int:
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
            try:
                arr = t.load()
            except OSError as exc:  # a read error of the checkpoint, not of the output
                raise BadInput(f"cannot read tensor {t.src!r}: {exc.strerror or exc}") from exc
            data = encode(arr, t.gtype, t.src)
            del arr
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
