"""The bundle's serve.sh and chat.sh, run as a user runs them: the static aarch64 llama-server and
llama-mtmd-cli under qemu-user (each bin/ tool execs qemu on the real binary, as binfmt_misc would), the
tiny Imp answering questions about a held-out scene, real HTTP on loopback.

The question pair (shape, then colour) is one the tiny Imp, trained on single questions, answers in a
conversation (see test_conversation.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from imp_gguf.runtime import build as rt
from tests.plugins.serving import (Q_COLOUR, Q_SHAPE, answer, fake_tools, image_message, listening_addresses,
                                   non_loopback_address, qemu_shim, scene, serve)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path_factory.mktemp("tiny-serve"), outtype="f16").to_dict()
    return Path(r["model"]), Path(r["mmproj"])


@pytest.fixture(scope="module")
def arm_bundle(tiny_pair: tuple[Path, Path], arm64_tools: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imp_gguf.runtime.bundle import make_bundle

    model, mmproj = tiny_pair
    res = make_bundle(tmp_path_factory.mktemp("arm") / "imp-phone", model=model, mmproj=mmproj)
    for name in ("serve.sh", "chat.sh"):
        assert (res.folder / name).stat().st_mode & 0o111
    info = rt.read_elf(res.folder / "bin" / "llama-server")
    assert info.machine == rt.EM_AARCH64 and info.is_static
    qemu_shim(res.folder)
    return res.folder


def test_bundle_has_chat_and_server_beside_its_llama_server(tmp_path: Path, tiny_pair: tuple[Path, Path]) -> None:
    """Whatever the target, the bundle ships llama-server with serve.sh and chat.sh, and its README shows
    both, with a curl request that sends an image, and the server's memory budget."""
    from imp_gguf.runtime.bundle import make_bundle

    res = make_bundle(tmp_path / "b", model=tiny_pair[0], mmproj=tiny_pair[1], binaries=fake_tools(tmp_path, ""))
    for name in ("serve.sh", "chat.sh", "bin/llama-server", "bin/llama-mtmd-cli"):
        assert os.access(res.folder / name, os.X_OK), name
        assert subprocess.run(["sh", "-n", str(res.folder / name)]).returncode == 0
    readme = (res.folder / "README.txt").read_text()
    assert "sh chat.sh" in readme and "sh serve.sh" in readme and "image_url" in readme and "curl" in readme
    budget = res.manifest.server_memory_budget_mb
    assert f"about {budget['total_mb']} MB" in readme and budget["n_ctx"] >= 16 + 4 * 64
    assert set(res.manifest.sha256) >= {"serve.sh", "chat.sh", "bin/llama-server"}


