"""The writer's two paths: tensors in their stored type are copied file to file, the rest converted in
chunks. Same bytes as a whole-tensor conversion, NaN/Inf still refused, memory flat in model size, and
the full-disk and changed-source failures of the old writer."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imp_gguf.errors import BadInput

torch = pytest.importorskip("torch")

VARIANT = "Imp-v1.5-3B-196"


@pytest.fixture(scope="module")
def fp16_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imp_gguf.synthetic_checkpoints.tiny import make_checkpoint

    return make_checkpoint(VARIANT, tmp_path_factory.mktemp("fp16") / VARIANT, dtype=torch.float16)


def _plan(ckpt: Path, out: Path, outtype: str = "f16"):
    from imp_gguf.convert import plan_conversion

    out.mkdir(parents=True, exist_ok=True)
    return plan_conversion(ckpt, out, outtype=outtype)


def _whole_tensor_copy(plan):
    """The same plan with the sources hidden: the writer's fallback loads each tensor whole."""
    from dataclasses import replace

    plan.lm_tensors = [replace(t, source=None) for t in plan.lm_tensors]
    plan.mm_tensors = [replace(t, source=None) for t in plan.mm_tensors]
    return plan


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "f32"])
def test_fast_paths_write_the_bytes_of_a_whole_tensor_conversion(fp16_ckpt, tmp_path, outtype):
    from imp_gguf.convert import run_conversion

    fast = run_conversion(_plan(fp16_ckpt, tmp_path / "fast", outtype)).to_dict()
    slow = run_conversion(_whole_tensor_copy(_plan(fp16_ckpt, tmp_path / "slow", outtype))).to_dict()
    for key in ("model", "mmproj"):
        assert Path(fast[key]).read_bytes() == Path(slow[key]).read_bytes(), key


def test_f16_tensors_are_the_checkpoint_bytes(fp16_ckpt, tmp_path):
    """Each F16 tensor of the GGUF is its safetensors bytes, unchanged."""
    from gguf import GGMLQuantizationType, GGUFReader

    from imp_gguf.convert import run_conversion
    from imp_gguf.safetensors_io import read_header

    plan = _plan(fp16_ckpt, tmp_path)
    by_dst = {t.dst: t.source for t in plan.lm_tensors + plan.mm_tensors}
    run_conversion(plan)
    copied = 0
    for path in (plan.lm_path, plan.mmproj_path):
        for rt in GGUFReader(path).tensors:
            ref = by_dst[rt.name]
            if rt.tensor_type == GGMLQuantizationType.F16 and ref.dtype == "F16":
                raw = read_header(ref.path)[ref.name]
                with open(raw.path, "rb") as f:
                    f.seek(raw.offset)
                    assert bytes(rt.data.tobytes()) == f.read(raw.nbytes), rt.name
                copied += 1
    assert copied >= 10


