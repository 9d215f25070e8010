"""Bounded fuzzing of the file parsers: mutated GGUF and safetensors headers.

Seeded, so a failure names a case that reproduces: random byte flips in the header, truncations
anywhere, and forged length/count fields (every u32/u64 field of the GGUF header; the length
prefix and the numbers of the safetensors JSON). Each case has a 5 s alarm; the whole file stays
well under a minute. The only exception allowed to escape is BadInput, and the CLI must answer
with exit 0 or 2 and at most one error line.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from imp_gguf import gguf_info
from imp_gguf.cli.main import main
from imp_gguf.errors import BadInput
from tests.hostile.conftest import Timeout, alarm_after, hostile_checkpoint

SHARD = "model-00002-of-00002.safetensors"
CASE_SECONDS = 5
INTERESTING = [0, 1, 7, 8, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.fixture(scope="session")
def fuzz_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from imp_gguf.convert import convert

    src = hostile_checkpoint(tmp_path_factory)
    r = convert(src, tmp_path_factory.mktemp("fuzz-gguf"))
    return {"checkpoint": src, "model": r.model, "mmproj": r.mmproj}


def run_cases(n: int, make: Callable[[int], bytes], target: Path, check: Callable[[Path], None],
              failures_dir: Path) -> dict[str, int]:
    """Write n mutated files to `target` and run `check`; any escape but BadInput is a failure."""
    outcome = {"ok": 0, "refused": 0}
    failures = []
    for i in range(n):
        data = make(i)
        target.write_bytes(data)
        try:
            with alarm_after(CASE_SECONDS):
                check(target)
            outcome["ok"] += 1
        except BadInput as exc:
            assert str(exc) and "\n" not in str(exc).strip(), str(exc)
            outcome["refused"] += 1
        except Timeout:
            failures.append((i, f"no answer within {CASE_SECONDS} s"))
        except Exception as exc:  # noqa: BLE001 - exactly what this test hunts
            failures.append((i, f"{type(exc).__name__}: {exc}"))
        if failures and failures[-1][0] == i:
            failures_dir.mkdir(exist_ok=True)
            (failures_dir / f"case-{i}{target.suffix}").write_bytes(data)
    assert not failures, f"{len(failures)} cases failed (inputs kept in {failures_dir}): {failures[:5]}"
    return outcome


# ---------------------------------------------------------------- GGUF


def _gguf_fields(path: Path) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """(header end, key spots, tensor spots): [(offset, size)] of the u32/u64 fields of the header.

    Key spots: key length, value type, item type, count or string length; the items of long arrays
    (a vocabulary) would otherwise drown them. Tensor spots: name length, rank, dims, type, offset.
    """
    from gguf import GGUFReader

    r = GGUFReader(path, "r")
    base = r.data.ctypes.data

    def spots(fields) -> list[tuple[int, int]]:
        return [(part.ctypes.data - base, part.dtype.itemsize) for f in fields for part in f.parts[:6]
                if part.dtype in (np.uint32, np.uint64) and part.size == 1]

    return r.data_offset, spots(r.fields.values()), spots(t.field for t in r.tensors)


def gguf_mutator(src: Path, seed: int) -> Callable[[int], bytes]:
    pristine = src.read_bytes()
    header_end, key_spots, tensor_spots = _gguf_fields(src)
    rng = random.Random(seed)

    def make(i: int) -> bytes:
        b = bytearray(pristine)
        kind = rng.choice(["flip", "truncate", "window", "field", "field", "field"])
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(header_end)] = rng.randrange(256)
        elif kind == "window":  # an interesting u64 at any, even unaligned, header position
            at = rng.randrange(4, header_end - 8)
            b[at:at + 8] = rng.choice(INTERESTING).to_bytes(8, "little")
        elif kind == "truncate":
            b = b[: rng.choice([rng.randrange(header_end + 64), rng.randrange(len(b))])]
        else:
            at, size = rng.choice(key_spots if rng.random() < 0.7 else tensor_spots)
            value = rng.choice(INTERESTING + [rng.randrange(2**(8 * size))])
            b[at:at + size] = (value % 2**(8 * size)).to_bytes(size, "little")
        return bytes(b)

    return make


@pytest.mark.parametrize("which, n, seed", [("mmproj", 250, 1), ("model", 100, 2)])
def test_fuzz_gguf_summary_and_inspect(capsys, fuzz_sources, tmp_path, which, n, seed):
    t0 = time.monotonic()

    def check(path: Path) -> None:
        try:
            gguf_info.summary(path)
            want = 0
        except BadInput:
            want = 2
        rc = main(["inspect", str(path), "--json"])
        out = capsys.readouterr()
        assert rc == want, out.err
        err_lines = out.err.strip().splitlines()
        if rc == 2:
            assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and path.name in err_lines[0], out.err
        else:
            json.loads(out.out)
        if want == 2:
            raise BadInput("refused")

    outcome = run_cases(n, gguf_mutator(fuzz_sources[which], seed), tmp_path / "fuzzed.gguf", check,
                        tmp_path / "failures")
    assert outcome["refused"] > n // 2  # the mutations are mostly fatal: the fuzzer is really biting
    assert time.monotonic() - t0 < 40


# ---------------------------------------------------------------- safetensors


def safetensors_mutator(src: Path, seed: int) -> Callable[[int], bytes]:
    pristine = src.read_bytes()
    hlen = struct.unpack("<Q", pristine[:8])[0]
    header = pristine[8:8 + hlen].decode()
    data = pristine[8 + hlen:]
    numbers = [m.span() for m in re.finditer(r"\d+", header)]
    rng = random.Random(seed)

    def with_header(text: str) -> bytes:
        hb = text.encode()
        return struct.pack("<Q", len(hb)) + hb + data

    def make(i: int) -> bytes:
        kind = rng.choice(["flip", "truncate", "length", "number", "number", "json"])
        if kind == "flip":
            b = bytearray(pristine)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8 + hlen)] = rng.randrange(256)
            return bytes(b)
        if kind == "truncate":
            return pristine[: rng.choice([rng.randrange(8 + hlen + 16), rng.randrange(len(pristine))])]
        if kind == "length":
            return struct.pack("<Q", rng.choice(INTERESTING + [hlen - 1, hlen + 1])) + pristine[8:]
        if kind == "number":
            s, e = rng.choice(numbers)
            value = rng.choice(["0", "-1", "1", str(2**64), "1e400", "1.5", "true", "null", str(rng.randrange(10**7))])
            return with_header(header[:s] + value + header[e:])
        # json: replace one field of one tensor entry with a value of another type
        h = json.loads(header)
        name = rng.choice([k for k in h if k != "__metadata__"])
        key = rng.choice(["dtype", "shape", "data_offsets"])
        h[name][key] = rng.choice([None, "F32", "X9", [], [1], [0, 0, 0], {"a": 1}, -5, [2**70, 1], [[1], [2]]])
        return with_header(json.dumps(h))

    return make


def test_fuzz_safetensors_loader(fuzz_sources, tmp_path):
    from imp_gguf.checkpoint import open_checkpoint
    from imp_gguf.convert import plan_conversion
    from imp_gguf.safetensors_io import read_header

    t0 = time.monotonic()
    ckpt = Path(shutil.copytree(fuzz_sources["checkpoint"], tmp_path / "ckpt"))
    target = ckpt / SHARD

    def check(path: Path) -> None:
        refs = read_header(path)
        for ref in refs.values():  # every tensor the header lets through must be readable as described
            assert ref.load().shape == ref.shape
        open_checkpoint(ckpt)
        plan_conversion(ckpt, tmp_path / "out", force=True)

    outcome = run_cases(300, safetensors_mutator(fuzz_sources["checkpoint"] / SHARD, 3), target, check,
                        tmp_path / "failures")
    assert outcome["refused"] > 150
    assert time.monotonic() - t0 < 40