def test_serve_sh_refuses_the_network_without_a_key(tmp_path: Path, tiny_pair: tuple[Path, Path]) -> None:
    """IMP_HOST without IMP_API_KEY, a host name, or --host passed around the variables: refused, exit 2,
    before anything starts (the fake llama-server would print its arguments)."""
    from imp_gguf.runtime.bundle import make_bundle

    res = make_bundle(tmp_path / "b", model=tiny_pair[0], mmproj=tiny_pair[1],
                      binaries=fake_tools(tmp_path, 'echo "started $*"'))
    env = {k: v for k, v in os.environ.items() if k not in ("IMP_API_KEY", "IMP_HOST")}
    cases = [({"IMP_HOST": "0.0.0.0"}, [], "IMP_API_KEY"),
             ({"IMP_HOST": "127.0.0.1"}, [], "IMP_API_KEY"),
             ({"IMP_HOST": "phone.local", "IMP_API_KEY": "k"}, [], "numeric"),
             ({}, ["--host", "0.0.0.0"], "IMP_HOST"),
             ({}, ["--api-key", ""], "IMP_API_KEY"),
             ({"IMP_PORT": "80; reboot"}, [], "IMP_PORT"),
             ({"IMP_MEM_MB": "lots"}, [], "IMP_MEM_MB")]
    for extra_env, args, needle in cases:
        proc = subprocess.run(["sh", str(res.folder / "serve.sh"), *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and needle in proc.stderr and "started" not in proc.stdout, (extra_env, args, proc)
    ok = subprocess.run(["sh", str(res.folder / "serve.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--host 127.0.0.1 --port 8080" in ok.stdout


@pytest.mark.cross
@pytest.mark.slow
def test_serve_sh_answers_and_continues_the_conversation_under_qemu(arm_bundle: Path, tmp_path: Path) -> None:
    from imp_gguf.tiny_imp.evaluate import is_correct

    sc = scene()
    with serve(arm_bundle, tmp_path) as srv:
        # Loopback only: the listening socket is bound to 127.0.0.1, and another address of this machine
        # is refused.
        assert listening_addresses(srv.port) == ["127.0.0.1"]
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, srv.port), timeout=5):
                pass
        first = [image_message(sc["uri"], Q_SHAPE)]
        status, r1 = srv.chat(first, timeout=300)
        assert status == 200, r1
        assert is_correct(answer(r1), sc["shape"]), answer(r1)
        second = [*first, {"role": "assistant", "content": answer(r1)}, {"role": "user", "content": Q_COLOUR}]
        status, r2 = srv.chat(second, timeout=300)
        assert status == 200, r2
        assert is_correct(answer(r2), sc["colour"]), answer(r2)
        # The follow-up reused the first request's prompt, image included (the tiny Imp's is 16 tokens):
        # it evaluated only the answer as the client sent it back and the new question.
        n1, n2 = r1["timings"]["prompt_n"], r2["timings"]["prompt_n"]
        assert n2 < n1 - 16, (n1, n2)
        assert r2["timings"]["cache_n"] >= n1, r2["timings"]


@pytest.mark.cross
@pytest.mark.slow
def test_serve_sh_with_a_key_under_qemu(arm_bundle: Path, tmp_path: Path) -> None:
    """IMP_HOST and IMP_API_KEY: it listens there and wants the key (127.0.0.2 is still this machine)."""
    with serve(arm_bundle, tmp_path, env={"IMP_HOST": "127.0.0.2", "IMP_API_KEY": "s3cret"}) as srv:
        assert listening_addresses(srv.port) == ["127.0.0.2"]
        hi = [{"role": "user", "content": "hi"}]
        assert srv.chat(hi, max_tokens=2, timeout=60)[0] == 401
        assert srv.chat(hi, max_tokens=2, timeout=60, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.chat(hi, max_tokens=2, timeout=300, headers={"Authorization": "Bearer s3cret"})[0] == 200
        # given through llama-server's own variable, not its command line (which `ps` shows)
        assert b"s3cret" not in Path(f"/proc/{srv.pid()}/cmdline").read_bytes()


@pytest.mark.cross
@pytest.mark.slow
def test_chat_sh_answers_two_questions_from_stdin_under_qemu(arm_bundle: Path, tmp_path: Path) -> None:
    sc = scene()
    image = tmp_path / "my scene.png"
    image.write_bytes(sc["png"])
    proc = subprocess.run(["sh", str(arm_bundle / "chat.sh"), str(image), "-n", "16"],
                          input=f"{Q_SHAPE}\n{Q_COLOUR}\n", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "IMP_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-1500:]
    # stdout: the tool's prompts ("> "), its echo of each line read, and the answers, in that order. On a busy
    # machine its async logger interleaves them mid-line ("What sha" / "> pe is it?", "It is a circle.W" /
    # "hat colour..."), so compare letters and digits only: each answer is what lies between the echoes.
    def squash(s: str) -> str:
        return re.sub(r"[\W_]", "", s.lower())

    text = squash(proc.stdout.split("image loaded", 1)[1])
    q1, q2 = squash(Q_SHAPE), squash(Q_COLOUR)
    i = text.find(q1)
    j = text.find(q2, i + len(q1))
    assert 0 <= i < j, proc.stdout
    assert text[i + len(q1):j] == squash(sc["shape"]), proc.stdout
    assert text[j + len(q2):] == squash(sc["colour"]), proc.stdout


@pytest.mark.slow
def test_chat_sh_on_a_terminal(tiny_pair: tuple[Path, Path], host_tools: dict[str, Path], tmp_path: Path) -> None:
    """Typed on a terminal (host build, same script): each line shows once, both answers come, Ctrl-D ends
    the chat and the terminal's settings are as they were."""
    import pty
    import select
    import termios
    import time

    from imp_gguf.runtime.bundle import make_bundle

    res = make_bundle(tmp_path / "host", model=tiny_pair[0], mmproj=tiny_pair[1], target="host", binaries=host_tools)
    sc = scene()
    image = tmp_path / "scene.png"
    image.write_bytes(sc["png"])
    leader, follower = pty.openpty()
    before = termios.tcgetattr(follower)
    proc = subprocess.Popen(["sh", str(res.folder / "chat.sh"), str(image), "-n", "16"], stdin=follower,
                            stdout=follower, stderr=subprocess.DEVNULL, env={**os.environ, "IMP_THREADS": "2"},
                            start_new_session=True)
    out = b""

    def read_until(needle: bytes, seconds: float) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while needle not in out and time.monotonic() < end:
            if select.select([leader], [], [], 0.2)[0]:
                out += os.read(leader, 4096)

    try:
        read_until(b"image loaded", 120)
        for q, want in ((Q_SHAPE, sc["shape"]), (Q_COLOUR, sc["colour"])):
            mark = len(out)
            for ch in q + "\n":  # as typed: one key at a time
                os.write(leader, ch.encode())
            read_until(want.encode(), 120)
            assert want.encode() in out[mark:], out[mark:]
            assert out[mark:].count(q.encode()) == 1  # echoed once, by llama-mtmd-cli's line editor
        os.write(leader, b"\x04")
        read_until(b"\n\n", 10)
        os.write(leader, b"\n")  # the key that lets `cat` see its reader has gone
        proc.wait(timeout=60)
        assert proc.returncode == 0
        assert termios.tcgetattr(follower) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
        os.close(follower)