def test_nan_in_a_copied_tensor_is_named(fp16_ckpt, tmp_path):
    import shutil

    from imp_gguf.convert import plan_conversion, run_conversion

    ckpt = Path(shutil.copytree(fp16_ckpt, tmp_path / VARIANT))
    plan = plan_conversion(ckpt, tmp_path, outtype="f16")
    victim = next(t for t in plan.lm_tensors if t.source.dtype == "F16" and t.gtype.name == "F16")
    ref = victim.source
    with open(ref.path, "r+b") as f:  # two NaNs (0x7e00) and one -Inf (0xfc00), far apart
        for i, word in ((3, b"\x00\x7e"), (ref.numel // 2, b"\x00\xfc"), (ref.numel - 1, b"\x00\x7e")):
            f.seek(ref.offset + 2 * i)
            f.write(word)
    with pytest.raises(BadInput, match=rf"tensor '{victim.src}' has 3 NaN/Inf values"):
        run_conversion(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == [VARIANT]


def test_source_shrinking_after_the_plan_is_named(fp16_ckpt, tmp_path):
    import shutil

    from imp_gguf.convert import plan_conversion, run_conversion

    ckpt = Path(shutil.copytree(fp16_ckpt, tmp_path / VARIANT))
    plan = plan_conversion(ckpt, tmp_path / "out", outtype="f16")
    last = max((t.source for t in plan.lm_tensors), key=lambda r: (str(r.path), r.offset))
    os.truncate(last.path, last.offset + last.nbytes // 2)
    with pytest.raises(BadInput, match="changed or is truncated"):
        run_conversion(plan)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("refuse", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_falls_back_when_the_kernel_cannot_copy(fp16_ckpt, tmp_path, monkeypatch, refuse):
    """EXDEV (another file system, older kernels) then ENOSYS: sendfile, then pread/pwrite, same bytes."""
    from imp_gguf.convert import run_conversion

    want = run_conversion(_plan(fp16_ckpt, tmp_path / "want")).to_dict()
    calls: dict[str, int] = {}

    def refused(name: str, code: int):
        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            raise OSError(code, os.strerror(code))
        return call

    for name, code in zip(refuse, (errno.EXDEV, errno.ENOSYS)):
        monkeypatch.setattr(os, name, refused(name, code))
    got = run_conversion(_plan(fp16_ckpt, tmp_path / "got")).to_dict()
    assert all(calls.get(n, 0) >= 1 for n in refuse), calls
    for key in ("model", "mmproj"):
        assert Path(got[key]).read_bytes() == Path(want[key]).read_bytes()


def test_copy_to_another_file_system_and_full_disk(fp16_ckpt, tmp_path):
    """A real tmpfs: copy_file_range across file systems (EXDEV on current kernels) still writes the same
    file; a full one is one line naming the folder, and nothing is left."""
    from imp_gguf.convert import run_conversion
    from tests.hostile.test_hostile_outputs import tmpfs

    want = run_conversion(_plan(fp16_ckpt, tmp_path / "want")).to_dict()
    mounted = []
    try:
        for name, size in (("big", "64m"), ("small", "1m")):
            tmpfs(tmp_path / name, f"size={size}")
            mounted.append(tmp_path / name)
        got = run_conversion(_plan(fp16_ckpt, tmp_path / "big")).to_dict()
        assert Path(got["model"]).read_bytes() == Path(want["model"]).read_bytes()
        r = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "convert", str(fp16_ckpt), "-o",
                            str(tmp_path / "small"), "--quiet"], capture_output=True, text=True, check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "No space left on device" in r.stderr, r.stderr
        assert list((tmp_path / "small").iterdir()) == []
    finally:
        for m in mounted:
            subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (this pytest process, with torch).
MEASURE = """
import sys
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
from imp_gguf.convert import convert
base = hwm()
convert(sys.argv[1], sys.argv[2], outtype=sys.argv[3])
print(base, hwm())
"""


def _growth(ckpt: Path, out: Path, outtype: str) -> float:
    r = subprocess.run([sys.executable, "-c", MEASURE, str(ckpt), str(out), outtype], capture_output=True,
                       text=True, check=True)
    base, peak = map(int, r.stdout.split())
    return (peak - base) / 1024  # MB


@pytest.mark.parametrize("dtype, outtype", [("float16", "f16"), ("bfloat16", "f16"), ("float16", "q8_0")])
def test_memory_is_flat_in_model_size(tmp_path, dtype, outtype):
    """Two models, 2 and 5 blocks, each holding 64 MB FFN matrices (128 MB as float32): peak RSS grows by
    a few chunks, not by a tensor (a whole-tensor conversion grows by ~190 MB), and alike for both."""
    from imp_gguf.synthetic_checkpoints.tiny import dims_with, make_checkpoint

    growth = {}
    for n_layer in (2, 5):
        dims = dims_with(n_embd=1024, n_layer=n_layer, n_ff_phi2=32768, n_head=8)
        ckpt = make_checkpoint(VARIANT, tmp_path / f"L{n_layer}", dims=dims, dtype=getattr(torch, dtype))
        growth[n_layer] = _growth(ckpt, tmp_path / f"out{n_layer}", outtype)
    assert max(growth.values()) < 100, growth
    assert abs(growth[5] - growth[2]) < 16, growth


def test_chunks_match_load():
    """TensorRef.chunks is load() in pieces, for every float dtype and an odd chunk size."""
    import tempfile

    from safetensors.torch import save_file

    from imp_gguf.safetensors_io import read_header

    a = torch.randn(37, 11, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        save_file({"f32": a, "f16": a.half(), "bf16": a.bfloat16(), "f64": a.double(),
                   "i32": (a * 100).int()}, str(path))
        refs = read_header(path)
        assert {r.dtype for r in refs.values()} == {"F32", "F16", "BF16", "F64", "I32"}
        for name, ref in refs.items():
            whole = ref.load().reshape(-1)
            pieces = np.concatenate(list(ref.chunks(50)))
            assert pieces.dtype == whole.dtype and np.array_equal(pieces, whole), name
            assert ref.count_nonfinite() == 0
