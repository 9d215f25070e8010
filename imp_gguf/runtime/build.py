"""Build the llama.cpp tools from the pinned source, per target, cached by version + target + flag hash.

The source is the pinned tree with imp-gguf's patches applied (`runtime/patches.py`); the patches
are part of the flag hash, so a build without them, or with other ones, is never reused.

Cache layout: `${cache}/build/<llama-cpp-python-version>-<target>-<flaghash>/`
  toolchain.cmake   (cross targets) the CMake toolchain file; its text is part of the flag hash
  cmake/            the CMake binary dir; binaries in cmake/bin/
  build.log         full configure + build output
  stamp.json        written last, atomically: present = finished and verified, reused instantly
An interrupted or failed build leaves no stamp; the next call resumes it (ninja is incremental).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp_gguf.errors import BadInput, InternalError
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from imp_gguf.runtime.patches import Patch, bundled_patches, patched_source
from imp_gguf.runtime.runner import LocalRunner, QemuRunner, Runner, merged_env, require_program
from imp_gguf.runtime.source import Source, cache_dir, ensure_source, file_lock, sdist_path
from imp_gguf.spelling import unknown

TARGETS = ("host", "linux-arm64", "android-arm64", "termux")
BUILT_TARGETS = ("host", "linux-arm64", "android-arm64")
TOOLS = ("llama-mtmd-cli", "llama-bench", "llama-quantize", "llama-server", "llama-perplexity")
# What `bench` pushes to a device: not the quantizer (it runs here) nor the server (no protocol uses it;
# the phone bundle ships every tool, llama-server for its serve.sh included).
HOST_ONLY_TOOLS = ("llama-quantize", "llama-server")
DEVICE_TOOLS = tuple(t for t in TOOLS if t not in HOST_ONLY_TOOLS)
# Snapdragon 8 Gen 3 (Cortex-X4/A720/A520, Armv9.2) has all of these; i8mm and dotprod select the
# repacked Q4_0/Q4_K/Q6_K/Q8_0 kernels that make decode fast (ggml-cpu's repack.cpp checks for them).
ARM_ARCH = "armv8.6-a+dotprod+i8mm+fp16"
ANDROID_MARCH = "-march=armv8.7a"  # implies dotprod, i8mm, bf16 (llama.cpp docs/android.md)
ANDROID_NDK_TOOLCHAIN = "build/cmake/android.toolchain.cmake"
STAMP = "stamp.json"
# At the pinned commit, ggml-cpu's AMX weight buffer crashes the first decode of a quantized model (seen on a
# Xeon with amx_int8: llama-mtmd-cli exits with SIGSEGV unless given --no-repack). -march=native turns AMX on
# wherever the CPU has it, so host builds on x86-64 compile it out; the other CPU kernels are unchanged.
X86_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

# Flags every target shares. LLAMA_BUILD_UI/LLAMA_USE_PREBUILT_UI=OFF: the server would otherwise build its
# web UI with npm or download it at build time (which fails, or hangs, offline) and embed it. The bundle's
# UI is built apart, once, from the same source (runtime/webui.py) and served from files with --path.
COMMON_DEFINES = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
}

CMAKE_ENV_INPUTS = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS")

LINUX_ARM64_TOOLCHAIN = """\
# Written by imp-gguf: cross-compile for aarch64 Linux with Debian's cross gcc.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
"""


# --- ELF checks, read from the header bytes so no binutils for aarch64 are needed -------------------
EM_AARCH64 = 183
PT_DYNAMIC, PT_INTERP = 2, 3


@dataclass(frozen=True)
class ElfInfo:
    is_64: bool
    machine: int
    has_interp: bool  # PT_INTERP: needs a dynamic loader
    has_dynamic: bool  # PT_DYNAMIC: has shared-library dependencies

    @property
    def is_static(self) -> bool:
        return not (self.has_interp or self.has_dynamic)


def read_elf(path: Path) -> ElfInfo:
    """Parse the ELF header and program headers of a little-endian ELF file."""
    with open(path, "rb") as fh:
        ident = fh.read(16)
        if ident[:4] != b"\x7fELF":
            raise InternalError(f"{path} is not an ELF file")
        is_64, little = ident[4] == 2, ident[5] == 1
        if not little:
            raise InternalError(f"{path} is a big-endian ELF")
        fmt = "<HHIQQQIHHHHHH" if is_64 else "<HHIIIIIHHHHHH"
        hdr = struct.unpack(fmt, fh.read(struct.calcsize(fmt)))
        machine, phoff, phentsize, phnum = hdr[1], hdr[4], hdr[8], hdr[9]
        types = set()
        for i in range(phnum):
            fh.seek(phoff + i * phentsize)
            types.add(struct.unpack("<I", fh.read(4))[0])
    return ElfInfo(is_64, machine, PT_INTERP in types, PT_DYNAMIC in types)


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides what comes out of a build; its hash names the build dir."""

    target: str
    defines: dict[str, str]
    tools: tuple[str, ...] = TOOLS
    toolchain_text: str | None = None  # written to <build dir>/toolchain.cmake
    toolchain_file: str | None = None  # an existing toolchain file (the NDK's)
    programs: tuple[str, ...] = ("cmake", "ninja", "git")  # git: build-info reads the commit
    # Environment variables CMake reads (CC, CFLAGS...): set ones change the output, so they enter the hash.
    env_inputs: tuple[tuple[str, str], ...] = ()
    static_elf: bool = False  # linux-arm64: the binaries must be static aarch64 ELF
    arm64: bool = False
    patches: tuple[Patch, ...] = ()  # applied to the source before configuring, in this order

    def flag_hash(self) -> str:
        inputs: dict[str, object] = {
            "target": self.target,
            "defines": dict(sorted(self.defines.items())),
            "tools": list(self.tools),
            "toolchain_text": self.toolchain_text,
            "toolchain_file": self.toolchain_file,
        }
        if self.env_inputs:  # only when set, so the usual hash does not depend on this field existing
            inputs["env"] = dict(self.env_inputs)
        if self.patches:
            inputs["patches"] = [[p.name, p.sha256] for p in self.patches]
        blob = json.dumps(inputs, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AppliedPatch:
    """A patch a build's source carries, as its stamp records it (runtime.patches.Patch.to_dict)."""

    name: str
    sha256: str
    subject: str

    @classmethod
    def from_stamp(cls, entry: Mapping[str, str]) -> "AppliedPatch":
        return cls(name=entry["name"], sha256=entry["sha256"], subject=entry["subject"])

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "subject": self.subject}


