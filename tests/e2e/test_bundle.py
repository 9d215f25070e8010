"""`imp-gguf bundle`: folder + tarball contents, atomic/--force behaviour, run.sh quoting."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.pins import LLAMA_CPP_COMMIT
from imp_gguf.runtime import build as rt
from imp_gguf.runtime.bundle import make_bundle, run_script
from imp_gguf.runtime.runner import LocalRunner, QemuRunner

# Names with a space and a quote: run.sh must quote what it embeds.
MODEL_NAME = "imp tiny's-q4.gguf"
MMPROJ_NAME = "mmproj imp-f16.gguf"


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, Path]:
    """A real pair (the bundled tiny Imp, converted in well under a second): bundle checks they belong together."""
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path / "models", outtype="f16", lm_filename=MODEL_NAME,
                mmproj_filename=MMPROJ_NAME)
    return r.model, r.mmproj


def _fake_tools(tmp_path: Path) -> dict[str, Path]:
    """Stand-ins for the binaries; llama-mtmd-cli prints its argv, one per line, to test run.sh quoting."""
    d = tmp_path / "fake-bin"
    d.mkdir()
    tools = {}
    for name in rt.TOOLS:
        p = d / name
        p.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
        p.chmod(0o755)
        tools[name] = p
    return tools


def test_bundle_contents(tmp_path: Path, models: tuple[Path, Path], host_tools: dict[str, Path]) -> None:
    model, mmproj = models
    out = tmp_path / "out" / "imp-phone"
    res = make_bundle(out, model=model, mmproj=mmproj, target="host", binaries=host_tools)
    assert res.folder == out and res.tarball == tmp_path / "out" / "imp-phone.tar.gz"
    assert sorted(p.name for p in (out / "bin").iterdir()) == sorted(rt.TOOLS)
    for name in rt.TOOLS:
        p = out / "bin" / name
        assert p.read_bytes() == host_tools[name].read_bytes() and os.access(p, os.X_OK)
    assert (out / "models" / MODEL_NAME).read_bytes() == model.read_bytes()
    assert (out / "models" / MMPROJ_NAME).read_bytes() == mmproj.read_bytes()
    run_sh = out / "run.sh"
    assert run_sh.stat().st_mode & 0o777 == 0o755
    assert run_sh.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(run_sh)]).returncode == 0  # POSIX sh syntax
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["commit"] == LLAMA_CPP_COMMIT and manifest["model"] == f"models/{MODEL_NAME}"
    assert set(manifest["sha256"]) >= {"run.sh", f"models/{MODEL_NAME}", "bin/llama-mtmd-cli"}
    # No temporary leftovers beside the outputs.
    assert sorted(p.name for p in out.parent.iterdir()) == ["imp-phone", "imp-phone.tar.gz"]
    with tarfile.open(res.tarball) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert all(n == "imp-phone" or n.startswith("imp-phone/") for n in members)
    assert members["imp-phone/run.sh"].mode & 0o777 == 0o755
    assert members["imp-phone/bin/llama-mtmd-cli"].mode & stat.S_IXUSR
    assert members[f"imp-phone/models/{MODEL_NAME}"].size == model.stat().st_size


def test_bundle_never_overwrites_without_force(tmp_path: Path, models: tuple[Path, Path]) -> None:
    model, mmproj = models
    tools = _fake_tools(tmp_path)
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExists):
        make_bundle(out, model=model, mmproj=mmproj, binaries=tools)
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "b.tar.gz").exists()
    make_bundle(out, model=model, mmproj=mmproj, binaries=tools, force=True)
    assert not (out / "keep.txt").exists() and (out / "run.sh").is_file()
    # The tarball alone also blocks a new bundle.
    out2 = tmp_path / "c"
    (tmp_path / "c.tar.gz").write_text("old")
    with pytest.raises(OutputExists):
        make_bundle(out2, model=model, mmproj=mmproj, binaries=tools)
    assert not out2.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bundle_rejects_non_gguf_and_missing_builds(tmp_path: Path, models: tuple[Path, Path]) -> None:
    model, _ = models
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf")
    with pytest.raises(BadInput, match="not a GGUF"):
        make_bundle(tmp_path / "x", model=model, mmproj=junk, binaries=_fake_tools(tmp_path))
    with pytest.raises(BadInput, match="runtime build --target linux-arm64"):
        make_bundle(tmp_path / "y", model=model, mmproj=models[1], cache=tmp_path / "empty-cache")


def test_run_sh_passes_arguments_verbatim(tmp_path: Path, models: tuple[Path, Path]) -> None:
    model, mmproj = models
    out = tmp_path / "bundle dir"
    make_bundle(out, model=model, mmproj=mmproj, binaries=_fake_tools(tmp_path))
    question = 'What is in "this" image? $HOME `id` it\'s; a*b'
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.run(["sh", str(out / "run.sh"), "my photo.jpg", question, "-n", "64"],
                          cwd=elsewhere, capture_output=True, text=True, env={**os.environ, "IMP_THREADS": "5"})
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split("\n")[:-1]
    assert args == [
        "-m", f"models/{MODEL_NAME}", "--mmproj", f"models/{MMPROJ_NAME}",
        "--image", str(elsewhere / "my photo.jpg"), "-p", question,
        "-t", "5", "-c", "768", "-n", "256", "-lm", "none", "--temp", "0", "--jinja", "-n", "64",
    ]  # -c: the tiny Imp's 16 image tokens + 256 question + 256 answer tokens, rounded up to 256
    # Without IMP_THREADS it picks a positive thread count itself; without a question it explains usage.
    auto = subprocess.run(["sh", str(out / "run.sh"), "/abs.png", "q"], capture_output=True, text=True)
    t = auto.stdout.split("\n")[auto.stdout.split("\n").index("-t") + 1]
    assert auto.returncode == 0 and int(t) >= 1
    usage = subprocess.run(["sh", str(out / "run.sh"), "only-image.png"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_run_script_quotes_any_file_name() -> None:
    script = run_script("a'b $c.gguf", "m.gguf")
    assert "-m 'models/a'\"'\"'b $c.gguf'" in script


def test_bundle_cli_exit_codes(tmp_path: Path, models: tuple[Path, Path]) -> None:
    model, mmproj = models
    out = tmp_path / "o"
    out.mkdir()
    args = [sys.executable, "-m", "imp_gguf.cli.main", "bundle", "--model", str(model), "--mmproj", str(mmproj), str(out)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "--force" in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.cross
@pytest.mark.slow
def test_linux_arm64_bundle_runs_under_qemu(tmp_path: Path, models: tuple[Path, Path], arm64_tools: dict[str, Path]) -> None:
    model, mmproj = models
    res = make_bundle(tmp_path / "imp-arm64", model=model, mmproj=mmproj)  # default target: linux-arm64
    assert res.manifest.target == "linux-arm64"
    for name in rt.TOOLS:
        info = rt.read_elf(res.folder / "bin" / name)
        assert info.machine == rt.EM_AARCH64 and info.is_static
    # The bundled tools work from the bundle itself, as they will on the phone (cwd = bundle).
    proc = QemuRunner().run(
        ["bin/llama-bench", "-m", f"models/{MODEL_NAME}", "-p", "8", "-n", "2", "-r", "1", "-t", "2", "-o", "json"],
        cwd=res.folder, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    assert json.loads(proc.stdout)[0]["build_commit"] == LLAMA_CPP_COMMIT[:7]
    assert LocalRunner().run(["tar", "tzf", res.tarball]).returncode == 0


def test_bundle_folder_as_outdir_too(tmp_path: Path, models: tuple[Path, Path]) -> None:
    """-o/--outdir names the folder, as in every command that writes one; OUT still works; not both."""
    model, mmproj = models
    base = [sys.executable, "-m", "imp_gguf.cli.main", "bundle", "--model", str(model), "--mmproj", str(mmproj),
            "--target", "host"]
    proc = subprocess.run(base + ["-o", str(tmp_path / "b")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "run.sh").is_file() and (tmp_path / "b.tar.gz").is_file()
    for extra in ([], [str(tmp_path / "c"), "-o", str(tmp_path / "d")]):
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        assert proc.returncode == 2 and "OUT or as -o/--outdir" in proc.stderr, proc.stderr
