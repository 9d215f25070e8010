"""The one GGUF writer: streams tensors one at a time into a temporary file, renames at the end.

A tensor written in its stored type (fp16 -> F16, bf16 -> BF16, f32 -> F32) is copied from the
safetensors file to the GGUF between file descriptors (copy_file_range, else sendfile, else a chunked
pread/pwrite), after a scan of its raw bits for NaN/Inf; every other tensor is converted in chunks of
CHUNK_ELEMENTS. Peak memory is one chunk, whatever the model size. An existing output is never
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.policy import copies_verbatim

CHUNK_ELEMENTS = 1 << 22  # a conversion holds 4 Mi elements at a time (16 MB as float32)
COPY_BYTES = 64 << 20  # bytes per copy call, so Ctrl-C is seen between calls
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF,
                   errno.EPERM}  # the kernel cannot copy between these two files: try the next way


@dataclass
class PlannedTensor:
    src: str
    dst: str
    shape: tuple[int, ...]
    gtype: GGMLQuantizationType
    load: Callable[[], np.ndarray]
    source: Any = None  # None, or a safetensors TensorRef: enables the verbatim copy and chunked reads

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


def staging_folder(dest: Path, force: bool) -> Path:
    """A fresh DEST.tmp beside DEST for a folder output (checkpoint fixtures): refuses an existing DEST
    without force; the caller fills it and renames it onto DEST when complete."""
    if dest.exists():
        if not force:
            raise OutputExists(f"{dest} exists: pass --force to replace it")
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


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
        for signum in pending:
            signal.raise_signal(signum)


def nonfinite(name: str, bad: int) -> BadInput:
    return BadInput(f"tensor {name!r} has {bad} NaN/Inf values")


def encode(arr: np.ndarray, gtype: GGMLQuantizationType, name: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise nonfinite(name, int((~np.isfinite(arr)).sum()))
    if gtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if gtype == GGMLQuantizationType.F16:
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
            if t.gtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                dtype = np.float32 if t.gtype == GGMLQuantizationType.F32 else np.float16
                w.add_tensor_info(t.dst, t.shape, np.dtype(dtype), t.nbytes)
            else:
                byte_shape = (*t.shape[:-1], t.nbytes // int(np.prod(t.shape[:-1], dtype=np.int64)))
                w.add_tensor_info(t.dst, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.gtype)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None and len(w.fout) == 1
        fout = w.fout[0]
        fout.flush()  # from here on, tensor data goes to the descriptor at explicit offsets
        fd, pos = fout.fileno(), fout.tell()
        # The NaN/Inf scans of verbatim tensors run on a second thread, ahead of the copies (numpy and
        # copy_file_range both release the GIL): the scan costs no wall time where a core is free.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imp-gguf-scan") as pool:
            scans = {id(t): pool.submit(t.source.count_nonfinite) for t in tensors if _verbatim(t)}
            try:
                for t in tensors:
                    pos = _pad(fd, pos, w.data_alignment)
                    pos += _write_tensor(fd, pos, t, scans.get(id(t)))
                    if progress:
                        progress(t.nbytes)
            finally:
                for f in scans.values():
                    f.cancel()  # after a failure: no more scans than the one under way
        _pad(fd, pos, w.data_alignment)
        os.fsync(fd)
    finally:
        w.close()
    size = tmp.stat().st_size
    return size


def _pad(fd: int, pos: int, align: int) -> int:
    """Zeros up to the next multiple of align (as GGUFWriter pads); returns the aligned offset."""
    end = GGUFWriter.ggml_pad(pos, align)
    if end > pos:
        _pwrite_all(fd, bytes(end - pos), pos)
    return end


def _pwrite_all(fd: int, data: Any, pos: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _verbatim(t: PlannedTensor) -> bool:
    """Whether the tensor's stored bytes are its GGUF bytes (a safetensors tensor in the written type)."""
    return t.source is not None and hasattr(t.source, "path") and copies_verbatim(t.source.dtype, t.gtype)


def _write_tensor(fd: int, pos: int, t: PlannedTensor, scan: Future | None = None) -> int:
    """One tensor's bytes at offset pos: copied verbatim if its stored type is its GGUF type (`scan`: its
    NaN/Inf count under way), else converted chunk by chunk. Returns the bytes written (checked)."""
    if _verbatim(t):
        ref = t.source
        _copy_range(ref, fd, pos)
        bad = scan.result() if scan is not None else ref.count_nonfinite()
        if bad:
            raise nonfinite(t.src, bad)
        written = ref.nbytes
    else:
        written = 0
        for arr in _chunks(t):
            data = encode(arr, t.gtype, t.src)
            del arr
            _pwrite_all(fd, data, pos + written)
            written += data.nbytes
    if written != t.nbytes:
        raise BadInput(f"tensor {t.src!r}: {written} bytes after conversion, expected {t.nbytes}")
    return written


def _chunks(t: PlannedTensor) -> Iterator[np.ndarray]:
    """The tensor as (rows, row length) pieces of about CHUNK_ELEMENTS (whole rows, so every GGML block
    and gguf-py's row groups stay as in a whole-tensor conversion); a vector in flat pieces."""
    if len(t.shape) >= 2:
        cols = t.shape[-1]
        step = max(1, CHUNK_ELEMENTS // cols) * cols if cols else CHUNK_ELEMENTS
    else:
        block = GGML_QUANT_SIZES[t.gtype][0]
        cols, step = 0, max(block, CHUNK_ELEMENTS // block * block)
    try:
        if t.source is not None and hasattr(t.source, "chunks"):
            pieces: Iterator[np.ndarray] = t.source.chunks(step)
        else:
            flat = t.load().reshape(-1)
            pieces = (flat[i:i + step] for i in range(0, flat.size, step))
        for piece in pieces:
            yield piece.reshape(-1, cols) if cols else piece
    except OSError as exc:  # a read error of the checkpoint, not of the output
        raise BadInput(f"cannot read tensor {t.src!r}: {exc.strerror or exc}") from exc


def _copy_range(ref: Any, out_fd: int, pos: int) -> None:
    """ref's bytes to out_fd at pos without passing through Python: copy_file_range, or sendfile when
    the kernel cannot (another file system), or pread/pwrite of COPY_BYTES when neither works."""
    try:
        src = open(ref.path, "rb", buffering=0)
    except OSError as exc:
        raise BadInput(f"cannot read tensor {ref.name!r}: {exc.strerror or exc}") from exc
    way = ["copy_file_range"]  # the first way that works for this pair of files
    with src:
        done = 0
        while done < ref.nbytes:
            n = _copy_once(way, src.fileno(), ref.offset + done, out_fd, pos + done,
                           min(COPY_BYTES, ref.nbytes - done))
            if n == 0:  # the source ended early
                raise ref._changed()
            done += n


def _copy_once(way: list[str], in_fd: int, in_pos: int, out_fd: int, out_pos: int, count: int) -> int:
    if way[0] == "copy_file_range":
        try:
            return os.copy_file_range(in_fd, out_fd, count, in_pos, out_pos)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            way[0] = "sendfile"
    if way[0] == "sendfile":
        try:
            os.lseek(out_fd, out_pos, os.SEEK_SET)
            return os.sendfile(out_fd, in_fd, in_pos, count)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            way[0] = "pread"
    data = os.pread(in_fd, count, in_pos)
    _pwrite_all(out_fd, data, out_pos)
    return len(data)


def kv_adder(*parts: Callable[[Any], None]) -> Callable[[GGUFWriter], None]:
    def add(w: GGUFWriter) -> None:
        for p in parts:
            p(w)
    return add
