"""`imp-gguf run`: answer a question about an image with a converted model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from imp_gguf.cli._common import err_console, print_json


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def run_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Language-model GGUF."),
    mmproj: Path = typer.Option(..., "--mmproj", help="mmproj GGUF."),
    image: Path = typer.Option(..., "--image", help="PNG/JPEG/WebP... of any size or mode."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The question."),
    backend: str = typer.Option("python", "--backend", help="python (llama-cpp-python) or cli (built llama-mtmd-cli)."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t"),
    json_out: bool = typer.Option(False, "--json", help="Print {answer, timings} as JSON instead of streaming."),
) -> None:
    """Stream the greedy answer to PROMPT about IMAGE. The image is squash-resized to the encoder's size
    (as Imp was trained), and Imp's chat template from the GGUF wraps the question."""
    import os

    n_threads = threads or max(1, os.cpu_count() or 1)
    stream = None if json_out else _write
    if backend == "python":
        from imp_gguf.runtime.bindings import Session

        with Session(model, mmproj, n_threads=n_threads) as s:
            answer = s.generate(s.chat_prompt(prompt), [image], max_tokens=max_tokens, on_text=stream)
            timings = dict(s.last_timings)
    elif backend == "cli":
        from imp_gguf.runtime.build import where
        from imp_gguf.runtime.cli_backend import run_mtmd_cli

        binary = where("host").binaries["llama-mtmd-cli"]
        answer = run_mtmd_cli(binary, model, mmproj, image, prompt, max_tokens=max_tokens, threads=n_threads,
                              on_text=stream)
        timings = {}
    else:
        from imp_gguf.errors import BadInput

        raise BadInput(f"--backend must be python or cli, not {backend!r}")
    if json_out:
        print_json({"answer": answer.strip(), "backend": backend, "timings": timings})
    else:
        _write("\n")
        if timings:
            err_console.print(f"[dim]image encode {timings.get('encode_ms', 0):.0f} ms, "
                              f"{timings.get('decode_tokens', 0)} tokens in {timings.get('decode_ms', 0):.0f} ms[/]")


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
