"""The fast lane's guard (`pytest tests/unit`, seconds): a unit test fails if it imports torch or
transformers, writes into the llama.cpp build cache, or opens a network connection.

- Imports: while a unit module is collected and while each unit test runs, a finder at the front of
  sys.meta_path refuses torch and transformers (ModuleNotFoundError) and the test fails even if the
  code caught that error. A module already imported by other tests in the same session is not
  imported again, so the guard bites in the fast lane itself (scripts/test.sh runs it on its own first).
- Build cache: IMP_GGUF_CACHE points at a new folder per test that must still not exist after it.
- Network: socket connect() other than to a Unix socket fails.
"""

from __future__ import annotations

import importlib.abc
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FORBIDDEN = ("torch", "transformers")


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.refused: list[str] = []

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (the finder protocol)
        if fullname.partition(".")[0] in FORBIDDEN:
            self.refused.append(fullname)
            raise ModuleNotFoundError(f"unit tests must not import {fullname} (tests/unit/conftest.py)",
                                      name=fullname)
        return None


class _guarded_imports:
    def __enter__(self) -> _Refuse:
        self.finder = _Refuse()
        sys.meta_path.insert(0, self.finder)
        return self.finder

    def __exit__(self, *exc: object) -> None:
        sys.meta_path.remove(self.finder)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Importing a unit test module (its module-level imports) runs under the guard."""
    if isinstance(collector, pytest.Module):
        with _guarded_imports():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _unit_guard(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    cache = tmp_path_factory.mktemp("guard", numbered=True) / "llama-cpp-build-cache-is-off-limits"
    monkeypatch.setenv("IMP_GGUF_CACHE", str(cache))
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(kind):  # noqa: ANN001, ANN202
        def connect(self: socket.socket, address: object) -> object:
            if self.family == getattr(socket, "AF_UNIX", None):
                return (real_connect if kind == "connect" else real_connect_ex)(self, address)
            raise AssertionError(f"unit tests must not open network connections (to {address!r})")
        return connect

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    with _guarded_imports() as finder:
        yield
    assert not finder.refused, f"unit tests must not import {', '.join(sorted(set(finder.refused)))}"
    assert not Path(cache).exists(), "unit tests must not touch the llama.cpp build cache (IMP_GGUF_CACHE)"
