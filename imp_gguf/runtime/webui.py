"""llama.cpp's web UI, built with npm from the pinned source's `tools/ui`, for llama-server's `--path`.

The pinned llama.cpp's CMake would embed the UI into llama-server, taking its assets from a Hugging Face
bucket (unreachable here) or from npm. imp-gguf's tool builds leave it out (build.COMMON_DEFINES) and
build it on its own instead: `npm ci` with the source's package-lock.json, then `npm run build` (as
`scripts/ui-assets.cmake` does), into a folder of static files that the bundle's serve.sh hands to
llama-server with `--path`. The tool builds, their flags and their cache keys stay as they were.

Cache layout: `${cache}/ui/<key>/` with key = `<commit7>-<hash12>`, the hash covering every file of
`tools/ui` (names and bytes) and UI_RECIPE, so one pinned source gives one UI:
  dist/        the static files (index.html, _app/immutable/bundle.*.js and .css, icons, manifest, sw.js)
  build.log    npm's full output
  stamp.json   written last: present = finished and checked, reused instantly
The build runs in a hidden `.<key>.tmp-*` folder beside it (its node_modules is ~700 MB) that is renamed
to `<key>` once the dist is checked, and deleted otherwise; a lock keeps two processes from building one key.
npm's own download cache (~170 MB) stays where npm keeps it (~/.npm unless npm_config_cache says otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp_gguf.errors import InternalError, ToolMissing
from imp_gguf.runtime.build import BuildFailed, LogSink
from imp_gguf.runtime.runner import LocalRunner, merged_env, require_program
from imp_gguf.runtime.source import Source, cache_dir, ensure_source, file_lock, find_source

# Bump when the steps below change what comes out for the same source (it is part of the key).
UI_RECIPE = "npm-ci+npm-run-build/1"
STAMP = "stamp.json"
UI_SUBDIR = "tools/ui"
# Never part of the source: what a build in place leaves behind.
SKIP_DIRS = {"node_modules", "dist", ".svelte-kit", "build"}
# vite 7 (in the lock file) needs Node ^20.19 or >= 22.12.
MIN_NODE = (20, 19)
# Wall-clock bounds: npm retries a dead registry for about a minute by itself; a hung one must not hang us.
NPM_CI_TIMEOUT = 20 * 60
NPM_BUILD_TIMEOUT = 20 * 60
# What llama-server needs from the dist (ui-assets.cmake's ui_validate_assets checks the same names).
REQUIRED = ("index.html", "manifest.webmanifest", "sw.js", "build.json", "_app/version.json")
REQUIRED_PATTERNS = (r"^_app/immutable/bundle\.[^/]*\.js$", r"^_app/immutable/assets/bundle\.[^/]*\.css$",
                     r"^workbox-[^/]*\.js$")


def npm_env(commit: str, out_dir: Path) -> dict[str, str]:
    """Variables for npm ci and npm run build (overrides on top of the caller's environment)."""
    return {
        # No package in the lock file downloads browsers at install time (its install scripts are esbuild's
        # and @tailwindcss/oxide's binary checks, and optional file watchers); this keeps it so should
        # playwright (a devDependency, for the UI's own tests) ever start to.
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        "npm_config_update_notifier": "false",
        # vite's "caniuse-lite is old" notice is advice to update the lock file, which we do not own.
        "BROWSERSLIST_IGNORE_OLD_DATA": "1",
        # What ui-assets.cmake passes: the output folder, and the version build.json shows (here the commit,
        # as llama-server --version names it: the sdist's shallow git makes its build number 1).
        "LLAMA_UI_OUT_DIR": str(out_dir),
        "LLAMA_BUILD_NUMBER": commit[:7],
    }


@dataclass
class WebUI:
    key: str
    folder: Path  # ${cache}/ui/<key>
    stamp: dict
    reused: bool
    seconds: float = 0.0

    @property
    def dist(self) -> Path:
        return self.folder / "dist"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "dist": str(self.dist), "reused": self.reused, "seconds": round(self.seconds, 1),
                "commit": self.stamp.get("commit"), "files": self.stamp.get("files"),
                "bytes": self.stamp.get("bytes"), "node": self.stamp.get("node"), "npm": self.stamp.get("npm")}


