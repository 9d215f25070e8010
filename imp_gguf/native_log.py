"""Silence what native code (llama.cpp, libmtmd) prints straight to file descriptor 2.

Python-level redirection cannot catch C's fprintf(stderr, ...); swapping the descriptor can.
Our own messages report what matters (fallbacks, failures), so the per-tensor chatter goes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
