"""Reading GGUF files: metadata, tensor types, bits per weight. Bad files give one-line errors."""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from gguf import (GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType,
                  GGUFReader, GGUFValueType, Keys, LlamaFileType)

from imp_gguf.errors import BadInput


def open_reader(path: str | Path) -> GGUFReader:
    """A GGUFReader for a file that check_gguf has walked first (gguf-py trusts counts and offsets)."""
    path = Path(path)
    check_gguf(path)
    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - the reader raises many types on damaged files
        raise BadInput(f"{path.name}: damaged or truncated GGUF ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


MMPROJ_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]  # "clip": general.architecture of every mmproj
# Value types by size; STRING and ARRAY are walked item by item.
_SCALAR_SIZE = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
                GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
                GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
_MAX_NAME = 64  # GGML_MAX_NAME, including the terminating NUL
_MAX_DIMS = 4


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Walk a GGUF header with every count and offset checked against the file; BadInput on any problem.

    Mirrors the checks of llama.cpp's gguf.cpp (versions 2-3, no nested arrays, no duplicate keys or
    tensor names, a power-of-two alignment, known tensor types, whole blocks per row, tensors packed
    in order at aligned offsets), plus one it leaves to the model loader: every tensor's bytes lie
    inside the file. Both gguf-py and llama.cpp may then read the file without looping on a forged
    count, reading past its end or aborting the process. Returns the scalar keys and short strings
    (architecture, name, sizes...) it walked past, which spares callers a full parse.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise BadInput(f"{path} does not exist")
    if not path.is_file():
        raise BadInput(f"{path} is not a file")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise BadInput(f"{name} is not a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _walk(mm, name)
    except OSError as exc:
        raise BadInput(f"{name}: cannot read: {exc.strerror or exc}") from exc


def _walk(buf: Any, name: str) -> dict[str, Any]:
    size = len(buf)
    pos = 4

    def take(n: int, what: str) -> int:
        nonlocal pos
        if n < 0 or pos + n > size:
            raise BadInput(f"{name}: truncated or damaged GGUF: {what} runs past the end of the file ({size} bytes)")
        start, pos = pos, pos + n
        return start

    def u32(what: str) -> int:
        return struct.unpack_from("<I", buf, take(4, what))[0]

    def u64(what: str) -> int:
        return struct.unpack_from("<Q", buf, take(8, what))[0]

    def string(what: str) -> bytes:
        n = u64(f"length of {what}")
        return bytes(buf[take(n, what):pos])

    def text(what: str) -> str:
        raw = string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{name}: damaged GGUF: {what} is not UTF-8") from exc

    version = u32("version")
    if version not in (2, 3):
        raise BadInput(f"{name}: unsupported GGUF version {version} (llama.cpp reads versions 2 and 3)")
    n_tensors, n_kv = u64("tensor count"), u64("key count")
    # Each key takes at least 13 bytes and each tensor info 24: a forged count fails here, not in a loop.
    if n_kv * 13 > size - pos or n_tensors * 24 > size - pos:
        raise BadInput(f"{name}: damaged GGUF: {n_kv} keys and {n_tensors} tensors cannot fit in {size} bytes")
    keys: dict[str, tuple[int, Any]] = {}
    for i in range(n_kv):
        key = text(f"key {i}")
        if not key or key in keys:
            raise BadInput(f"{name}: damaged GGUF: key {i} {key!r} is empty or repeated")
        vtype = u32(f"type of {key}")
        value: Any = None
        if vtype == GGUFValueType.ARRAY:
            itype, count = u32(f"item type of {key}"), u64(f"length of {key}")
            if itype == GGUFValueType.STRING:
                if count * 8 > size - pos:
                    raise BadInput(f"{name}: damaged GGUF: array {key} of {count} strings cannot fit in the file")
                for j in range(count):
                    string(f"{key}[{j}]")
            elif itype in _SCALAR_SIZE:
                take(count * _SCALAR_SIZE[GGUFValueType(itype)], f"array {key}")
            else:
                raise BadInput(f"{name}: damaged GGUF: array {key} has item type {itype} (nested or unknown)")
        elif vtype == GGUFValueType.STRING:
            raw = string(f"value of {key}")
            if len(raw) <= 256:
                value = raw.decode("utf-8", errors="replace")
        elif vtype in _SCALAR_SIZE:
            n = _SCALAR_SIZE[GGUFValueType(vtype)]
            value = int.from_bytes(buf[take(n, f"value of {key}"):pos], "little")
        else:
            raise BadInput(f"{name}: damaged GGUF: key {key} has unknown type {vtype}")
        keys[key] = (vtype, value)
    alignment = GGUF_DEFAULT_ALIGNMENT
    if Keys.General.ALIGNMENT in keys:
        vtype, alignment = keys[Keys.General.ALIGNMENT]
        if vtype != GGUFValueType.UINT32 or alignment == 0 or alignment & (alignment - 1):
            raise BadInput(f"{name}: damaged GGUF: {Keys.General.ALIGNMENT} must be a power of two (uint32)")
    infos: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        tname = text(f"name of tensor {i}")
        if len(tname.encode()) >= _MAX_NAME or tname in seen:
            raise BadInput(f"{name}: damaged GGUF: tensor name {tname[:80]!r} is too long or repeated")
        seen.add(tname)
        n_dims = u32(f"rank of {tname}")
        if n_dims > _MAX_DIMS:
            raise BadInput(f"{name}: damaged GGUF: tensor {tname!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [u64(f"shape of {tname}") for _ in range(n_dims)]
        n_el = 1
        for d in dims:
            n_el *= d
        if any(d >= 2**63 for d in dims) or n_el >= 2**63:
            raise BadInput(f"{name}: damaged GGUF: tensor {tname!r} has an impossible shape {dims}")
        ttype = u32(f"type of {tname}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise BadInput(f"{name}: damaged GGUF: tensor {tname!r} has unknown type {ttype}") from None
        if dims and dims[0] % block:
            raise BadInput(f"{name}: damaged GGUF: tensor {tname!r} rows of {dims[0]} are not whole blocks of {block}")
        infos.append((tname, u64(f"offset of {tname}"), n_el // block * type_size))
    data_start = -(-pos // alignment) * alignment
    expected = 0
    for tname, offset, nbytes in infos:
        if offset != expected:
            raise BadInput(f"{name}: damaged GGUF: tensor {tname!r} is at offset {offset}, expected {expected}")
        if data_start + offset + nbytes > size:
            raise BadInput(f"{name}: truncated GGUF: tensor {tname!r} ends at byte {data_start + offset + nbytes} "
                           f"of a {size}-byte file")
        expected = offset + -(-nbytes // alignment) * alignment
    return {k: v for k, (_t, v) in keys.items() if v is not None}


def field_value(field: Any) -> Any:
    if not field.types:
        return None
    t = field.types[0]
    if t == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if t == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def read_gguf_meta(path: str | Path, *, skip_arrays_longer_than: int = 64, reader: GGUFReader | None = None) -> dict[str, Any]:
    r = reader or open_reader(path)
    out: dict[str, Any] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY and len(f.data) > skip_arrays_longer_than:
            out[name] = f"[{len(f.data)} items]"
            continue
        out[name] = field_value(f)
    return out


def tensor_table(path: str | Path, *, reader: GGUFReader | None = None) -> list[dict[str, Any]]:
    r = reader or open_reader(path)
    return [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
             "n_elements": int(t.n_elements), "n_bytes": int(t.n_bytes)} for t in r.tensors]


def file_type_name(value: Any) -> str | None:
    """general.file_type as llama.cpp names it (15 -> "Q4_K_M", 0 -> "F32"), None if unknown."""
    try:
        name = LlamaFileType(int(value)).name
    except (TypeError, ValueError):
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def summary(path: str | Path) -> dict[str, Any]:
    """Metadata, tensor-type histogram, parameter count and bits per weight of one file."""
    reader = open_reader(path)  # parsing is the slow part on large vocabularies: once
    tensors = tensor_table(path, reader=reader)
    meta = read_gguf_meta(path, reader=reader)
    n_el = sum(t["n_elements"] for t in tensors)
    n_b = sum(t["n_bytes"] for t in tensors)
    by_type: Counter[str] = Counter()
    bytes_by_type: Counter[str] = Counter()
    for t in tensors:
        by_type[t["type"]] += 1
        bytes_by_type[t["type"]] += t["n_bytes"]
    return {
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "architecture": meta.get(Keys.General.ARCHITECTURE),
        "file_type": file_type_name(meta.get(Keys.General.FILE_TYPE)),
        "n_tensors": len(tensors),
        "n_params": n_el,
        "tensor_bytes": n_b,
        "bpw": round(8.0 * n_b / n_el, 4) if n_el else 0.0,
        "tensor_types": dict(sorted(by_type.items())),
        "tensor_type_bytes": dict(sorted(bytes_by_type.items())),
        "metadata": meta,
        "tensors": tensors,
    }
