"""Runtime builds: real llama.cpp tools from the pinned source, the build cache, toolchain checks (the build
specs and configure argv alone are in tests/unit/test_runtime_build.py)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput, ToolMissing
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from imp_gguf.runtime import build as rt
from imp_gguf.runtime.runner import LocalRunner, QemuRunner, quote_remote
from imp_gguf.runtime.source import cache_dir, ensure_source, verify_tree

SHORT = LLAMA_CPP_COMMIT[:7]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, so exit codes and stderr are what a user sees."""
    return subprocess.run(
        [sys.executable, "-m", "imp_gguf.cli.main", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )


# --- host build ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_host_tools_run_and_report_pinned_commit(host_tools: dict[str, Path]) -> None:
    assert set(host_tools) == set(rt.TOOLS)
    runner = LocalRunner()
    for name in ("llama-bench", "llama-mtmd-cli", "llama-server", "llama-perplexity"):
        proc = runner.run([host_tools[name], "--version"], timeout=60)
        assert proc.returncode == 0, (name, proc.stderr[-500:])
        assert SHORT in proc.stdout + proc.stderr, name
    help_ = runner.run([host_tools["llama-bench"], "--help"], timeout=60)
    assert help_.returncode == 0 and "--n-prompt" in help_.stdout + help_.stderr
    # llama-quantize has its own parser: no --version, but --help lists the quant types we rely on.
    q = runner.run([host_tools["llama-quantize"], "--help"], timeout=60)
    assert "Q4_K_M" in q.stdout + q.stderr


@pytest.mark.slow
def test_host_bench_runs_a_tiny_model(host_tools: dict[str, Path], tiny_llama_gguf: Path) -> None:
    proc = LocalRunner().run(
        [host_tools["llama-bench"], "-m", tiny_llama_gguf, "-p", "16", "-n", "4", "-r", "1", "-t", "2", "-o", "json"],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    rows = json.loads(proc.stdout)
    assert [r["n_prompt"] for r in rows] == [16, 0] and all(r["avg_ts"] > 0 for r in rows)
    assert rows[0]["build_commit"] == SHORT


@pytest.mark.slow
def test_second_build_is_reused_instantly(host_tools: dict[str, Path]) -> None:
    first = rt.where("host")
    start = time.monotonic()
    again = rt.build("host")
    assert time.monotonic() - start < 2.0
    assert again.reused and again.build_dir == first.build_dir
    assert again.binaries == host_tools
    assert again.build_dir.name.startswith(f"{LLAMA_CPP_PYTHON_VERSION}-host-")
    stamp = json.loads((again.build_dir / "stamp.json").read_text())
    assert stamp["commit"].startswith(LLAMA_CPP_COMMIT) and stamp["defines"]["GGML_NATIVE"] == "ON"
    assert (again.build_dir / "build.log").stat().st_size > 0


def _tmp_cache_sharing_source(tmp_path: Path) -> Path:
    """A private build cache that reuses the already unpacked source and its patched copy (no second
    77 MB download, no 200 MB copy)."""
    from imp_gguf.runtime.patches import bundled_patches, patched_source

    src = ensure_source()
    cache = tmp_path / "cache"
    (cache / "src").mkdir(parents=True)
    for tree in (src, patched_source(src, bundled_patches())):
        (cache / "src" / tree.root.name).symlink_to(tree.root)
    return cache


def test_failed_build_is_not_marked_done(tmp_path: Path) -> None:
    cache = _tmp_cache_sharing_source(tmp_path)
    bad = {"CMAKE_C_COMPILER": str(tmp_path / "no-such-cc")}
    with pytest.raises(rt.BuildFailed) as info:
        rt.build("host", cache=cache, extra_defines=bad)
    bdir = rt.build_dir(rt.build_spec("host", extra_defines=bad), cache)
    assert "configure failed" in str(info.value) and str(bdir / "build.log") in str(info.value)
    assert not (bdir / "stamp.json").exists()
    assert any("no-such-cc" in line for line in info.value.tail)
    assert "no-such-cc" in (bdir / "build.log").read_text()
    with pytest.raises(BadInput):
        rt.where("host", cache=cache, extra_defines=bad)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_interrupted_build_is_not_marked_done_and_leaves_no_compiler_running(tmp_path: Path) -> None:
    cache = _tmp_cache_sharing_source(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "imp_gguf.cli.main", "runtime", "build", "--target", "host"],
                            env={**os.environ, "IMP_GGUF_CACHE": str(cache)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    bdir = rt.build_dir(rt.build_spec("host"), cache)
    log = bdir / "build.log"
    deadline = time.monotonic() + 300
    try:  # wait until ninja is compiling, then stop the CLI as a service manager would
        while time.monotonic() < deadline and not (log.is_file() and "[1/" in log.read_text(errors="replace")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.5)
        assert "[1/" in log.read_text(errors="replace"), "the build never started compiling"
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err
    assert not (bdir / "stamp.json").exists()
    with pytest.raises(BadInput):
        rt.where("host", cache=cache)
    # cmake, ninja and the compilers went down with it (they run in their own process group).
    # A few seconds only: orphans would die too, but only once their current compile (or ninja's next
    # write to a closed pipe) ends.
    deadline = time.monotonic() + 3
    while _processes_mentioning(str(bdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(str(bdir)) == []


# --- toolchain checks ------------------------------------------------------------------------------


def test_missing_cross_compiler_names_the_debian_package(tmp_path: Path) -> None:
    # A PATH with the generic tools but no aarch64 gcc.
    for prog in ("cmake", "ninja", "git"):
        (tmp_path / prog).symlink_to(shutil.which(prog))
    with pytest.raises(ToolMissing, match=r"aarch64-linux-gnu-gcc not found.*apt-get install gcc-aarch64-linux-gnu"):
        rt.build("linux-arm64", env={"PATH": str(tmp_path)})


def test_missing_tool_cli_is_one_line_exit_2() -> None:
    proc = cli("runtime", "build", "--target", "host", env={"PATH": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "apt-get install cmake" in proc.stderr


# --- linux-arm64 -------------------------------------------------------------------------------------


def _elf_header(path: Path) -> tuple[bytes, int]:
    """Independent of the library: ELF magic + class/data bytes and e_machine."""
    head = path.read_bytes()[:20]
    return head[:6], struct.unpack("<H", head[18:20])[0]


@pytest.mark.cross
@pytest.mark.slow
def test_arm64_tools_are_static_aarch64_and_run_under_qemu(arm64_tools: dict[str, Path]) -> None:
    for name, path in arm64_tools.items():
        ident, machine = _elf_header(path)
        assert ident == b"\x7fELF\x02\x01" and machine == 183, name  # 64-bit, little-endian, EM_AARCH64
        info = rt.read_elf(path)
        assert not info.has_interp and not info.has_dynamic, name
    stamp = rt.where("linux-arm64").stamp
    assert "+i8mm" in stamp["defines"]["GGML_CPU_ARM_ARCH"]
    cache = (rt.where("linux-arm64").build_dir / "cmake" / "CMakeCache.txt").read_text()
    assert "HAVE_MATMUL_INT8:INTERNAL=1" in cache and "HAVE_DOTPROD:INTERNAL=1" in cache
    qemu = QemuRunner()
    for name in ("llama-bench", "llama-mtmd-cli"):
        proc = qemu.run([arm64_tools[name], "--version"], timeout=120)
        assert proc.returncode == 0 and SHORT in proc.stdout + proc.stderr, name


@pytest.mark.cross
@pytest.mark.slow
def test_arm64_bench_uses_i8mm_repack_under_qemu(
    arm64_tools: dict[str, Path], host_tools: dict[str, Path], tiny_llama_gguf: Path, tmp_path: Path
) -> None:
    # Q4_0 weights are repacked to q4_0_4x8 only when the i8mm kernels were compiled in.
    q4 = tmp_path / "tiny-q4_0.gguf"
    proc = LocalRunner().run([host_tools["llama-quantize"], tiny_llama_gguf, q4, "Q4_0"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    proc = QemuRunner().run(
        [arm64_tools["llama-bench"], "-m", q4, "-p", "16", "-n", "4", "-r", "1", "-t", "2", "-o", "json", "-v"],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    rows = json.loads(proc.stdout)
    assert rows and all(r["avg_ts"] > 0 for r in rows) and rows[0]["build_commit"] == SHORT
    assert "q4_0_4x8" in proc.stderr


# --- android / termux ------------------------------------------------------------------------------------


def test_android_without_ndk_is_one_line_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANDROID_NDK"}
    proc = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "runtime", "build", "--target", "android-arm64"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "set ANDROID_NDK" in proc.stderr


def test_termux_prints_steps_and_builds_nothing() -> None:
    proc = cli("runtime", "build", "--target", "termux")
    assert proc.returncode == 0
    out = proc.stdout
    assert "pkg install" in out and "cmake" in out and "ninja" in out
    assert f"pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}" in out
    assert "-DGGML_NATIVE=ON" in out and "llama-mtmd-cli" in out
    assert cli("runtime", "where", "--target", "termux").returncode == 2


def test_where_unbuilt_target_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = cli("runtime", "where", "--target", "linux-arm64", env={"IMP_GGUF_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "imp-gguf runtime build --target linux-arm64" in proc.stderr


@pytest.mark.slow
def test_where_cli_json_lists_the_binaries(host_tools: dict[str, Path]) -> None:
    proc = cli("runtime", "where", "--target", "host", "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["binaries"] == {k: str(v) for k, v in host_tools.items()}
    assert data["commit"].startswith(LLAMA_CPP_COMMIT)


# --- source and runner ---------------------------------------------------------------------------------


def test_pinned_source_is_verified(tmp_path: Path) -> None:
    src = ensure_source()
    assert src.commit.startswith(LLAMA_CPP_COMMIT) and src.version == LLAMA_CPP_PYTHON_VERSION
    assert src.root.is_relative_to(cache_dir()) and (src.llama_cpp / "CMakeLists.txt").is_file()
    # A tree claiming another version is rejected.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.1\n")
    with pytest.raises(BadInput, match="0.3.1"):
        verify_tree(fake)


def test_quote_remote_survives_a_posix_shell() -> None:
    args = ["printf", "%s\\n", "a b", "it's", "$HOME", "`id`", "semi;colon", ""]
    proc = LocalRunner().run(["sh", "-c", quote_remote(args, env={"X": "1 2"}, cwd="/")])
    assert proc.returncode == 0
    assert proc.stdout.split("\n")[:-1] == args[2:]


def test_elf_reader_on_a_host_binary(host_tools: dict[str, Path]) -> None:
    info = rt.read_elf(host_tools["llama-bench"])
    assert info.is_64 and info.machine == 62  # x86-64, dynamically linked against glibc
    assert not info.is_static
