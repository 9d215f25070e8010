"""The pinned llama.cpp source: the tree vendored in the llama-cpp-python sdist, fetched and unpacked once.

Layout under `${IMP_GGUF_CACHE:-~/.cache/imp-gguf}`:
  sdist/llama_cpp_python-<version>.tar.gz    from `pip download` (only needed until unpacked)
  src/llama_cpp_python-<version>/            unpacked, verified; `.imp-gguf-source.json` marks it done
Taking the source from the sdist (not a git clone) keeps us on a registry the machines can reach and
guarantees the tools and the Python bindings run the same llama.cpp.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imp_gguf.errors import BadInput, InternalError, ToolMissing
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from imp_gguf.runtime.runner import LocalRunner, Runner

# sha256 of the registry's sdist for the pinned version (immutable on the registry once published).
SDIST_SHA256 = {
    "0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
}
STAMP_NAME = ".imp-gguf-source.json"
# Paths the builds need; a tree without them is not the pinned source, whatever its PKG-INFO says.
REQUIRED_PATHS = (
    "vendor/llama.cpp/CMakeLists.txt",
    "vendor/llama.cpp/tools/mtmd/mtmd-cli.cpp",
    "vendor/llama.cpp/tools/llama-bench/llama-bench.cpp",
    "vendor/llama.cpp/tools/quantize/quantize.cpp",
    "vendor/llama.cpp/tools/server/server.cpp",
    "vendor/llama.cpp/tools/perplexity/perplexity.cpp",
    "vendor/llama.cpp/ggml/src/ggml-cpu/arch/arm/repack.cpp",
)


@dataclass(frozen=True)
class Source:
    root: Path  # the unpacked sdist
    version: str  # llama-cpp-python version
    commit: str  # full llama.cpp commit of vendor/llama.cpp

    @property
    def llama_cpp(self) -> Path:
        return self.root / "vendor" / "llama.cpp"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("IMP_GGUF_CACHE") or Path.home() / ".cache" / "imp-gguf").expanduser()


def source_dir(cache: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache / "src" / f"llama_cpp_python-{version}"


def sdist_path(cache: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes (a CLI build and a test session) never unpack/build into one dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _vendored_commit(root: Path) -> str:
    """The commit of vendor/llama.cpp read from the sdist's git metadata (no git needed)."""
    dotgit = root / "vendor" / "llama.cpp" / ".git"
    gitdir = dotgit
    if dotgit.is_file():  # a submodule: ".git" holds "gitdir: ../../.git/modules/vendor/llama.cpp"
        text = dotgit.read_text().strip()
        if not text.startswith("gitdir:"):
            raise BadInput(f"unexpected {dotgit}: {text[:60]}")
        gitdir = (dotgit.parent / text.split(":", 1)[1].strip()).resolve()
    head = (gitdir / "HEAD").read_text().strip() if (gitdir / "HEAD").is_file() else ""
    if head.startswith("ref:"):
        ref = gitdir / head.split(":", 1)[1].strip()
        head = ref.read_text().strip() if ref.is_file() else ""
    if len(head) != 40:
        raise BadInput(f"cannot read the llama.cpp commit from {gitdir}")
    return head


def _pkg_version(root: Path) -> str:
    pkg_info = root / "PKG-INFO"
    if not pkg_info.is_file():
        raise BadInput(f"{root} is not an unpacked llama-cpp-python sdist (no PKG-INFO)")
    for line in pkg_info.read_text(errors="replace").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise BadInput(f"{pkg_info} has no Version line")


def verify_tree(root: Path, version: str = LLAMA_CPP_PYTHON_VERSION, commit: str = LLAMA_CPP_COMMIT) -> Source:
    """Check an unpacked tree is the pinned one: PKG-INFO version, vendored commit, the tools' sources."""
    found_version = _pkg_version(root)
    if found_version != version:
        raise BadInput(f"{root} holds llama-cpp-python {found_version}, expected {version}")
    found_commit = _vendored_commit(root)
    if not found_commit.startswith(commit):
        raise BadInput(f"{root} vendors llama.cpp {found_commit[:9]}, expected {commit}")
    missing = [p for p in REQUIRED_PATHS if not (root / p).exists()]
    if missing:
        raise BadInput(f"{root} is incomplete (missing {missing[0]}); delete it to unpack again")
    return Source(root=root, version=found_version, commit=found_commit)


def find_source(cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Source | None:
    """The unpacked source if it was verified before (fast path: reads the stamp only)."""
    root = source_dir(cache or cache_dir(), version)
    try:
        stamp = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("version") != version or not str(stamp.get("commit", "")).startswith(LLAMA_CPP_COMMIT):
        return None
    return Source(root=root, version=stamp["version"], commit=stamp["commit"])


def download_sdist(
    cache: Path, version: str = LLAMA_CPP_PYTHON_VERSION, runner: Runner | None = None
) -> Path:
    """`pip download` the sdist into the cache and check its sha256 (about 1 min, 77 MB)."""
    target = sdist_path(cache, version)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", tmp]
            proc = (runner or LocalRunner()).run(argv, timeout=1800)
            files = list(Path(tmp).glob("*.tar.gz"))
            if proc.returncode != 0 or len(files) != 1:
                last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
                raise ToolMissing(f"pip download llama-cpp-python=={version} failed: {last[0]}")
            os.replace(files[0], target)
    expected = SDIST_SHA256.get(version)
    if expected is not None and file_sha256(target) != expected:
        bad = target.with_suffix(".bad")
        os.replace(target, bad)
        raise InternalError(f"{target.name} has the wrong sha256 (moved to {bad.name}); download again")
    return target


def _unpack(tarball: Path, dest: Path) -> None:
    """Unpack into a temp dir beside `dest`, then rename: a half-unpacked tree never has the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        tops = list(Path(tmp).iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise InternalError(f"{tarball.name} does not hold a single top folder")
        os.replace(tops[0], dest)


def ensure_source(
    cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION, runner: Runner | None = None
) -> Source:
    """Return the verified pinned source, downloading and unpacking it the first time."""
    cache = cache or cache_dir()
    found = find_source(cache, version)
    if found is not None:
        return found
    root = source_dir(cache, version)
    with file_lock(cache / "src" / f".{root.name}.lock"):
        found = find_source(cache, version)  # another process may have finished while we waited
        if found is not None:
            return found
        src, sha = None, None
        if root.exists():
            try:
                src = verify_tree(root, version)
            except BadInput:
                # A tree left by something else that does not verify: set it aside, unpack again.
                shutil.move(root, root.with_name(f"{root.name}.rejected-{int(time.time())}"))
        if src is None:
            tarball = download_sdist(cache, version, runner)
            sha = file_sha256(tarball)
            _unpack(tarball, root)
            src = verify_tree(root, version)
        stamp = {"version": src.version, "commit": src.commit, "sdist_sha256": sha, "verified_at": time.time()}
        tmp = root / f"{STAMP_NAME}.tmp"
        tmp.write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(tmp, root / STAMP_NAME)
        return src