class UiBuildFailed(BuildFailed):
    """npm ci or npm run build failed, or left an incomplete dist; carries the log tail for the CLI."""


def ui_source(source: Source) -> Path:
    return source.llama_cpp / UI_SUBDIR


def _source_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return out


def ui_key(source: Source) -> str:
    """`<commit7>-<hash12>`: the hash of UI_RECIPE, the commit and every file under tools/ui (path + bytes)."""
    root = ui_source(source)
    if not (root / "package.json").is_file() or not (root / "package-lock.json").is_file():
        raise InternalError(f"{root} has no package.json and package-lock.json: not the llama.cpp UI source")
    h = hashlib.sha256(f"{UI_RECIPE}\n{source.commit}\n".encode())
    for path in _source_files(root):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{source.commit[:7]}-{h.hexdigest()[:12]}"


def ui_dir(key: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "ui" / key


def check_dist(dist: Path) -> dict:
    """The dist's file count and size; InternalError naming what is missing (a name index.html refers to
    included), so a truncated build is never cached."""
    files = sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file())
    missing = [name for name in REQUIRED if name not in files]
    missing += [pat for pat in REQUIRED_PATTERNS if not any(re.match(pat, f) for f in files)]
    if not missing:
        for ref in index_assets((dist / "index.html").read_text(errors="replace")):
            if ref not in files:
                missing.append(f"{ref} (named by index.html)")
    if missing:
        raise InternalError(f"the web UI build in {dist} lacks {', '.join(missing)}")
    return {"files": len(files), "bytes": sum((dist / f).stat().st_size for f in files)}


def index_assets(html: str) -> list[str]:
    """The scripts and stylesheets index.html loads (`./_app/...`), as paths relative to the dist."""
    refs = re.findall(r'(?:href|src)="\./(_app/[^"]+\.(?:js|css))"', html)
    return list(dict.fromkeys(refs))


def _read_stamp(folder: Path, key: str) -> dict | None:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key or not (folder / "dist" / "index.html").is_file():
        return None
    return stamp


def find_ui(cache: Path | None = None, env: Mapping[str, str] | None = None) -> WebUI | None:
    """The finished UI for the pinned source if it was built before (reads the source's stamp and the UI's;
    runs no npm), else None. Needs the source unpacked (any `runtime build` did that), else None."""
    cache = cache or cache_dir(merged_env(env))
    source = find_source(cache)
    if source is None:
        return None
    key = ui_key(source)
    folder = ui_dir(key, cache)
    stamp = _read_stamp(folder, key)
    return None if stamp is None else WebUI(key, folder, stamp, reused=True)


