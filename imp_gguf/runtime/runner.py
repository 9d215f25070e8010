"""The one way imp-gguf reaches external programs: argument lists through a Runner, never shell strings.

A Runner turns a program's argv into the local argv that actually runs it (`wrap`): itself on this
machine, `qemu-aarch64 ...` for static arm64 binaries, `adb shell '<quoted>'` for a phone and
`ssh host '<quoted>'` for a board. Everything else (timeouts, capture, streaming, the ToolMissing
message) is shared in the base class.

adb and ssh hand ONE command string to a shell on the device, so every argument goes through
`quote_remote` (POSIX single quotes); env and cwd travel inside that string too (`remote_env = True`).
Files move with `adb push/pull` or `scp`. Remote file names we create are sanitised (`safe_name`) so they
never need quoting by scp's own remote side either.

    runner = AdbRunner(serial="R5CX...")           # adb -s R5CX... shell '<quoted>'
    runner = SshRunner.from_url("ssh://u0_a123@192.168.1.7:8022", options=["-i", "key"])
    runner.run(["./bin/llama-bench", "--version"], cwd=runner.workdir)
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from imp_gguf.errors import BadInput, InternalError, ToolMissing

# Debian package that provides each program we may call; used for one-line ToolMissing messages.
DEBIAN_PACKAGES: dict[str, str] = {
    "cmake": "cmake",
    "ninja": "ninja-build",
    "git": "git",
    "cc": "gcc",
    "c++": "g++",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    "adb": "adb",
    "ssh": "openssh-client",
}

Argv = Sequence[str | os.PathLike[str]]


def merged_env(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """os.environ with `overrides` on top (callers pass only what they change, e.g. PATH)."""
    env = dict(os.environ)
    if overrides:
        env.update(overrides)
    return env


def require_program(name: str, env: Mapping[str, str] | None = None) -> str:
    """Absolute path of `name` on PATH (of `env` if given), or ToolMissing naming the Debian package."""
    path = shutil.which(name, path=(env if env is not None else os.environ).get("PATH", ""))
    if path is None:
        pkg = DEBIAN_PACKAGES.get(name)
        hint = f"install it with `apt-get install {pkg}`" if pkg else "install it and put it on PATH"
        raise ToolMissing(f"{name} not found on PATH: {hint}")
    return path


def quote_remote(argv: Argv, *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """One POSIX-shell command string for adb/ssh, which take a single remote command, not an argv."""
    words = [shlex.quote(os.fspath(a)) for a in argv]
    if env:
        words = ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), *words]
    cmd = " ".join(words)
    if cwd is not None:
        cmd = f"cd {shlex.quote(cwd)} && {cmd}"
    return cmd


class Runner:
    """Base runner: runs argv locally after `wrap`. Subclasses change `wrap` (and transfer for remotes)."""

    name = "local"
    # Remote runners put env into the command string; local ones pass it to the process.
    remote_env = False

    def wrap(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
        return argv

    def check(self) -> None:
        """Raise ToolMissing if the runner's own program (qemu, adb, ssh) is missing."""

    def _prepare(
        self, argv: Argv, cwd: str | os.PathLike[str] | None, env: Mapping[str, str] | None
    ) -> tuple[list[str], str | None, dict[str, str] | None]:
        args = [os.fspath(a) for a in argv]
        if not args:
            raise InternalError("Runner.run called with an empty argv")
        cwd_s = os.fspath(cwd) if cwd is not None else None
        if self.remote_env:
            return self.wrap(args, env, cwd_s), None, None
        return self.wrap(args), cwd_s, merged_env(env)

    def run(
        self,
        argv: Argv,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        capture: bool = True,
        to_files: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion. `env` holds overrides on top of the current environment; `input` is the
        program's standard input (adb and ssh forward it), none when not given.

        A non-zero exit status is returned, not raised: callers decide what failure means.
        `to_files` captures into temporary files, not pipes: llama.cpp's logger is an asynchronous thread
        the process abandons at exit; blocked on a full pipe, its last entries (the llama_perf timing
        lines) are lost. Files never block.
        """
        self.check()
        local_argv, local_cwd, local_env = self._prepare(argv, cwd, env)
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(tempfile.TemporaryFile("w+", errors="replace"))
                     for _ in range(2 if to_files else 0)]
            streams = {"stdout": files[0], "stderr": files[1]} if to_files else {"capture_output": capture}
            try:
                stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
                proc = subprocess.run(local_argv, cwd=local_cwd, env=local_env, timeout=timeout, text=True,
                                      errors="replace", check=False, **stdin, **streams)
            except FileNotFoundError as exc:
                raise ToolMissing(f"{local_argv[0]} not found: {exc.strerror}") from exc
            except subprocess.TimeoutExpired as exc:
                raise InternalError(f"{Path(local_argv[0]).name} did not finish within {timeout:g} s") from exc
            if to_files:
                for f in files:
                    f.seek(0)
                proc.stdout, proc.stderr = files[0].read(), files[1].read()
            return proc

    def stream(
        self,
        argv: Argv,
        *,
        on_line: Callable[[str], None],
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Run, handing each output line (stdout and stderr merged) to `on_line`; return the exit status.

        Used for long builds so progress can be shown and the full log kept. The child is killed if we
        are interrupted, so an interrupted build never keeps running behind our back; after `timeout`
        seconds its process group is stopped and subprocess.TimeoutExpired raised.
        """
        self.check()
        local_argv, local_cwd, local_env = self._prepare(argv, cwd, env)
        try:
            proc = subprocess.Popen(
                local_argv,
                cwd=local_cwd,
                env=local_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                # Own process group: on interruption we stop the whole tree (cmake -> ninja -> compilers),
                # not only the direct child, so nothing keeps writing into a build dir behind our back.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ToolMissing(f"{local_argv[0]} not found: {exc.strerror}") from exc
        expired = threading.Event()
        timer = None
        if timeout is not None:
            def expire() -> None:
                expired.set()
                _stop_group(proc)

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            rc = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                _stop_group(proc)
        if expired.is_set():
            raise subprocess.TimeoutExpired(local_argv, timeout or 0)
        return rc

    def push(self, local: Path, remote: str) -> None:  # pragma: no cover - remote runners only
        raise NotImplementedError(f"{self.name} runner has no file transfer")

    def pull(self, remote: str, local: Path) -> None:  # pragma: no cover - remote runners only
        raise NotImplementedError(f"{self.name} runner has no file transfer")


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalRunner(Runner):
    """Programs on this machine."""

    name = "local"


class QemuRunner(Runner):
    """aarch64 Linux binaries on an x86 host through qemu-user.

    Our linux-arm64 builds are static, so no `-L sysroot` is needed; pass `sysroot` only for dynamic ones.
    Timings under qemu say nothing about a phone: use it for correctness, not for speed.
    """

    name = "qemu"

    def __init__(self, qemu: str = "qemu-aarch64", sysroot: Path | None = None) -> None:
        self.qemu = qemu
        self.sysroot = sysroot

    def check(self) -> None:
        require_program(self.qemu)

    def wrap(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
        prefix = [self.qemu]
        if self.sysroot is not None:
            prefix += ["-L", os.fspath(self.sysroot)]
        return [*prefix, *argv]


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
        proc = LocalRunner().run(argv, timeout=None)  # a local program (adb / scp): no remote wrapping
        if proc.returncode != 0:
            raise InternalError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:300]}")


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
