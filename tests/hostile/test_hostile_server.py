"""What apps and networks send a bundle's server: serve.sh from a host-target bundle (the same script and
flags as on the phone, the host build of llama-server), the tiny Imp, real HTTP on loopback. Each hostile
request gets an error or waits its turn within a bounded time; the server then still answers a good
request correctly, and its peak memory stays within the budget the bundle's README states."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.plugins.serving import Q_COLOUR, Q_SHAPE, answer, image_message, scene, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(host_tools: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from imp_gguf.convert import convert
    from imp_gguf.runtime.bundle import make_bundle
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    tmp = tmp_path_factory.mktemp("hostile-serve")
    r = convert(default_checkpoint(), tmp / "gguf", outtype="f16")
    res = make_bundle(tmp / "imp-host", model=r.model, mmproj=r.mmproj, target="host",
                      binaries=host_tools)
    return {"folder": res.folder, "budget_mb": res.manifest.server_memory_budget_mb["total_mb"]}


@pytest.fixture(scope="module")
def server(bundle: dict, tmp_path_factory: pytest.TempPathFactory):
    with serve(bundle["folder"], tmp_path_factory.mktemp("serve-log"), ready_within=120) as srv:
        yield srv


def png_bomb(side: int) -> bytes:
    """A valid side x side RGB PNG of one colour: a few hundred KB that decode to side * side * 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _still_good(srv, bundle: dict) -> None:
    """The server answers a good two-turn conversation correctly, quickly, within its memory budget."""
    from imp_gguf.tiny_imp.evaluate import is_correct

    sc = scene()
    t0 = time.monotonic()
    first = [image_message(sc["uri"], Q_SHAPE)]
    status, r1 = srv.chat(first, timeout=60)
    assert status == 200 and is_correct(answer(r1), sc["shape"]), r1
    status, r2 = srv.chat([*first, {"role": "assistant", "content": answer(r1)}, {"role": "user", "content": Q_COLOUR}],
                          timeout=60)
    assert status == 200 and is_correct(answer(r2), sc["colour"]), r2
    assert time.monotonic() - t0 < 60
    assert srv.alive()
    assert srv.peak_rss_mb() <= bundle["budget_mb"], f"peak RSS {srv.peak_rss_mb():.0f} MB > budget {bundle['budget_mb']} MB"


def _bad_image(srv, uri: str, timeout: float = 60) -> int:
    t0 = time.monotonic()
    status, body = srv.chat([image_message(uri, Q_SHAPE)], timeout=timeout)
    assert time.monotonic() - t0 < timeout
    return status


def test_good_requests_first(server, bundle: dict) -> None:
    _still_good(server, bundle)


@pytest.mark.parametrize("what,uri", [
    ("text, not an image", "data:image/png;base64," + base64.b64encode(b"this is not an image " * 50).decode()),
    ("truncated PNG", None),
    ("not base64", "data:image/png;base64,@@@@not-base64@@@@"),
    ("an http URL (no downloads)", "http://127.0.0.1:9/cat.png"),
])
def test_not_an_image(server, bundle: dict, what: str, uri: str | None) -> None:
    if uri is None:
        png = scene()["png"]
        uri = "data:image/png;base64," + base64.b64encode(png[: len(png) // 2]).decode()
    status = _bad_image(server, uri)
    assert 400 <= status < 600, what
    _still_good(server, bundle)


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": {"url": ""}}, {"type": "text", "text": Q_SHAPE}],
    [{"type": "image_url", "image_url": {}}, {"type": "text", "text": Q_SHAPE}],
    [{"type": "image_url"}, {"type": "text", "text": Q_SHAPE}],
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}, {"type": "text", "text": Q_SHAPE}],
])
def test_missing_image(server, bundle: dict, content: list) -> None:
    t0 = time.monotonic()
    status, _ = server.chat([{"role": "user", "content": content}], timeout=60)
    assert 400 <= status < 600 and time.monotonic() - t0 < 60
    _still_good(server, bundle)


def test_oversized_body_is_refused(server, bundle: dict) -> None:
    """More than the server reads (100 MB): refused, or the connection dropped; nothing decoded."""
    big = "data:image/png;base64," + "A" * (101 * 1024 * 1024)
    try:
        status = _bad_image(server, big, timeout=120)
        assert status in (400, 413, 500), status
    except (ConnectionError, OSError):
        pass  # closed by the server before reading it all: also a refusal
    _still_good(server, bundle)


@pytest.mark.parametrize("side", [4000, 16384])
def test_oversized_image(server, bundle: dict, side: int) -> None:
    """A large photo is answered (clip.cpp resizes it); a decompression bomb (16384 px: 805 MB decoded from
    a few hundred KB) is refused or answered, never kills the server, and memory stays within budget."""
    uri = "data:image/png;base64," + base64.b64encode(png_bomb(side)).decode()
    status = _bad_image(server, uri, timeout=120)
    assert status == 200 if side == 4000 else status in (200, 400, 413, 500)
    _still_good(server, bundle)


def test_more_requests_than_slots_wait_their_turn(server, bundle: dict) -> None:
    from imp_gguf.tiny_imp.evaluate import is_correct

    sc = scene()
    results: list = [None] * 6

    def one(i: int) -> None:
        results[i] = server.chat([image_message(sc["uri"], Q_SHAPE)], timeout=120)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert time.monotonic() - t0 < 150 and not any(t.is_alive() for t in threads)
    for status, body in results:
        assert status == 200 and is_correct(answer(body), sc["shape"]), body
    _still_good(server, bundle)


def test_client_gone_mid_answer(server, bundle: dict) -> None:
    """A streamed answer whose client hangs up after the first piece: the server stops it and goes on."""
    sc = scene()
    body = json.dumps({"messages": [image_message(sc["uri"], Q_SHAPE)], "stream": True, "max_tokens": 2000,
                       "ignore_eos": True, "temperature": 0}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
            s.sendall(head + body)
            got = b""
            while b"data:" not in got:
                piece = s.recv(4096)
                assert piece, "closed before the first piece"
                got += piece
    _still_good(server, bundle)
