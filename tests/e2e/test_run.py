"""`imp-gguf run`: the built llama-mtmd-cli (host, and linux-arm64 under qemu) answers an image question
with a converted fixture, greedily, exactly as the Python backend does."""

from __future__ import annotations

import json

import pytest

VARIANT = "Imp-v1.5-3B-196"
QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def python_answer(converted, test_image):
    from imp_gguf.runtime.bindings import Session

    r = converted(VARIANT, "f16")
    with Session(r["model"], r["mmproj"], n_threads=2) as s:
        return s.generate(s.chat_prompt(QUESTION), [test_image], max_tokens=12)


@pytest.mark.slow
def test_host_mtmd_cli_matches_python_backend(host_tools, converted, test_image, python_answer):
    from imp_gguf.runtime.cli_backend import run_mtmd_cli

    r = converted(VARIANT, "f16")
    answer = run_mtmd_cli(host_tools["llama-mtmd-cli"], r["model"], r["mmproj"], test_image, QUESTION,
                          max_tokens=12, threads=2)
    assert answer.strip() and answer.strip() == python_answer.strip()


@pytest.mark.slow
@pytest.mark.cross
def test_arm64_mtmd_cli_under_qemu_answers(arm64_tools, converted, test_image, python_answer):
    from imp_gguf.runtime.cli_backend import run_mtmd_cli
    from imp_gguf.runtime.runner import QemuRunner

    r = converted(VARIANT, "f16")
    answer = run_mtmd_cli(arm64_tools["llama-mtmd-cli"], r["model"], r["mmproj"], test_image, QUESTION,
                          max_tokens=12, threads=2, runner=QemuRunner())
    # Different SIMD kernels (NEON/i8mm vs AVX) may round differently; the greedy answer of a random
    # tiny model can then diverge late, so compare the first tokens' worth of text.
    assert answer.strip()[:8] == python_answer.strip()[:8]


def test_run_command_python_backend(converted, test_image, python_answer, capsys):
    from imp_gguf.cli.main import main

    r = converted(VARIANT, "f16")
    rc = main(["run", "-m", str(r["model"]), "--mmproj", str(r["mmproj"]), "--image", str(test_image),
               "-p", QUESTION, "-n", "12", "-t", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == python_answer.strip()
    assert out["timings"]["prompt_tokens"] > 16
