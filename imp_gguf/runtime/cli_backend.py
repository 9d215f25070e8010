"""The `cli` backend: the built llama-mtmd-cli as a subprocess, fed an image already prepared as Imp expects."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from imp_gguf.errors import InternalError
from imp_gguf.gguf_info import read_gguf_meta
from imp_gguf.images import load_image, mmproj_image_spec
from imp_gguf.runtime.context import run_context
from imp_gguf.runtime.runner import LocalRunner, Runner
from imp_gguf.runtime.timings import Timings, Turn, from_mtmd_log


def prepare_image(image: str | Path, mmproj: str | Path, dest_dir: Path) -> Path:
    """Pad (if the mmproj says so) and squash-resize to its image size, saved as PNG, so clip.cpp copies
    it unchanged."""
    size, aspect = mmproj_image_spec(read_gguf_meta(mmproj), Path(mmproj).name)
    out = dest_dir / "image.png"
    load_image(image, size, aspect).save(out)
    return out


def mtmd_cli_argv(binary: Path, model: Path, mmproj: Path, image: Path, prompt: str, *, max_tokens: int,
                  threads: int, ctx: int = 4096) -> list[str]:
    return [str(binary), "-m", str(model), "--mmproj", str(mmproj), "--image", str(image), "-p", prompt,
            "--temp", "0", "-n", str(max_tokens), "-t", str(threads), "-c", str(ctx), "--no-warmup",
            # read, not map, the weights: those llama.cpp repacks at load are then resident once, not twice
            "-lm", "none",
            # mtmd-cli defaults to the legacy (non-Jinja) templates, which would pick "vicuna" for Imp's format.
            "--jinja"]


def run_mtmd_cli(binary: Path, model: Path, mmproj: Path, image: Path, prompt: str, *, max_tokens: int = 64,
                 threads: int = 2, runner: Runner | None = None, on_text: Callable[[str], None] | None = None) -> str:
    """Greedy answer from llama-mtmd-cli (its chat template wraps the prompt, as for the Python backend)."""
    return _mtmd_cli(binary, model, mmproj, image, prompt, max_tokens=max_tokens, threads=threads, runner=runner,
                     on_text=on_text, timed=False)[0]


def ask_mtmd_cli(binary: Path, model: Path, mmproj: Path, image: Path, question: str, *, max_tokens: int = 64,
                 threads: int = 2, runner: Runner | None = None,
                 on_text: Callable[[str], None] | None = None) -> Turn:
    """`run --backend cli`'s one turn: the answer and the tool's own figures (runtime.timings)."""
    answer, timings = _mtmd_cli(binary, model, mmproj, image, question, max_tokens=max_tokens, threads=threads,
                                runner=runner, on_text=on_text, timed=True)
    return Turn(question=question, answer=answer.strip(), timings=timings)


def _mtmd_cli(binary: Path, model: Path, mmproj: Path, image: Path, prompt: str, *, max_tokens: int, threads: int,
              runner: Runner | None, on_text: Callable[[str], None] | None, timed: bool) -> tuple[str, Timings]:
    """(the answer, its timings: empty unless `timed`)."""
    runner = runner or LocalRunner()
    with tempfile.TemporaryDirectory() as td:
        img = prepare_image(image, mmproj, Path(td))
        argv = mtmd_cli_argv(binary, model, mmproj, img, prompt, max_tokens=max_tokens, threads=threads,
                             ctx=run_context(mmproj, prompt, max_tokens))
        if timed:
            argv += ["-lv", "4"]  # its timing lines (stderr) are printed from this log level on
        # llama-mtmd-cli prints through llama.cpp's asynchronous logger, a singleton it never flushes at
        # exit (upstream issue 22142): on a busy machine the answer's tail can be lost. Its output ends
        # with newlines when it all came out; otherwise ask again (greedy, so the same answer), twice at most.
        for _ in range(3):
            proc = runner.run(argv, timeout=1800)
            if proc.returncode != 0 or (proc.stdout or "").endswith("\n"):
                break
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise InternalError(f"llama-mtmd-cli exited {proc.returncode}: {tail[0]}")
    text = proc.stdout.strip()
    timings = from_mtmd_log(proc.stdout, proc.stderr or "") if timed else Timings()
    if on_text:
        on_text(text)
    return text, timings