def check_node(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(node version, npm version); ToolMissing when either is missing or node is too old for the UI."""
    full = merged_env(env)
    hint = f"install Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]} with npm (https://nodejs.org, or apt-get install nodejs npm)"
    for prog in ("npm", "node"):
        try:
            require_program(prog, full)
        except ToolMissing:
            raise ToolMissing(f"{prog} not found on PATH: the web UI is built with npm; {hint}") from None
    versions = []
    for prog in ("node", "npm"):
        proc = LocalRunner().run([prog, "--version"], env=env, timeout=60)
        if proc.returncode != 0:
            raise ToolMissing(f"`{prog} --version` failed (exit {proc.returncode}): {hint}")
        versions.append(proc.stdout.strip())
    m = re.match(r"v?(\d+)\.(\d+)", versions[0])
    if m is None or (int(m[1]), int(m[2])) < MIN_NODE:
        raise ToolMissing(f"node {versions[0]} is too old for the web UI (vite 7): {hint}")
    return versions[0], versions[1]


def _npm_error(tail: list[str]) -> str:
    """npm's own one-line reason (`npm error code ECONNREFUSED`), else the last line."""
    for line in tail:
        if line.startswith("npm error code") or line.startswith("npm ERR! code"):
            return line.strip()
    lines = [line.strip() for line in tail if line.strip()]
    return lines[-1][:200] if lines else "no output"


def _npm(argv: list[str], cwd: Path, env: dict[str, str], log: LogSink, logpath: Path, timeout: float, what: str) -> None:
    log(f"$ {' '.join(argv)}")
    try:
        rc = LocalRunner().stream(argv, on_line=log, cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UiBuildFailed(f"{what} did not finish within {timeout / 60:g} min; log: {logpath}",
                            logpath, list(log.tail)) from None
    if rc != 0:
        raise UiBuildFailed(f"{what} failed (exit {rc}: {_npm_error(list(log.tail))}); log: {logpath}",
                            logpath, list(log.tail))


ProgressFn = Callable[[str], None]


def build_ui(
    *,
    force: bool = False,
    cache: Path | None = None,
    env: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> WebUI:
    """Build (or reuse) the web UI of the pinned llama.cpp. `env` overrides variables for npm (e.g. PATH,
    npm_config_registry). `on_start(log)` is called only when a real build begins; `progress(step)` names
    each npm step. ToolMissing without npm or a recent enough node; UiBuildFailed when npm fails."""
    cache = cache or cache_dir(merged_env(env))
    source = ensure_source(cache)
    key = ui_key(source)
    folder = ui_dir(key, cache)
    if not force and (stamp := _read_stamp(folder, key)) is not None:
        return WebUI(key, folder, stamp, reused=True)
    node, npm = check_node(env)
    with file_lock(folder.with_name(f".{key}.lock")):
        if not force and (stamp := _read_stamp(folder, key)) is not None:
            return WebUI(key, folder, stamp, reused=True)  # another process built it while we waited
        for stale in folder.parent.glob(f".{key}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}.tmp-"))
        try:
            os.chmod(tmp, 0o755)
            work, dist, logpath = tmp / "src", tmp / "dist", tmp / "build.log"
            if on_start is not None:
                on_start(logpath)
            start = time.monotonic()
            shutil.copytree(ui_source(source), work, ignore=shutil.ignore_patterns(*SKIP_DIRS))
            full_env = {**(env or {}), **npm_env(source.commit, dist)}
            log = LogSink(logpath, None)
            try:
                log(f"# imp-gguf web UI {key} from {ui_source(source)} at {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                    f"node {node}, npm {npm}")
                if progress:
                    progress("npm ci")
                # The lock file pins every package (with its integrity hash); --prefer-offline takes what npm's
                # cache already holds without asking the registry again.
                _npm(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], work, full_env, log, logpath,
                     NPM_CI_TIMEOUT, "npm ci")
                if progress:
                    progress("npm run build")
                # build-pwa-assets (icons and splash screens, drawn locally with sharp), then vite build.
                _npm(["npm", "run", "build"], work, full_env, log, logpath, NPM_BUILD_TIMEOUT, "npm run build")
            finally:
                log.close()
            try:
                sizes = check_dist(dist)
            except InternalError as exc:
                raise UiBuildFailed(f"{exc}; log: {logpath}", logpath, []) from None
            shutil.rmtree(work)  # node_modules: ~700 MB, not needed once built
            seconds = time.monotonic() - start
            stamp = {"key": key, "recipe": UI_RECIPE, "llama_cpp_python": source.version, "commit": source.commit,
                     "source": str(ui_source(source)), "node": node, "npm": npm, **sizes,
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 1)}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if folder.exists():  # an unfinished or --force'd one
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            return WebUI(key, folder, stamp, reused=False, seconds=seconds)
        except UiBuildFailed as exc:
            # Keep the log where the message points: beside the (absent) result.
            kept = folder.with_name(f"{key}.failed.log")
            if exc.log.is_file():
                shutil.copyfile(exc.log, kept)
                exc.args = (str(exc).replace(str(exc.log), str(kept)),)
                exc.log = kept
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def ui_for_bundle(
    *, cache: Path | None = None, env: Mapping[str, str] | None = None, progress: ProgressFn | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> tuple[WebUI | None, str, str]:
    """(the UI, "", "") for a bundle, built if needed; when npm is missing or fails, (None, the error for a
    warning here, a short reason for the bundle's README): a bundle is still made, without the UI."""
    try:
        return build_ui(cache=cache, env=env, progress=progress, on_start=on_start), "", ""
    except ToolMissing as exc:
        return None, str(exc), "Node.js/npm, which builds it, was missing where the bundle was made"
    except UiBuildFailed as exc:
        return None, str(exc), "its npm build failed where the bundle was made"
