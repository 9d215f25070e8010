"""What the hostile suites share: the checkpoints they damage and an alarm, so no case can hang."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

VARIANT = "Imp-v1.5-3B-196"  # phi-msft layout, BPE tokenizer, 56 px: the quickest fixture


class Timeout(BaseException):
    """Raised by the alarm: a BaseException, so nothing under test can swallow it."""


@contextmanager
def alarm_after(seconds: int) -> Iterator[None]:
    def fire(signum, frame):
        raise Timeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def hostile_checkpoint(tmp_path_factory: pytest.TempPathFactory, name: str = VARIANT, variant: str | None = None,
                       **kw) -> Path:
    """A tiny fixture checkpoint, written once per session and shared by the hostile modules."""
    from imp_gguf.synthetic_checkpoints.tiny import make_checkpoint

    return make_checkpoint(variant or name, tmp_path_factory.getbasetemp() / "hostile-ckpt" / name, **kw)
