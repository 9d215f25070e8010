"""Error classes whose type decides the exit status (documented in the README)."""

from __future__ import annotations


class ImpGgufError(Exception):
    """Base class: an error with a one-line message meant for the user."""

    exit_code = 1


class BadInput(ImpGgufError):
    """The user's input is wrong: a checkpoint, file, image, flag or device. Exit status 2."""

    exit_code = 2


class OutputExists(BadInput):
    """An output exists and --force was not given."""


class ToolMissing(ImpGgufError):
    """A program or package the command needs is not installed (the message says how to get it)."""

    exit_code = 2


class CheckFailed(ImpGgufError):
    """A check ran and failed: parity (verify), a baseline regression (recipes compare --baseline), a device
    missing its target (bench). Exit status 3; the report is on stdout, the reason in the error line."""

    exit_code = 3


class InternalError(ImpGgufError):
    """A bug or an unexpected failure of an external tool. Exit status 1."""

    exit_code = 1
