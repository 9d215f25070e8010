"""A self-contained folder (and OUT.tar.gz) to run Imp on a phone: static tools, the two GGUFs, run.sh,
chat.sh and serve.sh, and llama.cpp's web UI (ui/, from runtime/webui.py) for serve.sh's llama-server.

Ready for `adb push OUT /data/local/tmp/` or for unpacking into Termux's home. Both outputs are written
under temporary names in OUT's folder and renamed at the end, so an interrupted bundle leaves no OUT.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.gguf_info import read_gguf_meta
from imp_gguf.images import mmproj_image_spec
from imp_gguf.pair import check_pair
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION
from imp_gguf.runtime.build import STAMP, AppliedPatch, where
from imp_gguf.runtime.context import (CHAT_TURNS, GEN_BUDGET, TEXT_BUDGET, chat_context, image_tokens, job_context,
                                      kv_cell_bytes)
from imp_gguf.runtime.source import file_sha256
from imp_gguf.runtime.webui import WebUI

RUN_SH = """\
#!/bin/sh
# Ask the bundled Imp model about one image (llama.cpp {commit}, target {target}).
# usage: sh run.sh IMAGE "QUESTION" [more llama-mtmd-cli options]
# IMAGE goes as it is, any size or shape (README.txt says how this build prepares it).
# IMP_THREADS, IMP_CPU_MASK (hex; empty: no pinning), IMP_CTX and IMP_MAX_TOKENS override the defaults.
set -eu
if [ "$#" -lt 2 ]; then
    echo "usage: $0 IMAGE \\"QUESTION\\" [more llama-mtmd-cli options]" >&2
    exit 2
