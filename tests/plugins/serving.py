"""Helpers for the tests of the bundle's serve.sh and chat.sh: a tiny-Imp bundle, the server started by
serve.sh on a free loopback port (and always stopped), bounded HTTP requests, the server's memory."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imp_gguf.tiny_imp import data as D

Q_SHAPE, Q_COLOUR = "What shape is it?", "What colour is the shape?"


def scene() -> dict:
    """A held-out one-shape scene at the tiny Imp's 56 px (prepared as Imp prepares photos), its questions'
    golden answers and its PNG as a data URI."""
    sc = D.random_scene(random.Random("serve-test"), 1)
    img = D.to_model_size(D.render(sc))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rng = random.Random(0)
    return {"png": buf.getvalue(), "uri": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
            "shape": D.ask(sc, rng, "shape")[1], "colour": D.ask(sc, rng, "colour")[1]}


def qemu_shim(folder: Path, qemu: str = "qemu-aarch64") -> None:
    """Run a bundle's aarch64 tools through qemu-user, as binfmt_misc would on a machine set up for it:
    each bin/NAME becomes a script that execs qemu on the real binary (bin/.NAME.aarch64). The bundle's
    scripts run unchanged; serve.sh's data limit is lifted for qemu, whose own code cache counts against
    it (the limit is tested with the host build, tests/hostile/test_hostile_server.py)."""
    for tool in (folder / "bin").iterdir():
        if tool.name.startswith("."):
            continue
        real = tool.with_name(f".{tool.name}.aarch64")
        tool.rename(real)
        tool.write_text(f'#!/bin/sh\nulimit -S -d unlimited\nexec {qemu} "$(dirname "$0")/{real.name}" "$@"\n')
        tool.chmod(0o755)


def fake_tools(tmp: Path, body: str) -> dict[str, Path]:
    """Stand-ins for every built tool (a sh script running `body`), for bundles whose scripts are tested
    without llama.cpp."""
    from imp_gguf.runtime.build import TOOLS

    (tmp / "fake-tools").mkdir()
    tools = {}
    for name in TOOLS:
        tools[name] = tmp / "fake-tools" / name
        tools[name].write_text(f"#!/bin/sh\n{body}\n")
        tools[name].chmod(0o755)
    return tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a socket listening on `port` (/proc/net/tcp: little-endian hex, state 0A)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, p = local.partition(":")
        if state == "0A" and int(p, 16) == port:
            out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, host: str = "127.0.0.1") -> None:
        self.proc, self.port, self.log, self.host = proc, port, log, host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid(self) -> int:
        """The llama-server process (serve.sh and the qemu shim exec it: same pid)."""
        return self.proc.pid

    def peak_rss_mb(self) -> float:
        """VmHWM of the server: its peak resident memory so far."""
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, path: str, body: dict | bytes | None = None, *, timeout: float = 120,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        """(HTTP status, JSON body or {}) of one bounded request."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"raw": raw[:200].decode(errors="replace")}

    def get(self, path: str, *, timeout: float = 60,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(HTTP status, headers, body) of one bounded GET, whatever the body is."""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def chat(self, messages: list[dict], *, max_tokens: int = 16, timeout: float = 120,
             headers: dict[str, str] | None = None, **extra) -> tuple[int, dict]:
        return self.request("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens,
                                                     "temperature": 0, **extra}, timeout=timeout, headers=headers)


def image_message(uri: str, question: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                        {"type": "text", "text": question}]}


def answer(resp: dict) -> str:
    return resp["choices"][0]["message"]["content"]


@contextmanager
def serve(folder: Path, tmp: Path, *, env: dict[str, str] | None = None, ready_within: float = 300,
          port: int | None = None) -> Iterator[Server]:
    """serve.sh from `folder` on a free port (IMP_PORT); stopped (process group) whatever happens."""
    port = port or free_port()
    log = tmp / f"serve-{port}.log"
    full_env = {**os.environ, "IMP_PORT": str(port), "IMP_THREADS": "2", **(env or {})}
    with open(log, "w") as fh:
        proc = subprocess.Popen(["sh", str(folder / "serve.sh")], stdout=fh, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
    server = Server(proc, port, log, full_env.get("IMP_HOST") or "127.0.0.1")
    key = full_env.get("IMP_API_KEY")
    try:
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve.sh exited {proc.returncode}: {log.read_text()[-1500:]}")
            try:
                status, _ = server.request("/health", timeout=5,
                                           headers={"Authorization": f"Bearer {key}"} if key else None)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"server not ready within {ready_within} s: {log.read_text()[-1500:]}")
        yield server
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
