"""Memory-bandwidth roofline for decode: build/run the bandwidth probe, bytes read per generated token.

Decode reads (almost) every LM weight once per token, plus the KV cache up to the current depth; the
token embedding is a row lookup (one row read, not the matrix). So

    bytes/token  ~= sum(LM tensor bytes) - token_embd bytes + one token_embd row + KV bytes at the depth
    ceiling_tps   = measured bandwidth / bytes per token
    efficiency    = decode_tps * bytes per token / measured bandwidth

The probe (imp_gguf/speed/probe/bandwidth.c, package data) is compiled with the toolchain of the
target: the host C compiler (-march=native like the host llama.cpp build) or aarch64-linux-gnu-gcc
-static (like the linux-arm64 build), and cached next to the llama.cpp builds:
${cache}/build/probe-<target>-<hash>/bandwidth.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import MODEL_TENSOR, TENSOR_NAMES, Keys

from imp_gguf.errors import BadInput, InternalError
from imp_gguf.gguf_info import read_gguf_meta, tensor_table
from imp_gguf.runtime.runner import LocalRunner, require_program
from imp_gguf.runtime.source import cache_dir

# Package data next to this module (pyproject.toml), so a wheel carries it like an editable install.
PROBE_SOURCE = Path(__file__).resolve().parent / "probe" / "bandwidth.c"

COMPILERS: dict[str, list[str]] = {
    "host": ["cc", "-O2", "-march=native", "-pthread"],
    "linux-arm64": ["aarch64-linux-gnu-gcc", "-O2", "-march=armv8.2-a", "-static", "-pthread"],
}


def probe_source() -> Path:
    """imp_gguf/speed/probe/bandwidth.c, shipped in the package (editable install or wheel alike)."""
    if not PROBE_SOURCE.is_file():
        raise InternalError(f"the bandwidth probe source is missing from {PROBE_SOURCE} (broken install?)")
    return PROBE_SOURCE


def build_probe(target: str, *, cache: Path | None = None, force: bool = False) -> Path:
    """Compile the probe for `target` (host | linux-arm64); cached by source + flags hash."""
    if target not in COMPILERS:
        raise BadInput(f"no probe toolchain for target {target!r} (have {', '.join(COMPILERS)})")
    src = probe_source()
    flags = COMPILERS[target]
    key = hashlib.sha256(src.read_bytes() + "\0".join(flags).encode()).hexdigest()[:12]
    out_dir = (cache or cache_dir()) / "build" / f"probe-{target}-{key}"
    exe = out_dir / "bandwidth"
    if exe.is_file() and not force:
        return exe
    require_program(flags[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"bandwidth.tmp{os.getpid()}"
    proc = LocalRunner().run([*flags, "-o", str(tmp), str(src)], timeout=300)
    if proc.returncode != 0:
        raise InternalError(f"building the bandwidth probe for {target} failed: {proc.stderr.strip()[:300]}")
    os.replace(tmp, exe)
    return exe


@dataclass
class LmTraffic:
    weight_bytes: int  # all LM tensors
    embd_bytes: int  # token_embd (read one row per token)
    embd_row_bytes: int
    kv_bytes_per_pos: int  # K+V bytes per context position (all layers)
    n_layer: int
    n_params: int

    def bytes_per_token(self, depth: float) -> float:
        return self.weight_bytes - self.embd_bytes + self.embd_row_bytes + self.kv_bytes_per_pos * depth


def lm_traffic(model: str | Path, kv_type_bytes: float = 2.0) -> LmTraffic:
    """From the GGUF: tensor bytes and the KV geometry (F16 KV by default, as llama.cpp uses)."""
    meta = read_gguf_meta(model)
    arch = meta.get(Keys.General.ARCHITECTURE, "")
    tensors = tensor_table(model)
    weight = sum(t["n_bytes"] for t in tensors)
    embd = next((t for t in tensors if t["name"] == TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight"), None)
    embd_bytes = embd["n_bytes"] if embd else 0
    embd_row = embd_bytes // embd["shape"][1] if embd and len(embd["shape"]) == 2 and embd["shape"][1] else 0

    def key(name: str, default: Any = None) -> Any:
        return meta.get(name.format(arch=arch), default)

    n_layer = int(key(Keys.LLM.BLOCK_COUNT, 0))
    n_embd = int(key(Keys.LLM.EMBEDDING_LENGTH, 0))
    n_head = int(key(Keys.Attention.HEAD_COUNT, 1) or 1)
    n_head_kv = key(Keys.Attention.HEAD_COUNT_KV, n_head)
    if isinstance(n_head_kv, list):
        n_head_kv = max(n_head_kv)
    head_dim = n_embd // n_head if n_head else 0
    kv = int(2 * n_layer * int(n_head_kv) * head_dim * kv_type_bytes)
    return LmTraffic(weight, embd_bytes, embd_row, kv, n_layer, sum(t["n_elements"] for t in tensors))


@dataclass(frozen=True)
class Roofline:
    """Decode against the memory bandwidth (None where unknown)."""

    bytes_per_token: int  # at the mean decode depth
    decode_depth: float
    ceiling_tps: float | None  # bandwidth / bytes per token
    decode_efficiency: float | None  # decode_tps * bytes per token / bandwidth
    achieved_gbps: float | None  # decode_tps * bytes per token

    def to_dict(self) -> dict[str, Any]:
        return {"bytes_per_token": self.bytes_per_token, "decode_depth": self.decode_depth,
                "ceiling_tps": self.ceiling_tps, "decode_efficiency": self.decode_efficiency,
                "achieved_gbps": self.achieved_gbps}


def roofline(decode_tps: float | None, bandwidth_gbps: float | None, traffic: LmTraffic, depth: float) -> Roofline:
    """bytes/token at the mean decode depth, ceiling tokens/s, and decode efficiency (None when unknown)."""
    bpt = traffic.bytes_per_token(depth)
    ceiling = efficiency = achieved = None
    if decode_tps:
        achieved = round(decode_tps * bpt / 1e9, 3)
    if bandwidth_gbps:
        ceiling = round(bandwidth_gbps * 1e9 / bpt, 2)
        if decode_tps:
            efficiency = round(decode_tps * bpt / (bandwidth_gbps * 1e9), 3)
    return Roofline(bytes_per_token=int(bpt), decode_depth=round(depth, 1), ceiling_tps=ceiling,
                    decode_efficiency=efficiency, achieved_gbps=achieved)