@dataclass
class BuildResult:
    """A finished build: where its tools are, whether it was reused, and what its stamp (stamp.json, the
    record written when it finished) says it was built from."""

    target: str
    build_dir: Path
    binaries: dict[str, Path]
    stamp: dict[str, Any]  # stamp.json as read: the build's record on disk
    reused: bool
    seconds: float = 0.0

    @property
    def bin_dir(self) -> Path:
        return self.build_dir / "cmake" / "bin"

    @property
    def commit(self) -> str | None:
        return self.stamp.get("commit")

    @property
    def flag_hash(self) -> str | None:
        return self.stamp.get("flag_hash")

    @property
    def defines(self) -> dict[str, str] | None:
        return self.stamp.get("defines")

    @property
    def patches(self) -> list[AppliedPatch]:
        return [AppliedPatch.from_stamp(p) for p in self.stamp.get("patches", [])]

    def to_dict(self) -> dict[str, Any]:
        """`runtime build|where --json`."""
        return {
            "target": self.target,
            "build_dir": str(self.build_dir),
            "bin_dir": str(self.bin_dir),
            "binaries": {k: str(v) for k, v in self.binaries.items()},
            "reused": self.reused,
            "seconds": round(self.seconds, 1),
            "commit": self.commit,
            "flag_hash": self.flag_hash,
            "defines": self.defines,
            "patches": [p.to_dict() for p in self.patches],
        }


@dataclass(frozen=True)
class TermuxSteps:
    """`runtime build --target termux`: nothing is built here; the steps to run on the phone."""

    script: str
    target: str = "termux"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "built": False, "script": self.script}


class BuildFailed(InternalError):
    """A configure/build step failed; carries the log tail so the CLI can show it."""

    def __init__(self, message: str, log: Path, tail: list[str]) -> None:
        super().__init__(message)
        self.log = log
        self.tail = tail


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise unknown("target", target, TARGETS)
    if target == "termux":
        raise BadInput("termux builds run on the phone: `imp-gguf runtime build --target termux` prints the steps")


