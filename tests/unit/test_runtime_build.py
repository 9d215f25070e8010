"""The llama.cpp builds without building: what makes another build, the configure argv for each target,
missing tools named with their Debian package. Moved from tests/e2e/test_runtime_build.py, which builds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput, ToolMissing
from imp_gguf.runtime import build as rt
from imp_gguf.runtime.runner import QemuRunner


def test_different_flags_give_a_different_unbuilt_dir() -> None:
    base = rt.build_spec("host")
    other = rt.build_spec("host", extra_defines={"GGML_CPU_REPACK": "OFF"})
    assert rt.build_dir(base) != rt.build_dir(other)
    assert rt.build_dir(base) == rt.build_dir(rt.build_spec("host"))  # stable across calls
    assert rt.build_dir(rt.build_spec("linux-arm64")) != rt.build_dir(base)
    # CMake also reads CC/CFLAGS...: a build with another compiler is another build.
    assert rt.build_dir(rt.build_spec("host", env={"CC": "clang"})) != rt.build_dir(base)
    with pytest.raises(BadInput, match="runtime build --target host"):
        rt.where("host", extra_defines={"GGML_CPU_REPACK": "OFF"})


def test_missing_cmake_names_the_debian_package() -> None:
    with pytest.raises(ToolMissing, match=r"cmake not found.*apt-get install cmake"):
        rt.build("host", env={"PATH": ""})


def test_missing_qemu_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="apt-get install qemu-user"):
        QemuRunner().run(["/bin/true"])


def test_arm_build_without_i8mm_is_refused() -> None:
    with pytest.raises(BadInput, match="i8mm"):
        rt.build_spec("linux-arm64", extra_defines={"GGML_CPU_ARM_ARCH": "armv8.2-a+dotprod"})
    with pytest.raises(BadInput, match="GGML_NATIVE=OFF"):
        rt.build_spec("linux-arm64", extra_defines={"GGML_NATIVE": "ON"})


def test_arm_configure_argv_has_toolchain_and_static_flags() -> None:
    spec = rt.build_spec("linux-arm64")
    bdir = rt.build_dir(spec)
    argv = rt.configure_argv(spec, Path("/src"), bdir)
    assert f"-DCMAKE_TOOLCHAIN_FILE={bdir / 'toolchain.cmake'}" in argv
    for flag in ("-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={rt.ARM_ARCH}", "-DGGML_STATIC=ON",
                 "-DCMAKE_EXE_LINKER_FLAGS=-static", "-DGGML_OPENMP=ON", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"):
        assert flag in argv
    assert "aarch64-linux-gnu-g++" in spec.toolchain_text and "/usr/aarch64-linux-gnu" in spec.toolchain_text


def test_android_argv_with_fake_ndk(tmp_path: Path) -> None:
    ndk = tmp_path / "android-ndk-r28b"
    toolchain = ndk / "build" / "cmake" / "android.toolchain.cmake"
    toolchain.parent.mkdir(parents=True)
    toolchain.write_text("# fake\n")
    spec = rt.build_spec("android-arm64", env={"ANDROID_NDK": str(ndk)})
    bdir = rt.build_dir(spec, tmp_path)
    argv = rt.configure_argv(spec, Path("/src/llama.cpp"), bdir)
    assert argv[:7] == ["cmake", "-S", "/src/llama.cpp", "-B", str(bdir / "cmake"), "-G", "Ninja"]
    for flag in (f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DANDROID_ABI=arm64-v8a", "-DANDROID_PLATFORM=android-28",
                 "-DCMAKE_C_FLAGS=-march=armv8.7a", "-DCMAKE_CXX_FLAGS=-march=armv8.7a",
                 "-DGGML_OPENMP=OFF", "-DGGML_LLAMAFILE=OFF", "-DBUILD_SHARED_LIBS=OFF"):
        assert flag in argv
    assert rt.build_argv(spec, bdir, 2)[-len(rt.TOOLS):] == list(rt.TOOLS)
    # Another NDK is another build.
    ndk2 = tmp_path / "ndk2"
    shutil.copytree(ndk, ndk2)
    assert rt.build_dir(rt.build_spec("android-arm64", env={"ANDROID_NDK": str(ndk2)}), tmp_path) != bdir
    with pytest.raises(BadInput, match="android.toolchain.cmake"):
        rt.build_spec("android-arm64", env={"ANDROID_NDK": str(tmp_path / "empty")})