fi
# Make the image path absolute before the cd below, so relative paths still work.
case "$1" in
    /*) image=$1 ;;
    *) image=$(pwd)/$1 ;;
esac
question=$2
shift 2
{enter}
# -c: the job's context ({n_image} image tokens + {text_budget} for the question + {gen_budget} generated).
# -lm none: read the weights instead of mapping them, so those llama.cpp repacks are resident once.
# --jinja: use Imp's own chat template from the GGUF (mtmd-cli would otherwise guess "vicuna").
exec ./bin/llama-mtmd-cli -m {model} --mmproj {mmproj} \\
    --image "$image" -p "$question" -t "$IMP_THREADS" -c "${{IMP_CTX:-{ctx}}}" -n "${{IMP_MAX_TOKENS:-{gen_budget}}}" \\
    {flags}--temp 0 --jinja "$@"
"""
SOC_TUNING = """\
# Threads and big-core mask for this SoC (the table in imp_gguf/runtime/soc.py), read from the phone
# itself; another SoC gets every core (minus 2 on 8+ cores), unpinned. `imp-gguf bench --sweep` measures
# better ones, and `bundle --profile` puts them here.
soc=$(getprop ro.soc.model 2>/dev/null || true)
[ -n "$soc" ] || soc=$(grep -i '^hardware' /proc/cpuinfo 2>/dev/null | head -n 1 || true)
IMP_THREADS_DEFAULT=
IMP_MASK_DEFAULT=
{case}
if [ -z "$IMP_THREADS_DEFAULT" ]; then
    n=$(nproc 2>/dev/null || echo 4)
    if [ "$n" -ge 8 ]; then IMP_THREADS_DEFAULT=$((n - 2)); else IMP_THREADS_DEFAULT=$n; fi
fi
IMP_THREADS=${{IMP_THREADS:-$IMP_THREADS_DEFAULT}}
IMP_CPU_MASK=${{IMP_CPU_MASK-$IMP_MASK_DEFAULT}}"""
# Every launcher enters the bundle's folder and takes its threads and CPU mask the same way.
ENTER = """\
cd "$(dirname "$0")"
# adb push and some unpackers drop the executable bit.
chmod +x bin/* 2>/dev/null || true
{tuning}
if [ -n "$IMP_CPU_MASK" ]; then set -- -C "$IMP_CPU_MASK" --cpu-strict 1 "$@"; fi"""
PROFILE_TUNING = """\
# Flags from the device profile {name} (`imp-gguf bench --sweep` on {device}: decode {decode} tok/s).
IMP_THREADS=${{IMP_THREADS:-{threads}}}
IMP_CPU_MASK=${{IMP_CPU_MASK-{mask}}}"""

CHAT_SH = """\
#!/bin/sh
# Chat about one image with the bundled Imp model (llama.cpp {commit}, target {target}): type a question,
# read the answer, ask a follow-up; the image is encoded once and the conversation stays in the context
# ({ctx} tokens: the image's {n_image}, then about {turns} questions and answers). /clear forgets it,
# /quit or Ctrl-D ends. Questions may also come from a pipe, one per line.
# usage: sh chat.sh IMAGE [more llama-mtmd-cli options]
# IMP_THREADS, IMP_CPU_MASK (hex; empty: no pinning), IMP_CTX and IMP_MAX_TOKENS override the defaults.
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: $0 IMAGE [more llama-mtmd-cli options]" >&2
    exit 2
fi
case "$1" in
    /*) image=$1 ;;
    *) image=$(pwd)/$1 ;;
esac
shift
if [ ! -f "$image" ]; then
    echo "$0: no such image: $image" >&2
    exit 2
fi
case "$image" in *"
"*) echo "$0: the image path holds a line break: rename the file" >&2; exit 2 ;; esac
{enter}
# llama-mtmd-cli without -p chats: its first input line loads the image (/image), then each line is a turn.
# On a terminal, keys go through one by one (no line buffering, no echo here) so that its own line editor
# sees them as if it read the terminal itself, and the terminal is put back afterwards.
if [ -t 0 ]; then
    saved=$(stty -g)
    trap 'stty "$saved"' EXIT
    trap 'exit 130' INT TERM
    stty -icanon -echo min 1
fi
{{ printf '/image %s\\n' "$image"; cat -u; }} | ./bin/llama-mtmd-cli -m {model} --mmproj {mmproj} \\
    -t "$IMP_THREADS" -c "${{IMP_CTX:-{ctx}}}" -n "${{IMP_MAX_TOKENS:-{gen_budget}}}" \\
    {flags}--temp 0 --jinja "$@"
"""

SERVE_SH = """\
#!/bin/sh
# Serve the bundled Imp model over HTTP (llama.cpp {commit}, target {target}): OpenAI-style
# POST /v1/chat/completions with images (image_url parts, base64 data URIs) and GET /health.
{ui_comment}
# One conversation at a time (one slot; more requests wait their turn); prompt caching keeps the
# conversation, image included, so a follow-up evaluates only its new text.
# Context: {ctx} tokens (the image's {n_image}, then about {turns} questions and answers).
# usage: sh serve.sh [more llama-server options]
# Listens on 127.0.0.1:${{IMP_PORT:-{port}}} (this device only). IMP_HOST=ADDRESS (numeric, e.g. 0.0.0.0 or
# 192.168.1.5) listens there instead and then needs IMP_API_KEY: clients send "Authorization: Bearer KEY".
# IMP_THREADS, IMP_CPU_MASK (hex; empty: no pinning), IMP_CTX and IMP_MEM_MB override the defaults.
set -eu
host=127.0.0.1
if [ -n "${{IMP_HOST:-}}" ]; then
    if [ -z "${{IMP_API_KEY:-}}" ]; then
        echo "$0: IMP_HOST=$IMP_HOST listens beyond this device: set IMP_API_KEY too" >&2
        exit 2
    fi
    case "$IMP_HOST" in
        *[!0-9A-Fa-f.:]*) echo "$0: IMP_HOST must be a numeric address: the static server cannot look names up" >&2
                          exit 2 ;;
    esac
    host=$IMP_HOST
fi
port=${{IMP_PORT:-{port}}}
case "$port" in
    ''|*[!0-9]*) echo "$0: IMP_PORT must be a port number, not '$port'" >&2; exit 2 ;;
esac
for arg in "$@"; do
    case "$arg" in
        --host|--host=*|--port|--port=*|--api-key*)
            echo "$0: set IMP_HOST, IMP_PORT and IMP_API_KEY instead of $arg" >&2
            exit 2 ;;
    esac
done
# Memory: at most IMP_MEM_MB (default {mem_mb}: the two model files, the KV cache, {reserve} MB for compute
# buffers and the image being read) of data. A request that would need more, such as a small PNG that
# decodes to gigabytes, then fails with an error instead of getting the server killed. 0: no limit.
mem=${{IMP_MEM_MB:-{mem_mb}}}
case "$mem" in
    ''|*[!0-9]*) echo "$0: IMP_MEM_MB must be a number of MB, not '$mem'" >&2; exit 2 ;;
esac
if [ "$mem" -gt 0 ]; then
    ulimit -S -d $((mem * 1024)) 2>/dev/null || echo "$0: note: this shell cannot limit memory (ulimit -d)" >&2
fi
{enter}
# The key reaches llama-server through its own variable for --api-key, LLAMA_API_KEY, so that it is not
# on the command line for `ps` to show; without IMP_API_KEY no key is set (loopback only, as checked above).
if [ -n "${{IMP_API_KEY:-}}" ]; then
    LLAMA_API_KEY=$IMP_API_KEY
    export LLAMA_API_KEY
else
    unset LLAMA_API_KEY
fi
{ui_lines}# -np 1: one slot (others queue); --cache-ram 0: no second, host-memory prompt cache beside the slot's
# KV, so memory stays at the budget README.txt states.
exec ./bin/llama-server -m {model} --mmproj {mmproj} --jinja \\
    --host "$host" --port "$port" -t "$IMP_THREADS" -c "${{IMP_CTX:-{ctx}}}" -np 1 \\
    --cache-prompt --cache-ram 0 {flags}--temp 0 "$@"
"""

README = """\
Imp on llama.cpp {commit} ({target}), made by imp-gguf.

Android over adb:
  adb push {name} /data/local/tmp/
  adb push photo.jpg /data/local/tmp/
  adb shell "sh /data/local/tmp/{name}/run.sh /data/local/tmp/photo.jpg 'What is in the image?'"
Termux (copy {name}.tar.gz to the phone first; binaries cannot run from /sdcard):
  tar xzf {name}.tar.gz -C ~ && sh ~/{name}/run.sh ~/photo.jpg "What is in the image?"
Benchmark: ./bin/llama-bench -m models/{model} -p 512 -n 128 -t 4,5,6
{images}
"""
# This bundle's llama.cpp carries imp-gguf's patches: clip.cpp reads from the mmproj how Imp prepares images.
IMAGES_PATCHED = """\
Images: give photos as they are, any size or shape: these tools carry imp-gguf's patch {patches},
with which clip.cpp reads from the mmproj how Imp prepares an image ("{aspect}": {how} to
{image_size} x {image_size} px, bicubic as PIL). A stock llama.cpp (llama-server, ollama, LM Studio from
elsewhere) ignores those keys and letterboxes: resize on the client to exactly {image_size} x {image_size} px
that way first; an image already at that size is copied, not resampled."""
IMAGES_STOCK = """\
Images: prepare photos as Imp does, or clip.cpp letterboxes them with its own colour. This mmproj
wants {image_size} x {image_size} px, "{aspect}": {aspect_how}"""
ASPECT_WHAT = {"square": "stretched", "pad": "centred on a grey (127,127,127) square, then stretched"}
ASPECT_HOW = {
    "square": "squash-resize, e.g. `convert photo.jpg -resize '{size}x{size}!' photo.png`.",
    "pad": "centre on a grey (127,127,127) square, then resize, e.g. `convert photo.jpg -background "
           "'rgb(127,127,127)' -gravity center -extent WxW -resize '{size}x{size}!' photo.png` (W = the longer side).",
}


README_CHAT = """
Conversations (one photo, several questions; the image is encoded once):
  sh chat.sh ~/photo.jpg                 # type questions, one per line; /quit ends
  sh serve.sh                            # a local server for apps, on 127.0.0.1:{port}
Then, on the phone (adb forward tcp:{port} tcp:{port} reaches it from a PC):
  img=$(base64 < photo.jpg | tr -d '\\n')
  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{{
    "messages": [{{"role": "user", "content": [
      {{"type": "image_url", "image_url": {{"url": "data:image/jpeg;base64,'"$img"'"}}}},
      {{"type": "text", "text": "What is in the image?"}}]}}]}}'
  Send the next question with the earlier messages and the answer appended: the server reuses them.
  IMP_PORT picks another port. IMP_HOST=0.0.0.0 IMP_API_KEY=secret sh serve.sh listens on the network,
  and only with a key (clients send -H 'Authorization: Bearer secret').
  {webui}.
Memory the server needs: about {total_mb} MB = the two model files ({files_mb} MB, read into memory)
  + the KV cache of {n_ctx} tokens ({kv_mb} MB) + {compute_reserve_mb} MB for compute buffers and the
  photo being read. serve.sh holds it to that (IMP_MEM_MB): a photo that would need more is refused
  with an error. Requests beyond the one being answered wait in a queue.
"""
# The web UI: llama.cpp's own, built by imp-gguf from the pinned source's tools/ui (runtime/webui.py), in the
# bundle's ui/ folder; serve.sh hands it to llama-server with --path (its tools are built without one embedded).
UI_FOLDER = "ui"
UI_COMMENT = """\
# GET / is llama.cpp's web UI for this commit (tools/ui, built by imp-gguf with npm; the files are in ui/),
# for a browser on this device, or on a PC through `adb forward`. Not with IMP_API_KEY (see below)."""
UI_LINES = """\
# The web UI: llama-server serves ui/ at / (--path). Not with IMP_API_KEY: llama-server then wants the key
# for every file but / itself, and a browser sends none for the page's scripts, so it would stay blank.
if [ -n "${{IMP_API_KEY:-}}" ]; then
    echo "$0: note: no web UI with IMP_API_KEY (a browser cannot send the key for its files); the API is at /v1" >&2
elif [ -f {folder}/index.html ]; then
    set -- --path {folder} "$@"
else
    echo "$0: note: {folder}/ is missing: no web UI at /" >&2
fi
"""
NO_UI_COMMENT = """\
# No web UI in this bundle ({reason}): GET / answers 404; use the API or any OpenAI-compatible app."""
WEBUI_PRESENT = """\
Web UI: llama.cpp's own, at http://127.0.0.1:{port}/ while serve.sh runs (in the phone's browser; from a
  PC after adb forward tcp:{port} tcp:{port}). imp-gguf built it from this llama.cpp's tools/ui (the ui/
  folder). Not with IMP_API_KEY: llama-server would want the key for the page's own files, which a browser
  does not send, so serve.sh leaves the UI off then"""
WEBUI_ABSENT = """\
No web UI at / in this bundle ({reason}): use the API or any OpenAI-compatible app;
  `imp-gguf bundle` on a machine with Node.js and npm adds llama.cpp's"""
NO_UI_DEFAULT = "made without one"
DEFAULT_PORT = 8080
COMPUTE_RESERVE_MB = 768  # measured: the 3B Q4_K_M at 196 px served within files + KV + 512 MB on 2 cores; phones run more threads


@dataclass(frozen=True)
class BundleTuning:
    """Where run.sh's threads, CPU mask and flags come from: a `bench --sweep` profile, else the SoC table."""

    profile: str | None = None  # the profile's file name
    args: list[str] | None = None  # its flags

    def to_dict(self) -> dict[str, Any]:
        if self.args is not None:
            return {"profile": self.profile, "args": self.args}
        return {"soc_table": "imp_gguf/runtime/soc.py, chosen on the device by run.sh"}


@dataclass(frozen=True)
class BundledUI:
    """llama.cpp's web UI in the bundle's ui/ folder, or why there is none."""

    key: str | None = None  # webui.WebUI.key: which UI build
    commit: str | None = None  # the llama.cpp commit its source came from
    absent: str | None = None  # the reason, when there is no UI

    def to_dict(self) -> dict[str, Any]:
        if self.key is None:
            return {"folder": None, "absent": self.absent}
        return {"folder": UI_FOLDER, "key": self.key, "commit": self.commit,
                "source": "llama.cpp tools/ui, built by imp-gguf with npm"}


@dataclass(frozen=True)
class BundleManifest:
    """bundle.json: what the bundle holds and was made from (`bundle --json` prints it too)."""

    target: str
    llama_cpp_python: str
    commit: str
    patches: list[AppliedPatch]
    model: str  # paths inside the bundle
    mmproj: str
    tuning: BundleTuning
    server_memory_budget_mb: dict[str, int]  # memory_budget's
    web_ui: BundledUI
    created: str
    sha256: dict[str, str]  # path inside the bundle -> sha256

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "llama_cpp_python": self.llama_cpp_python, "commit": self.commit,
                "patches": [p.to_dict() for p in self.patches], "model": self.model, "mmproj": self.mmproj,
                "tuning": self.tuning.to_dict(), "server_memory_budget_mb": self.server_memory_budget_mb,
                "web_ui": self.web_ui.to_dict(), "created": self.created, "sha256": self.sha256}


@dataclass(frozen=True)
class BundleResult:
    folder: Path
    tarball: Path
    manifest: BundleManifest

    def to_dict(self) -> dict[str, Any]:
        """`bundle --json`: where it went, then the manifest."""
        return {"folder": str(self.folder), "tarball": str(self.tarball), **self.manifest.to_dict()}


def _enter(profile: dict | None) -> tuple[str, str]:
    """(the launchers' shared lines: enter the bundle, set IMP_THREADS and IMP_CPU_MASK; quoted extra
    flags): from a `bench --sweep` device profile, else from the SoC table at run time."""
    from imp_gguf.runtime.soc import shell_case

    if profile is None:
        return ENTER.format(tuning=SOC_TUNING.format(case=shell_case())), "-lm none "
    pairs = dict(zip(profile["args"][::2], profile["args"][1::2]))
    tuning = PROFILE_TUNING.format(name=shlex.quote(str(profile.get("_path", "profile"))).replace("\n", " "),
                                   device=str(profile.get("device") or "?").replace("\n", " "),
                                   decode=(profile.get("best") or {}).get("decode_tps"),
                                   threads=int(pairs.get("-t", 4)), mask=pairs.get("-C", ""))
    flags = [a for f, v in pairs.items() if f not in ("-t", "-C", "--cpu-strict") for a in (f, v)]
    return ENTER.format(tuning=tuning), "".join(shlex.quote(a) + " " for a in flags)


def run_script(model_name: str, mmproj_name: str, target: str = "linux-arm64", *, n_image: int = 729,
               profile: dict | None = None) -> str:
    """The POSIX sh launcher; model file names are quoted, whatever characters they hold. Threads and CPU
    mask come from `profile` (a `bench --sweep` device profile), else from the SoC table at run time."""
    enter, flags = _enter(profile)
    return RUN_SH.format(
        commit=LLAMA_CPP_COMMIT,
        target=target,
        model=shlex.quote(f"models/{model_name}"),
        mmproj=shlex.quote(f"models/{mmproj_name}"),
        enter=enter,
        n_image=n_image, text_budget=TEXT_BUDGET, gen_budget=GEN_BUDGET,
        ctx=job_context(n_image + TEXT_BUDGET, GEN_BUDGET),
        flags=flags,
    )


def chat_script(model_name: str, mmproj_name: str, target: str = "linux-arm64", *, n_image: int = 729,
                profile: dict | None = None) -> str:
    """chat.sh: llama-mtmd-cli's chat mode about one image, tuned as run.sh is."""
    enter, flags = _enter(profile)
    return CHAT_SH.format(commit=LLAMA_CPP_COMMIT, target=target, model=shlex.quote(f"models/{model_name}"),
                          mmproj=shlex.quote(f"models/{mmproj_name}"), enter=enter, flags=flags,
                          ctx=chat_context(n_image), turns=CHAT_TURNS, n_image=n_image, gen_budget=GEN_BUDGET)


def serve_script(model_name: str, mmproj_name: str, target: str = "linux-arm64", *, n_image: int = 729,
                 profile: dict | None = None, mem_mb: int = 0, ui: bool = False, no_ui_reason: str = NO_UI_DEFAULT) -> str:
    """serve.sh: the bundle's llama-server on loopback (elsewhere only with an API key), tuned as run.sh is,
    its data limited to mem_mb (memory_budget's total; 0: no limit); with `ui`, llama.cpp's web UI from ui/
    at /, else a comment saying there is none and why."""
    from imp_gguf.runtime.context import CHAT_TURNS, chat_context

    enter, flags = _enter(profile)
    if ui:
        ui_comment, ui_lines = UI_COMMENT, UI_LINES.format(folder=UI_FOLDER)
    else:
        ui_comment, ui_lines = NO_UI_COMMENT.format(reason=_one_line(no_ui_reason)), ""
    return SERVE_SH.format(commit=LLAMA_CPP_COMMIT, target=target, model=shlex.quote(f"models/{model_name}"),
                           mmproj=shlex.quote(f"models/{mmproj_name}"), enter=enter, flags=flags,
                           ctx=chat_context(n_image), turns=CHAT_TURNS, n_image=n_image, port=DEFAULT_PORT,
                           mem_mb=mem_mb, reserve=COMPUTE_RESERVE_MB, ui_comment=ui_comment, ui_lines=ui_lines)


def _one_line(text: str) -> str:
    """A reason fit for a shell comment and a README line: one line, printable, short."""
    line = " ".join(str(text).split())
    return "".join(c if c.isprintable() else "?" for c in line)[:200]


def memory_budget(model: Path, mmproj: Path, n_ctx: int) -> dict[str, int]:
    """What serve.sh may hold, in MB: both files (read, not mapped), the F16 KV cache of n_ctx cells, and
    COMPUTE_RESERVE_MB for llama.cpp's and clip.cpp's compute buffers and the server's own."""
    kv = kv_cell_bytes(read_gguf_meta(model)) * n_ctx
    files = model.stat().st_size + mmproj.stat().st_size
    mb = 1_000_000
    return {"files_mb": -(-files // mb), "kv_mb": -(-kv // mb), "compute_reserve_mb": COMPUTE_RESERVE_MB,
            "total_mb": -(-files // mb) + -(-kv // mb) + COMPUTE_RESERVE_MB, "n_ctx": n_ctx}


def build_patches(binaries: Mapping[str, Path]) -> list[AppliedPatch]:
    """The patches in the build these binaries come from (its stamp), [] for binaries from elsewhere."""
    stamp = Path(binaries["llama-mtmd-cli"]).parent.parent.parent / STAMP
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return []
    return [AppliedPatch.from_stamp(p) for p in data.get("patches") or []]


def tarball_path(out: Path) -> Path:
    return out.with_name(out.name + ".tar.gz")


def make_bundle(
    out: Path,
    *,
    model: Path,
    mmproj: Path,
    target: str = "linux-arm64",
    force: bool = False,
    binaries: Mapping[str, Path] | None = None,
    cache: Path | None = None,
    env: Mapping[str, str] | None = None,
    profile: dict | None = None,
    ui: WebUI | str | Callable[[], WebUI | str] = NO_UI_DEFAULT,
) -> BundleResult:
    """Write OUT/ and OUT.tar.gz. `binaries` defaults to the finished build for `target`; `profile` (from
    imp_gguf.speed.sweep.load_profile) sets run.sh's threads, CPU mask and flags.

    `ui`: llama.cpp's web UI (webui.build_ui) to ship in ui/ for serve.sh, or the reason there is none (README.txt
    and serve.sh say it), or a function giving either, called once the inputs are checked (so a refused bundle
    never waits for an npm build)."""
    out = Path(out)
    model, mmproj = Path(model), Path(mmproj)
    check_pair(model, mmproj)  # a swapped or mismatched pair would only fail on the phone
    if model.name == mmproj.name:
        raise BadInput(f"model and mmproj have the same file name {model.name}: rename one")
    tar_out = tarball_path(out)
    for path in (out, tar_out):
        if path.exists() and not force:
            raise OutputExists(f"{path} exists: pass --force to replace it")
    if binaries is None:
        binaries = where(target, env=env, cache=cache).binaries
    missing = [name for name, p in binaries.items() if not Path(p).is_file()]
    if "llama-mtmd-cli" not in binaries or missing:
        raise BadInput(f"the {target} build lacks {missing[0] if missing else 'llama-mtmd-cli'}: rebuild it")

    if callable(ui):
        ui = ui()
    web_ui = ui if isinstance(ui, WebUI) else None
    no_ui_reason = _one_line(ui) if isinstance(ui, str) else ""

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp_tar = tmp.with_name(tmp.name + ".tar.gz")
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final folder should not be
        (tmp / "bin").mkdir()
        (tmp / "models").mkdir()
        for name, src in sorted(binaries.items()):
            shutil.copyfile(src, tmp / "bin" / name)
            os.chmod(tmp / "bin" / name, 0o755)
        for src in (model, mmproj):
            shutil.copyfile(src, tmp / "models" / src.name)
        if web_ui is not None:
            shutil.copytree(web_ui.dist, tmp / UI_FOLDER)
        mm_meta = read_gguf_meta(mmproj)
        size, aspect = mmproj_image_spec(mm_meta, mmproj.name)
        n_image = image_tokens(mm_meta)
        budget = memory_budget(model, mmproj, chat_context(n_image))
        scripts = {"run.sh": run_script(model.name, mmproj.name, target, n_image=n_image, profile=profile),
                   "chat.sh": chat_script(model.name, mmproj.name, target, n_image=n_image, profile=profile),
                   "serve.sh": serve_script(model.name, mmproj.name, target, n_image=n_image, profile=profile,
                                            mem_mb=budget["total_mb"], ui=web_ui is not None,
                                            no_ui_reason=no_ui_reason)}
        for name, text in scripts.items():
            (tmp / name).write_text(text)
            os.chmod(tmp / name, 0o755)
        patches = build_patches(binaries)
        images = (IMAGES_PATCHED.format(patches=", ".join(p.name for p in patches), aspect=aspect,
                                        how=ASPECT_WHAT[aspect], image_size=size) if patches else
                  IMAGES_STOCK.format(image_size=size, aspect=aspect, aspect_how=ASPECT_HOW[aspect].format(size=size)))
        (tmp / "README.txt").write_text(
            README.format(commit=LLAMA_CPP_COMMIT, target=target, name=out.name, model=model.name, images=images)
            + README_CHAT.format(port=DEFAULT_PORT, **budget,
                                 webui=WEBUI_PRESENT.format(port=DEFAULT_PORT) if web_ui is not None else
                                 WEBUI_ABSENT.format(reason=no_ui_reason))
        )
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = BundleManifest(
            target=target, llama_cpp_python=LLAMA_CPP_PYTHON_VERSION, commit=LLAMA_CPP_COMMIT, patches=patches,
            model=f"models/{model.name}", mmproj=f"models/{mmproj.name}",
            tuning=BundleTuning(profile.get("_path"), profile["args"]) if profile else BundleTuning(),
            server_memory_budget_mb=budget,
            web_ui=(BundledUI(key=web_ui.key, commit=web_ui.stamp.get("commit")) if web_ui is not None else
                    BundledUI(absent=no_ui_reason)),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            sha256={str(p.relative_to(tmp)): file_sha256(p) for p in files})
        (tmp / "bundle.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        # GGUF weights barely compress: level 1 keeps a multi-GB bundle from taking minutes.
        with tarfile.open(tmp_tar, "w:gz", compresslevel=1) as tf:
            tf.add(tmp, arcname=out.name)
        _replace(tmp, out)
        _replace(tmp_tar, tar_out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp_tar.unlink(missing_ok=True)
    return BundleResult(folder=out, tarball=tar_out, manifest=manifest)


def _replace(new: Path, final: Path) -> None:
    """Rename `new` to `final`; an existing `final` (allowed by --force) is moved aside first, then removed."""
    if not final.exists():
        os.replace(new, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(new, final)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
