"""Runners for a phone or a board: `adb shell` (Android, /data/local/tmp) and `ssh` (Termux, Linux boards).

Both hand ONE command string to a shell on the device, so every argument goes through `quote_remote`
(POSIX single quotes); env and cwd travel inside that string too (`remote_env = True`). Files move with
`adb push/pull` or `scp`. Remote file names we create are sanitised (`safe_name`) so they never need
quoting by scp's own remote side either.

    runner = AdbRunner(serial="R5CX...")           # adb -s R5CX... shell '<quoted>'
    runner = SshRunner.from_url("ssh://u0_a123@192.168.1.7:8022", options=["-i", "key"])
    runner.run(["./bin/llama-bench", "--version"], cwd=runner.workdir)
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from imp_gguf.errors import BadInput, InternalError
from imp_gguf.runtime.runner import Runner, quote_remote, require_program

ADB_WORKDIR = "/data/local/tmp/imp-gguf"
SSH_WORKDIR = "imp-gguf"  # relative: the login directory ($HOME in Termux) for both ssh and scp

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file name that needs no quoting anywhere: runs of other characters become '_'."""
    out = _SAFE.sub("_", name).strip("._") or "file"
    return out[:200]


class RemoteRunner(Runner):
    """Shared behaviour: a remote working folder, env inside the command string, probing helpers."""

    remote_env = True
    workdir: str = ""

    def shell_argv(self, command: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrap(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
        return self.shell_argv(quote_remote(argv, env=env, cwd=cwd))

    def remote_path(self, *parts: str) -> str:
        return "/".join([self.workdir.rstrip("/"), *parts]) if self.workdir else "/".join(parts)

    # --- small helpers on top of run(); all commands are argv lists, quoted by wrap ---------------------
    def output(self, argv: Sequence[str], *, timeout: float = 60) -> str | None:
        """stdout of a short command, or None when it fails."""
        proc = self.run(list(argv), timeout=timeout)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def mkdir(self, path: str) -> None:
        proc = self.run(["mkdir", "-p", path], timeout=60)
        if proc.returncode != 0:
            raise InternalError(f"{self.name}: mkdir -p {path} failed: {(proc.stderr or proc.stdout).strip()[:200]}")

    def remote_size(self, path: str) -> int | None:
        out = self.output(["stat", "-c", "%s", path])
        return int(out) if out and out.isdigit() else None

    def push_if_changed(self, local: Path, remote: str) -> bool:
        """Push unless the remote file already has the same size (models are GBs; pushes take minutes)."""
        if self.remote_size(remote) == Path(local).stat().st_size:
            return False
        self.push(Path(local), remote)
        return True

    def _transfer(self, argv: list[str], what: str) -> None:
        proc = _LOCAL.run(argv, timeout=None)  # a local program (adb / scp): no remote wrapping
        if proc.returncode != 0:
            raise InternalError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:300]}")


class _Unwrapped(Runner):
    """Runs local programs (adb push, scp) without the remote wrapping."""


_LOCAL = _Unwrapped()


@dataclass
class AdbRunner(RemoteRunner):
    """An Android device over adb. Binaries must be static (our linux-arm64 bundle) or bionic-linked."""

    serial: str | None = None
    adb: str = "adb"
    workdir: str = ADB_WORKDIR

    name = "adb"

    def check(self) -> None:
        require_program(self.adb)

    def base(self) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else [])]

    def shell_argv(self, command: str) -> list[str]:
        # `adb shell` joins its arguments with spaces and hands them to the device's sh: pass ONE string.
        return [*self.base(), "shell", command]

    def push_argv(self, local: Path, remote: str) -> list[str]:
        return [*self.base(), "push", os.fspath(local), remote]

    def pull_argv(self, remote: str, local: Path) -> list[str]:
        return [*self.base(), "pull", remote, os.fspath(local)]

    def push(self, local: Path, remote: str) -> None:
        self.check()
        self._transfer(self.push_argv(local, remote), f"adb push {local}")

    def pull(self, remote: str, local: Path) -> None:
        self.check()
        self._transfer(self.pull_argv(remote, local), f"adb pull {remote}")

    def device_info(self) -> dict[str, str | None]:
        return {
            "model": self.output(["getprop", "ro.product.model"]),
            "android": self.output(["getprop", "ro.build.version.release"]),
            "soc": self.output(["getprop", "ro.soc.model"]) or self.output(["getprop", "ro.board.platform"]),
        }


