"""Hostile outputs: existing files, unwritable or full folders, Ctrl-C and SIGTERM mid-write.

Whatever happens, an existing output stays byte-identical, nothing appears under a final name
unless complete, and no temporary file is left behind. These tests run as root here, where chmod
does not stop writes, so unwritable folders are real read-only mounts (skipped if mounting is not
permitted), an existing file used as a folder, or a file-size limit.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imp_gguf.cli.main import main
from tests.hostile.conftest import VARIANT, hostile_checkpoint

LM = f"{VARIANT}-F16.gguf"
MMPROJ = f"mmproj-{VARIANT}-F16.gguf"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_checkpoint(tmp_path_factory)


def convert(capsys, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(["convert", str(src), "--outdir", str(out), "--quiet", *extra])
    return rc, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root or CAP_SYS_ADMIN")


@pytest.fixture
def mounts():
    """mount(path, options): a tmpfs that is unmounted after the test."""
    done: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        tmpfs(path, options)
        done.append(path)
        return path

    yield mount
    for p in reversed(done):
        subprocess.run(["umount", "-l", str(p)], capture_output=True, check=False)


# ---------------------------------------------------------------- existing outputs


def test_existing_outputs_are_kept_byte_identical_without_force(capsys, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LM).write_bytes(b"precious model bytes")
    (out / MMPROJ).write_bytes(b"precious mmproj bytes")
    rc, err = convert(capsys, source, out)
    assert rc == 2
    assert "--force" in one_error_line(err)
    assert (out / LM).read_bytes() == b"precious model bytes"
    assert (out / MMPROJ).read_bytes() == b"precious mmproj bytes"
    assert leftovers(out) == [LM, MMPROJ]


def test_one_existing_output_refuses_both(capsys, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MMPROJ).write_bytes(b"keep")
    rc, err = convert(capsys, source, out)
    assert rc == 2
    assert MMPROJ in one_error_line(err)
    assert leftovers(out) == [MMPROJ] and (out / MMPROJ).read_bytes() == b"keep"


def test_force_replaces_existing_outputs(capsys, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LM).write_bytes(b"old")
    rc, err = convert(capsys, source, out, "--force")
    assert rc == 0, err
    assert (out / LM).read_bytes()[:4] == b"GGUF"
    assert leftovers(out) == [LM, MMPROJ]


def test_output_name_taken_by_a_folder(capsys, source, tmp_path):
    out = tmp_path / "out"
    (out / LM).mkdir(parents=True)
    rc, err = convert(capsys, source, out, "--force")
    assert rc == 2
    assert "is a folder" in one_error_line(err)
    assert leftovers(out) == [LM] and not any((out / LM).iterdir())


# ---------------------------------------------------------------- unwritable places


def test_outdir_is_an_existing_file(capsys, source, tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_bytes(b"data")
    rc, err = convert(capsys, source, f)
    assert rc == 2
    assert str(f) in one_error_line(err)
    assert f.read_bytes() == b"data"
    assert leftovers(tmp_path) == ["not-a-folder"]


def test_outdir_below_a_file(capsys, source, tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"data")
    rc, err = convert(capsys, source, f / "sub")
    assert rc == 2
    assert "Not a directory" in one_error_line(err)
    assert f.read_bytes() == b"data"


def test_read_only_folder(capsys, source, tmp_path, mounts):
    ro = mounts(tmp_path / "ro", "ro,size=1m")
    assert not os.access(ro, os.W_OK)  # a real read-only file system, even for root
    rc, err = convert(capsys, source, ro)
    assert rc == 2
    assert "not writable" in one_error_line(err)
    rc, err = convert(capsys, source, ro / "sub")  # the folder would have to be created
    assert rc == 2
    assert "Read-only file system" in one_error_line(err)
    assert leftovers(ro) == []


# ---------------------------------------------------------------- full disk


@pytest.mark.parametrize("size", ["1m", "5m"])  # 1m: the model fails; 5m: the model fits, the mmproj fails
def test_full_disk(capsys, source, tmp_path, mounts, size):
    small = mounts(tmp_path / "small", f"size={size}")
    rc, err = convert(capsys, source, small)
    assert rc == 2
    line = one_error_line(err)
    assert "No space left on device" in line and str(small) in line
    assert leftovers(small) == []  # no partial .gguf under the final name, no temp file


def _fsize_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_file_size_limit_in_a_real_process(source, tmp_path):
    """The console script under RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    out = tmp_path / "out"
    out.mkdir()
    exe = shutil.which("imp-gguf")
    cmd = [exe] if exe else [sys.executable, "-m", "imp_gguf.cli.main"]
    r = subprocess.run([*cmd, "convert", str(source), "--outdir", str(out), "--quiet"], preexec_fn=_fsize_limit,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=os.environ | {"PYTHONPATH": str(REPO)}, check=False)
    assert r.returncode == 2, r.stderr
    assert "cannot write to" in one_error_line(r.stderr)
    assert leftovers(out) == []


# ---------------------------------------------------------------- interrupted conversions

# Runs the real CLI entry in a child process, with each tensor's encoding slowed down so a signal
# reliably lands mid-write (the tiny fixture otherwise converts in a fraction of a second).
THROTTLED = """
import signal, sys, time
import imp_gguf.writer as writer
# A runner started in the background may inherit SIGINT ignored; a terminal's Ctrl-C would not be.
signal.signal(signal.SIGINT, signal.default_int_handler)
delay, _encode = float(sys.argv[1]), writer.encode
def slow_encode(*args):
    time.sleep(delay)
    return _encode(*args)
writer.encode = slow_encode
from imp_gguf.cli.main import _entry
sys.argv = ["imp-gguf", *sys.argv[2:]]
_entry()
"""


def _interrupt_mid_write(source: Path, out: Path, sig: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-c", THROTTLED, "0.04", "convert", str(source), "--outdir", str(out),
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    try:
        while not any(p.name.endswith(".partial") for p in out.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the conversion never started writing"
            time.sleep(0.01)
        time.sleep(0.3)  # well inside the ~2.5 s write
        assert proc.poll() is None, "finished before the signal"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_write_leaves_nothing(source, tmp_path, sig, status, word):
    out = tmp_path / "out"
    out.mkdir()
    r = _interrupt_mid_write(source, out, sig)
    assert r.returncode == status, r.stderr
    assert word in one_error_line(r.stderr)
    assert leftovers(out) == []


def test_sigterm_with_force_keeps_the_old_outputs(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LM).write_bytes(b"old model")
    (out / MMPROJ).write_bytes(b"old mmproj")
    r = _interrupt_mid_write(source, out, signal.SIGTERM, "--force")
    assert r.returncode == 143, r.stderr
    assert (out / LM).read_bytes() == b"old model"
    assert (out / MMPROJ).read_bytes() == b"old mmproj"
    assert leftovers(out) == [LM, MMPROJ]


def test_sigterm_handler_is_restored_after_main(capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--version"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
