"""Reading GGUF files: metadata, tensor types, bits per weight. Bad files give one-line errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from imp_gguf.errors import BadInput


def open_reader(path: str | Path) -> GGUFReader:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} does not exist")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise BadInput(f"{path.name}: cannot read: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise BadInput(f"{path.name} is not a GGUF file")
    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - the reader raises many types on damaged files
        raise BadInput(f"{path.name}: damaged or truncated GGUF ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


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


def read_gguf_meta(path: str | Path, *, skip_arrays_longer_than: int = 64) -> dict[str, Any]:
    r = open_reader(path)
    out: dict[str, Any] = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY and len(f.data) > skip_arrays_longer_than:
            out[name] = f"[{len(f.data)} items]"
            continue
        out[name] = field_value(f)
    return out


def tensor_table(path: str | Path) -> list[dict[str, Any]]:
    r = open_reader(path)
    return [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
             "n_elements": int(t.n_elements), "n_bytes": int(t.n_bytes)} for t in r.tensors]


def summary(path: str | Path) -> dict[str, Any]:
    """Metadata, tensor-type histogram, parameter count and bits per weight of one file."""
    tensors = tensor_table(path)
    meta = read_gguf_meta(path)
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
        "architecture": meta.get("general.architecture"),
        "n_tensors": len(tensors),
        "n_params": n_el,
        "tensor_bytes": n_b,
        "bpw": round(8.0 * n_b / n_el, 4) if n_el else 0.0,
        "tensor_types": dict(sorted(by_type.items())),
        "tensor_type_bytes": dict(sorted(bytes_by_type.items())),
        "metadata": meta,
        "tensors": tensors,
    }


def tensor_data(path: str | Path, name: str) -> np.ndarray:
    r = open_reader(path)
    for t in r.tensors:
        if t.name == name:
            return np.array(t.data)
    raise KeyError(name)