@dataclass
class SshRunner(RemoteRunner):
    """A host over ssh (Termux's sshd on port 8022, a Linux board, or 127.0.0.1 in tests).

    `options` are extra ssh options shared by ssh and scp (e.g. ["-i", key, "-o", "StrictHostKeyChecking=no"]);
    BatchMode=yes is always added so a missing key fails instead of prompting for a password.
    """

    host: str = "localhost"
    user: str | None = None
    port: int | None = None
    options: list[str] = field(default_factory=list)
    workdir: str = SSH_WORKDIR
    ssh: str = "ssh"
    scp: str = "scp"

    name = "ssh"

    @classmethod
    def from_url(cls, url: str, **kw) -> "SshRunner":
        """ssh://user@host[:port] (also user@host[:port] without the scheme)."""
        if not url.startswith("ssh://"):
            url = "ssh://" + url
        parts = urlsplit(url)
        if not parts.hostname:
            raise BadInput(f"--device {url}: expected ssh://user@host[:port]")
        try:
            port = parts.port
        except ValueError as exc:
            raise BadInput(f"--device {url}: bad port") from exc
        return cls(host=parts.hostname, user=parts.username, port=port, **kw)

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def check(self) -> None:
        require_program(self.ssh)

    def _common(self) -> list[str]:
        return ["-o", "BatchMode=yes", *self.options]

    def shell_argv(self, command: str) -> list[str]:
        # `--` ends ssh's options; the destination and the single command string follow.
        return [self.ssh, *(["-p", str(self.port)] if self.port else []), *self._common(), "--", self.destination, command]

    def push_argv(self, local: Path, remote: str) -> list[str]:
        return [self.scp, "-q", *(["-P", str(self.port)] if self.port else []), *self._common(), "--",
                os.fspath(local), f"{self.destination}:{remote}"]

    def pull_argv(self, remote: str, local: Path) -> list[str]:
        return [self.scp, "-q", *(["-P", str(self.port)] if self.port else []), *self._common(), "--",
                f"{self.destination}:{remote}", os.fspath(local)]

    def push(self, local: Path, remote: str) -> None:
        require_program(self.scp)
        self._transfer(self.push_argv(local, remote), f"scp {local}")

    def pull(self, remote: str, local: Path) -> None:
        require_program(self.scp)
        self._transfer(self.pull_argv(remote, local), f"scp {remote}")

    def device_info(self) -> dict[str, str | None]:
        # Termux on Android has getprop; a Linux board does not (None then).
        return {
            "model": self.output(["getprop", "ro.product.model"]) or None,
            "android": self.output(["getprop", "ro.build.version.release"]) or None,
            "soc": self.output(["getprop", "ro.soc.model"]) or None,
        }


def parse_device(device: str, *, ssh_options: Sequence[str] = ()) -> tuple[str, Runner]:
    """--device value -> (kind, runner). kind: local | qemu | adb | ssh."""
    from imp_gguf.runtime.runner import LocalRunner, QemuRunner

    if device in ("local", "host", ""):
        return "local", LocalRunner()
    if device == "qemu":
        return "qemu", QemuRunner()
    if device == "adb" or device.startswith("adb:"):
        serial = device.partition(":")[2] or None
        return "adb", AdbRunner(serial=serial)
    if device.startswith("ssh://"):
        return "ssh", SshRunner.from_url(device, options=list(ssh_options))
    raise BadInput(f"--device {device!r}: expected local, qemu, adb[:SERIAL] or ssh://user@host[:port]")


def describe_command(argv: Sequence[str]) -> str:
    """A copy-pasteable rendering of a local argv (for logs and --dry-run)."""
    return " ".join(shlex.quote(a) for a in argv)
