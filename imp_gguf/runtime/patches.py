"""The patches imp-gguf applies to the pinned llama.cpp before building it (`runtime/patches/*.patch`).

Each is a small, upstream-ready change (see docs/clip-preprocessing-keys.md for the one there is).
The verified source stays untouched: the build works on a copy with the patches applied,
`src/llama_cpp_python-<version>+<patch key>/`, and the patches enter the build's cache key, so a build
from before a patch (or with another one) is never reused. A patch that does not apply (a new pin)
stops the build with one line before anything is configured or compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp_gguf.errors import InternalError
from imp_gguf.runtime.runner import LocalRunner, Runner
from imp_gguf.runtime.source import STAMP_NAME, Source, file_lock, file_sha256

PATCH_DIR = Path(__file__).with_name("patches")


class PatchDoesNotApply(InternalError):
    """A carried patch no longer fits the pinned source (exit 1: the project must update it)."""


@dataclass(frozen=True)
class Patch:
    name: str  # file name, e.g. 0001-mtmd-preprocessing-keys.patch
    path: Path
    sha256: str

    @property
    def subject(self) -> str:
        """The `Subject:` line of a format-patch header, else the name."""
        for line in self.path.read_text(errors="replace").splitlines():
            if line.startswith("Subject:"):
                return line.split(":", 1)[1].replace("[PATCH]", "").strip()
            if line.startswith("diff --git"):
                break
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "subject": self.subject}


def load_patches(paths: Sequence[Path]) -> tuple[Patch, ...]:
    return tuple(Patch(p.name, p, file_sha256(p)) for p in paths)


def bundled_patches() -> tuple[Patch, ...]:
    """The patches shipped in the package, in the order they apply (by name)."""
    return load_patches(sorted(PATCH_DIR.glob("*.patch")))


def patch_key(patches: Sequence[Patch]) -> str:
    """Names the patched tree; empty for none (the verified source is used as it is)."""
    if not patches:
        return ""
    blob = json.dumps([[p.name, p.sha256] for p in patches])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _apply_argv(patch: Patch, check: bool) -> list[str]:
    # git apply (not patch): atomic per patch, and --check reports every hunk that fails.
    return ["git", "apply", *(["--check"] if check else []), "--whitespace=nowarn", str(patch.path)]


def check_applies(patches: Sequence[Patch], llama_cpp: Path, runner: Runner | None = None) -> None:
    """PatchDoesNotApply (one line) for the first patch that does not apply to this tree."""
    runner = runner or LocalRunner()
    for patch in patches:
        proc = runner.run(_apply_argv(patch, check=True), cwd=llama_cpp, timeout=120)
        if proc.returncode != 0:
            why = next((ln.removeprefix("error: ") for ln in (proc.stderr or "").splitlines() if ln.strip()), "")
            raise PatchDoesNotApply(f"patch {patch.name} does not apply to llama.cpp at {llama_cpp}"
                                    f"{f' ({why})' if why else ''}: it needs updating for this pin")


def patched_source(source: Source, patches: Sequence[Patch], runner: Runner | None = None) -> Source:
    """A copy of `source` with `patches` applied, made once and then reused (stamped like the source)."""
    if not patches:
        return source
    key = patch_key(patches)
    root = source.root.with_name(f"{source.root.name}+{key}")
    stamp = root / STAMP_NAME
    if stamp.is_file():
        return Source(root=root, version=source.version, commit=source.commit)
    check_applies(patches, source.llama_cpp, runner)  # on the pristine tree: fails fast, copies nothing
    with file_lock(root.with_name(f".{root.name}.lock")):
        if stamp.is_file():  # made by another process while we waited
            return Source(root=root, version=source.version, commit=source.commit)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.tmp-") as tmp:
            work = Path(tmp) / "tree"
            shutil.copytree(source.root, work, symlinks=True)
            runner = runner or LocalRunner()
            for patch in patches:
                proc = runner.run(_apply_argv(patch, check=False), cwd=work / "vendor" / "llama.cpp", timeout=120)
                if proc.returncode != 0:
                    raise PatchDoesNotApply(f"patch {patch.name} failed to apply: {(proc.stderr or '').strip()[:200]}")
            meta = {"version": source.version, "commit": source.commit, "patches": [p.to_dict() for p in patches],
                    "patched_at": time.time()}
            (work / STAMP_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            if root.exists():  # an unstamped leftover of an interrupted copy
                shutil.rmtree(root)
            os.replace(work, root)
    return Source(root=root, version=source.version, commit=source.commit)
