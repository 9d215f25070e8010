"""`imp-gguf run` holds a conversation about one image: several -p are turns of one chat, the image is
encoded and prefilled once, and a follow-up evaluates only its own text on top of the KV cache.

The bundled tiny Imp was trained on single questions (`USER: <image>\\n{q} ASSISTANT:`), never on
conversations: some kinds of follow-up confuse it whether answered from the cache or computed fresh.
The question pair used here (shape, then colour) is one it answers in conversation; that the cache
changes nothing is shown by comparing logits with a fresh computation, not by the words.
"""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys

import numpy as np
import pytest

from imp_gguf.tiny_imp import data as D

Q_SHAPE, Q_COLOUR = "What shape is it?", "What colour is the shape?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundled tiny Imp converted to F32 (parity) and F16 (the CLI), and a held-out one-shape scene."""
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    root = tmp_path_factory.mktemp("tiny-chat")
    scene = D.random_scene(random.Random("conversation-test"), 1)
    image = root / "scene.png"
    D.render(scene).save(image)
    golden = {k: D.ask(scene, random.Random(0), k) for k in ("shape", "colour")}
    assert golden["shape"][0] == Q_SHAPE and golden["colour"][0] == Q_COLOUR
    return {"f32": convert(default_checkpoint(), root / "f32", outtype="f32").to_dict(),
            "f16": convert(default_checkpoint(), root / "f16", outtype="f16").to_dict(),
            "image": image, "shape": golden["shape"][1], "colour": golden["colour"][1]}


def _cli(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The command as a user types it: a new process, real standard input."""
    return subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)


def _base(tiny: dict) -> list[str]:
    g = tiny["f16"]
    return ["run", "-m", str(g["model"]), "--mmproj", str(g["mmproj"]), "--image", str(tiny["image"]), "-t", "2"]


def test_two_questions_one_conversation(tiny: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from imp_gguf.cli.main import main
    from imp_gguf.runtime.bindings import Session
    from imp_gguf.tiny_imp.evaluate import is_correct

    rc = main([*_base(tiny), "-p", Q_SHAPE, "-p", Q_COLOUR, "-n", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    t1, t2 = out["turns"]
    assert [t1["question"], t2["question"]] == [Q_SHAPE, Q_COLOUR]
    assert is_correct(t1["answer"], tiny["shape"]), t1["answer"]
    assert is_correct(t2["answer"], tiny["colour"]), t2["answer"]
    assert out["answer"] == t2["answer"] and out["timings"] == t2["timings"] and out["backend"] == "python"
    # Turn 1: the image (16 tokens for the tiny Imp) and the template; turn 2: only the text the template
    # adds after the first answer, with everything before it reused.
    with Session(tiny["f16"]["model"]) as s:
        new_text = s.tokenize(f"</s>USER: {Q_COLOUR} ASSISTANT:")
    assert t1["timings"]["prompt_tokens"] > 16 and t1["timings"]["encode_ms"] > 0
    assert t2["timings"]["prompt_tokens"] == len(new_text)
    assert t2["timings"]["encode_ms"] == 0
    assert t2["timings"]["cached_tokens"] == t1["timings"]["prompt_tokens"] + t1["timings"]["decode_tokens"]


def test_cached_turn_computes_what_a_fresh_prompt_computes(tiny: dict) -> None:
    """The follow-up's first-token logits from the cache equal those of the whole conversation evaluated
    from an empty context (same tokens, F32 KV), within the parity tolerance of the other logit tests."""
    from imp_gguf.runtime.bindings import Conversation, Session

    g = tiny["f32"]
    with Session(g["model"], g["mmproj"], f32_kv=True, n_threads=2) as s:
        chat = Conversation(s, tiny["image"])
        chat.ask(Q_SHAPE, max_tokens=16)
        cached = chat.feed(Q_COLOUR)
        assert s.last_timings["prompt_tokens"] < 16  # the image was not evaluated again
        cached_ids = list(s.llm.input_ids[: s.llm.n_tokens])
        transcript = chat.text
    with Session(g["model"], g["mmproj"], f32_kv=True, n_threads=2) as s:
        fresh = s.eval_prompt(transcript, [tiny["image"]])
        assert list(s.llm.input_ids[: s.llm.n_tokens]) == cached_ids  # the same tokens at the same positions
    assert fresh.std() > 0.5
    err = np.abs(cached - fresh).max()
    assert err <= 0.01 * fresh.std(), f"max |diff| {err:.4g} > 1% of std {fresh.std():.4g}"
    top = np.argsort(-fresh)[:5]
    assert (np.argsort(-cached)[:5] == top).all()


def test_single_question_json_keeps_its_keys(tiny: dict) -> None:
    proc = _cli(*_base(tiny), "-p", Q_SHAPE, "-n", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"answer", "backend", "timings", "turns"} and len(out["turns"]) == 1
    assert out["answer"] == out["turns"][0]["answer"] and out["timings"]["prompt_tokens"] > 16


def test_bad_questions_are_refused_as_typed(tiny: dict) -> None:
    """-p "" and -n 0 are bad input (exit 2, one line); -p - reads the question from standard input."""
    for extra, needle in ((["-p", ""], "empty"), (["-p", "  "], "empty"), (["-p", Q_SHAPE, "-n", "0"], "--max-tokens"),
                          (["-p", Q_SHAPE, "-n", "-3"], "--max-tokens"), (["-p", "-", "-p", "-"], "once")):
        proc = _cli(*_base(tiny), *extra, stdin="")
        assert proc.returncode == 2, (extra, proc.stderr)
        assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert proc.stdout == ""
    empty = _cli(*_base(tiny), "-p", "-", stdin="\n \n")
    assert empty.returncode == 2 and "standard input" in empty.stderr and empty.stderr.count("\n") == 1
    none = _cli(*_base(tiny), stdin="")  # no -p and no terminal: nothing to ask
    assert none.returncode == 2 and "-p" in none.stderr and none.stderr.count("\n") == 1
    piped = _cli(*_base(tiny), "-p", "-", "-n", "16", stdin=Q_SHAPE + "\n")
    assert piped.returncode == 0, piped.stderr
    from imp_gguf.tiny_imp.evaluate import is_correct

    assert is_correct(piped.stdout, tiny["shape"]), piped.stdout


def test_typed_conversation_on_a_terminal(tiny: dict) -> None:
    """Without -p on a terminal, `run` asks for questions one by one and keeps the conversation."""
    from imp_gguf.tiny_imp.evaluate import is_correct

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imp_gguf.cli.main", *_base(tiny), "-n", "16"],
                            stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    try:
        os.write(leader, f"{Q_SHAPE}\n\n{Q_COLOUR}\n/quit\n".encode())
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert proc.returncode == 0, err
    answers = out.strip().splitlines()
    assert len(answers) == 2, out
    assert is_correct(answers[0], tiny["shape"]) and is_correct(answers[1], tiny["colour"]), answers
    assert "reused from the conversation" in err  # the second turn's timings