def build_spec(
    target: str, *, env: Mapping[str, str] | None = None, extra_defines: Mapping[str, str] | None = None,
    patches: tuple[Patch, ...] | None = None,
) -> BuildSpec:
    """The flags for `target`. `extra_defines` override (and enter the hash), e.g. for experiments;
    `patches` replaces the bundled patches (tests)."""
    _check_target(target)
    env = merged_env(env)
    defines = dict(COMMON_DEFINES)
    if target == "host":
        defines["GGML_NATIVE"] = "ON"
        if platform.machine().lower() in ("x86_64", "amd64"):
            for var, define in (("CFLAGS", "CMAKE_C_FLAGS"), ("CXXFLAGS", "CMAKE_CXX_FLAGS")):
                defines[define] = f"{env.get(var, '')} {X86_NO_AMX}".strip()
        spec_kw: dict = {"programs": ("cmake", "ninja", "git", "cc", "c++")}
    elif target == "linux-arm64":
        defines.update(
            GGML_NATIVE="OFF",
            GGML_CPU_ARM_ARCH=ARM_ARCH,
            GGML_STATIC="ON",
            GGML_OPENMP="ON",
            # GGML_STATIC alone still links libc/libstdc++/libgomp dynamically.
            CMAKE_EXE_LINKER_FLAGS="-static",
        )
        spec_kw = {
            "toolchain_text": LINUX_ARM64_TOOLCHAIN,
            # qemu-aarch64: the build smoke-runs its binaries before marking itself done.
            "programs": ("cmake", "ninja", "git", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64"),
            "static_elf": True,
            "arm64": True,
        }
    else:  # android-arm64
        ndk = env.get("ANDROID_NDK", "")
        if not ndk:
            raise BadInput("android-arm64 needs the Android NDK: set ANDROID_NDK to its folder (e.g. ~/android-ndk-r28b)")
        toolchain = Path(ndk).expanduser() / ANDROID_NDK_TOOLCHAIN
        if not toolchain.is_file():
            raise BadInput(f"ANDROID_NDK={ndk} has no {ANDROID_NDK_TOOLCHAIN}: point it at an unpacked NDK")
        defines.update(
            ANDROID_ABI="arm64-v8a",
            ANDROID_PLATFORM="android-28",
            CMAKE_C_FLAGS=ANDROID_MARCH,
            CMAKE_CXX_FLAGS=ANDROID_MARCH,
            GGML_NATIVE="OFF",
            # The NDK's OpenMP would have to be shipped as a shared lib; llamafile does not support Android.
            GGML_OPENMP="OFF",
            GGML_LLAMAFILE="OFF",
        )
        spec_kw = {"toolchain_file": str(toolchain), "arm64": True}
    if extra_defines:
        defines.update(extra_defines)
    env_inputs = tuple((k, env[k]) for k in CMAKE_ENV_INPUTS if env.get(k))
    spec = BuildSpec(target=target, defines=defines, env_inputs=env_inputs,
                     patches=bundled_patches() if patches is None else tuple(patches), **spec_kw)
    _refuse_slow_arm(spec)
    return spec


def _refuse_slow_arm(spec: BuildSpec) -> None:
    """An arm64 build without i8mm + dotprod silently loses the repacked kernels: refuse it up front."""
    if spec.target != "linux-arm64":
        return
    arch = spec.defines.get("GGML_CPU_ARM_ARCH", "")
    missing = [f for f in ("dotprod", "i8mm") if f"+{f}" not in arch]
    if spec.defines.get("GGML_NATIVE") != "OFF" or missing:
        raise BadInput(
            f"linux-arm64 needs GGML_NATIVE=OFF and GGML_CPU_ARM_ARCH with +dotprod+i8mm "
            f"(got {arch or 'none'}): without them the i8mm/dotprod kernels are not built"
        )


def build_dir(spec: BuildSpec, cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return (cache or cache_dir()) / "build" / f"{version}-{spec.target}-{spec.flag_hash()}"


def configure_argv(spec: BuildSpec, source: Path, bdir: Path) -> list[str]:
    """The cmake configure command (an argv, never a shell string)."""
    argv = ["cmake", "-S", str(source), "-B", str(bdir / "cmake"), "-G", "Ninja"]
    if spec.toolchain_text is not None:
        argv.append(f"-DCMAKE_TOOLCHAIN_FILE={bdir / 'toolchain.cmake'}")
    elif spec.toolchain_file is not None:
        argv.append(f"-DCMAKE_TOOLCHAIN_FILE={spec.toolchain_file}")
    argv += [f"-D{k}={v}" for k, v in sorted(spec.defines.items())]
    return argv


def build_argv(spec: BuildSpec, bdir: Path, jobs: int) -> list[str]:
    return ["cmake", "--build", str(bdir / "cmake"), "-j", str(jobs), "--target", *spec.tools]


def check_programs(spec: BuildSpec, env: Mapping[str, str] | None = None) -> None:
    """ToolMissing (one line naming the Debian package) for the first missing program."""
    full = merged_env(env)
    for prog in spec.programs:
        require_program(prog, full)


def _binaries(spec: BuildSpec, bdir: Path) -> dict[str, Path]:
    return {t: bdir / "cmake" / "bin" / t for t in spec.tools}


def _read_stamp(spec: BuildSpec, bdir: Path) -> dict | None:
    try:
        stamp = json.loads((bdir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("flag_hash") != spec.flag_hash():
        return None
    if not all(p.is_file() for p in _binaries(spec, bdir).values()):
        return None
    return stamp


def where(
    target: str,
    *,
    env: Mapping[str, str] | None = None,
    cache: Path | None = None,
    extra_defines: Mapping[str, str] | None = None,
) -> BuildResult:
    """The finished build for `target` (default flags, bundled patches), or BadInput with the command that
    makes it (a build from before the current patches does not count)."""
    spec = build_spec(target, env=env, extra_defines=extra_defines)
    bdir = build_dir(spec, cache or cache_dir(merged_env(env)))
    stamp = _read_stamp(spec, bdir)
    if stamp is None:
        raise BadInput(f"llama.cpp tools for {target} are not built: run `imp-gguf runtime build --target {target}`")
    return BuildResult(target, bdir, _binaries(spec, bdir), stamp, reused=True)


ProgressFn = Callable[[int, int, str], None]


class LogSink:
    """Writes every line to the log, keeps a tail for errors, and reports ninja's `[n/N]` progress (when given
    `progress`; the web UI's npm build uses it without)."""

    def __init__(self, log: Path, progress: ProgressFn | None) -> None:
        self.fh = open(log, "a", encoding="utf-8", buffering=1)  # line-buffered: `tail -f` works mid-build
        self.tail: deque[str] = deque(maxlen=40)
        self.progress = progress

    def __call__(self, line: str) -> None:
        self.fh.write(line + "\n")
        self.tail.append(line)
        if self.progress and line.startswith("["):
            head, _, rest = line[1:].partition("]")
            n, _, total = head.partition("/")
            if n.isdigit() and total.isdigit():
                self.progress(int(n), int(total), rest.strip())

    def close(self) -> None:
        self.fh.close()


def _step(runner: Runner, argv: list[str], sink: LogSink, env: Mapping[str, str] | None, what: str, log: Path) -> None:
    sink(f"$ {' '.join(argv)}")
    rc = runner.stream(argv, on_line=sink, env=env)
    if rc != 0:
        raise BuildFailed(f"llama.cpp {what} failed (exit {rc}); full log: {log}", log, list(sink.tail))


def _cmake_cache(bdir: Path) -> dict[str, str]:
    values = {}
    path = bdir / "cmake" / "CMakeCache.txt"
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        if line and not line.startswith(("#", "//")) and "=" in line:
            key, _, value = line.partition("=")
            values[key.split(":", 1)[0]] = value
    return values


def _check_configure(spec: BuildSpec, bdir: Path, log: Path) -> None:
    """After configure, before the long compile: the arm64 CPU backend must have found dotprod and i8mm."""
    if not spec.arm64:
        return
    cache = _cmake_cache(bdir)
    missing = [f for f in ("HAVE_DOTPROD", "HAVE_MATMUL_INT8") if cache.get(f) != "1"]
    if missing:
        raise InternalError(
            f"{spec.target} configure did not enable {' and '.join(missing)}: the build would lack the "
            f"i8mm/dotprod kernels; see {log}"
        )


def _verify_binaries(spec: BuildSpec, binaries: dict[str, Path], commit: str, env: Mapping[str, str] | None) -> str:
    """Check what was produced really is what was asked for; returns `llama-bench --version` output."""
    for name, path in binaries.items():
        if not path.is_file():
            raise InternalError(f"the build finished but {name} is missing from {path.parent}")
        if spec.arm64:
            info = read_elf(path)
            if info.machine != EM_AARCH64 or not info.is_64:
                raise InternalError(f"{name} is not an aarch64 ELF (machine {info.machine})")
            if spec.static_elf and not info.is_static:
                raise InternalError(f"{name} is dynamically linked (has PT_INTERP/PT_DYNAMIC); expected static")
    runner: Runner | None = LocalRunner() if spec.target == "host" else QemuRunner() if spec.static_elf else None
    if runner is None:  # android binaries need bionic: they can only be run on a device
        return ""
    proc = runner.run([str(binaries["llama-bench"]), "--version"], env=env, timeout=120)
    out = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or commit[:7] not in out:
        raise InternalError(f"built llama-bench --version exit {proc.returncode}, no commit {commit[:7]}: {out.strip()[:200]}")
    return out.strip()


def build(
    target: str,
    *,
    jobs: int | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    cache: Path | None = None,
    extra_defines: Mapping[str, str] | None = None,
    patches: tuple[Patch, ...] | None = None,
    progress: ProgressFn | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> BuildResult:
    """Build (or reuse) the tools for `target`. `env` overrides variables for the tools (e.g. PATH).

    `on_start(build_dir)` is called only when a real build begins (not on reuse or early errors).
    A patch that does not apply raises PatchDoesNotApply before anything is configured.
    """
    spec = build_spec(target, env=env, extra_defines=extra_defines, patches=patches)
    check_programs(spec, env)
    cache = cache or cache_dir(merged_env(env))
    bdir = build_dir(spec, cache)
    binaries = _binaries(spec, bdir)
    if not force and (stamp := _read_stamp(spec, bdir)) is not None:
        return BuildResult(target, bdir, binaries, stamp, reused=True)
    source: Source = patched_source(ensure_source(cache), spec.patches)
    with file_lock(bdir.with_name(bdir.name + ".lock")):
        # Another process may have finished this very build while we waited for the lock.
        if not force and (stamp := _read_stamp(spec, bdir)) is not None:
            return BuildResult(target, bdir, binaries, stamp, reused=True)
        if force and bdir.exists():
            shutil.rmtree(bdir)
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / STAMP).unlink(missing_ok=True)
        if spec.toolchain_text is not None:
            (bdir / "toolchain.cmake").write_text(spec.toolchain_text)
        log = bdir / "build.log"
        if on_start is not None:
            on_start(bdir)
        start = time.monotonic()
        sink = LogSink(log, progress)
        runner = LocalRunner()
        try:
            sink(f"# imp-gguf build {target} {spec.flag_hash()} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
            _step(runner, configure_argv(spec, source.llama_cpp, bdir), sink, env, "configure", log)
            _check_configure(spec, bdir, log)
            _step(runner, build_argv(spec, bdir, jobs or os.cpu_count() or 2), sink, env, "build", log)
        finally:
            sink.close()
        version_out = _verify_binaries(spec, binaries, source.commit, env)
        seconds = time.monotonic() - start
        stamp = {
            "llama_cpp_python": source.version,
            "commit": source.commit,
            "target": target,
            "flag_hash": spec.flag_hash(),
            "defines": spec.defines,
            "toolchain_file": spec.toolchain_file,
            "env": dict(spec.env_inputs),
            "tools": {k: str(v.relative_to(bdir)) for k, v in binaries.items()},
            "source": str(source.root),
            "patches": [p.to_dict() for p in spec.patches],
            "version_output": version_out,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 1),
        }
        tmp = bdir / (STAMP + ".tmp")
        tmp.write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(tmp, bdir / STAMP)  # the stamp appears only once everything above succeeded
        return BuildResult(target, bdir, binaries, stamp, reused=False, seconds=seconds)


TERMUX_STEPS = """\
# Native build of the pinned llama.cpp {version} (commit {commit}) inside Termux on the phone.
pkg update && pkg install -y git cmake clang ninja python
# Same source as imp-gguf pins: the llama-cpp-python {version} sdist (vendors llama.cpp {commit}).
# Either download it in Termux:
pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d ~/imp-src
# ...or copy it from a PC (the sdist is cached at {sdist}):
#   adb push {sdist} /sdcard/Download/ && cp /sdcard/Download/{sdist_name} ~/imp-src/
cd ~/imp-src && tar xzf {sdist_name} && cd llama_cpp_python-{version}/vendor/llama.cpp
{patches}cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \\
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \\
  -DLLAMA_USE_PREBUILT_UI=OFF
cmake --build build -j 4 --target {tools}
# Binaries: build/bin/. Keep models in ~/ and use -c 4096 to stay clear of the OOM killer.
"""


def termux_instructions(cache: Path | None = None) -> str:
    """Commands for an on-device build in Termux (GGML_NATIVE is right there: it targets the phone's own CPU)."""
    sdist = sdist_path(cache or cache_dir())
    return TERMUX_STEPS.format(
        version=LLAMA_CPP_PYTHON_VERSION,
        commit=LLAMA_CPP_COMMIT,
        sdist=sdist,
        sdist_name=sdist.name,
        tools=" ".join(TOOLS),
        patches="".join(_termux_patch_step(p) for p in bundled_patches()),
    )


def _termux_patch_step(patch: Patch) -> str:
    """The patch inline (a here-document), so the steps need no file from the PC; git apply stops on a misfit."""
    text = patch.path.read_text()
    end = "IMP_GGUF_PATCH_END"
    if end in text:
        raise InternalError(f"{patch.name} contains the here-document delimiter {end}")
    return f"# imp-gguf's patch {patch.name} (as `runtime build` applies it): {patch.subject}\ngit apply <<'{end}'\n{text}{end}\n"
