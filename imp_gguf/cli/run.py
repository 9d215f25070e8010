"""`imp-gguf run`: answer questions about an image with a converted model, as one conversation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from imp_gguf.cli._common import info, print_json
from imp_gguf.errors import BadInput
from imp_gguf.spelling import unknown
from imp_gguf.pair import check_pair
from imp_gguf.runtime.build import where
from imp_gguf.runtime.context import run_context

QUIT = ("/quit", "/exit")


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _questions(prompts: list[str]) -> list[str] | None:
    """The questions of -p/--prompt in order ("-" reads one from standard input); None: none given, to be
    typed one by one on a terminal."""
    if not prompts:
        if not sys.stdin.isatty():
            raise BadInput("give the question with -p/--prompt (repeat it for follow-up questions), "
                           "or -p - to read it from standard input")
        return None
    if prompts.count("-") > 1:
        raise BadInput("-p - reads standard input once: give it for one question only")
    out = [sys.stdin.read().strip() if p == "-" else p for p in prompts]
    for i, q in enumerate(out):
        if not q.strip():
            what = "standard input (-p -) holds no question" if prompts[i] == "-" else "-p/--prompt is empty"
            raise BadInput(f"{what}: ask a question")
    return out


def _typed() -> Iterator[str]:
    """Questions typed on the terminal, one per line, until /quit, /exit or end of input (Ctrl-D)."""
    info("Ask about the image; one question per line, /quit or Ctrl-D to end.")
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() in QUIT:
            return
        if line.strip():
            yield line.strip()


def run_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Language-model GGUF."),
    mmproj: Path = typer.Option(..., "--mmproj", help="mmproj GGUF."),
    image: Path = typer.Option(..., "--image", help="PNG/JPEG/WebP... of any size or mode."),
    prompt: Optional[list[str]] = typer.Option(
        None, "--prompt", "-p",
        help="A question; repeat for follow-up questions about the same image, asked in order as one "
             "conversation. '-' reads it from standard input. Without -p on a terminal: type them one by one."),
    backend: str = typer.Option("python", "--backend",
                                help="python (llama-cpp-python) or cli (built llama-mtmd-cli; one question)."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="Most tokens to generate per answer."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
    json_out: bool = typer.Option(False, "--json",
                                  help="Print one JSON object instead of streaming: `turns` (question, answer, "
                                       "timings of each), and the last turn's `answer` and `timings`."),
) -> None:
    """Stream the greedy answer to each question about IMAGE on stdout; timings go to stderr (with --json,
    both in the JSON, the same numbers).

    Several questions are one conversation: the image is encoded and prefilled once, and each follow-up
    evaluates only its own text on top of the earlier turns (its timings show the tokens reused). The image
    is squash-resized to the encoder's size (as Imp was trained), and Imp's chat template from the GGUF
    wraps the questions. MODEL and MMPROJ are checked first: a language model and its own mmproj.
    """
    import os

    from imp_gguf.runtime.timings import RunResult, Turn

    if backend not in ("python", "cli"):
        raise unknown("--backend", backend, ("python", "cli"))
    if max_tokens < 1:
        raise BadInput(f"--max-tokens must be at least 1, not {max_tokens}")
    questions = _questions(prompt or [])
    if backend == "cli" and (questions is None or len(questions) > 1):
        raise BadInput("--backend cli answers one question per run: use --backend python for a conversation")
    if questions is None and json_out:
        raise BadInput("--json needs the questions up front: give them with -p/--prompt")
    check_pair(model, mmproj)
    n_threads = threads or max(1, os.cpu_count() or 1)
    stream = None if json_out else _write
    several = questions is None or len(questions) > 1
    turns: list[Turn] = []

    def done(turn: Turn) -> None:
        turns.append(turn)
        if not json_out:
            _write("\n")
            info(turn.timings.text())

    if backend == "python":
        from imp_gguf.runtime.bindings import Conversation, Session

        with Session(model, mmproj, n_threads=n_threads, n_ctx=run_context(mmproj, questions, max_tokens)) as s:
            chat = Conversation(s, image)
            for q in (questions if questions is not None else _typed()):
                if several and questions is not None and not json_out:
                    info(f"> {q}")
                done(chat.turn(q, max_tokens=max_tokens, on_text=stream))
    else:
        from imp_gguf.runtime.cli_backend import ask_mtmd_cli

        assert questions is not None  # checked above: the cli backend takes one -p
        binary = where("host").binaries["llama-mtmd-cli"]
        done(ask_mtmd_cli(binary, model, mmproj, image, questions[0], max_tokens=max_tokens, threads=n_threads,
                          on_text=stream))
    if json_out:
        print_json(RunResult(backend=backend, turns=turns).to_dict())


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
