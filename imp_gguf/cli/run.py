"""`imp-gguf run`: answer a question about an image with a converted model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from imp_gguf.cli._common import info, print_json
from imp_gguf.names import unknown


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def run_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Language-model GGUF."),
    mmproj: Path = typer.Option(..., "--mmproj", help="mmproj GGUF."),
    image: Path = typer.Option(..., "--image", help="PNG/JPEG/WebP... of any size or mode."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The question."),
    backend: str = typer.Option("python", "--backend", help="python (llama-cpp-python) or cli (built llama-mtmd-cli)."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="Most tokens to generate."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
    json_out: bool = typer.Option(False, "--json", help="Print {answer, timings} as JSON instead of streaming."),
) -> None:
    """Stream the greedy answer to PROMPT about IMAGE on stdout; timings go to stderr (with --json, both in
    the JSON, the same numbers).

    The image is squash-resized to the encoder's size (as Imp was trained), and Imp's chat template from the
    GGUF wraps the question. MODEL and MMPROJ are checked first: a language model and its own mmproj.
    """
    import os

    from imp_gguf.pair import check_pair
    from imp_gguf.runtime.timings import normalize, text as timings_text

    if backend not in ("python", "cli"):
        raise unknown("--backend", backend, ("python", "cli"))
    check_pair(model, mmproj)
    n_threads = threads or max(1, os.cpu_count() or 1)
    stream = None if json_out else _write
    if backend == "python":
        from imp_gguf.runtime.bindings import Session
        from imp_gguf.runtime.context import run_context

        with Session(model, mmproj, n_threads=n_threads, n_ctx=run_context(mmproj, prompt, max_tokens)) as s:
            answer = s.generate(s.chat_prompt(prompt), [image], max_tokens=max_tokens, on_text=stream)
            timings = normalize(s.last_timings)
    else:
        from imp_gguf.runtime.build import where
        from imp_gguf.runtime.cli_backend import run_mtmd_cli

        binary = where("host").binaries["llama-mtmd-cli"]
        timings = {}
        answer = run_mtmd_cli(binary, model, mmproj, image, prompt, max_tokens=max_tokens, threads=n_threads,
                              on_text=stream, timings=timings)
    if json_out:
        print_json({"answer": answer.strip(), "backend": backend, "timings": timings})
    else:
        _write("\n")
        info(timings_text(timings))


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
