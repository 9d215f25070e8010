"""The one way imp-gguf reaches external programs: argument lists through a Runner, never shell strings.

A Runner turns a program's argv into the local argv that actually runs it (`wrap`): itself on this
machine, `qemu-aarch64 ...` for static arm64 binaries, and later `adb shell '<quoted>'` or
`ssh host '<quoted>'` for a phone or a board. Everything else (timeouts, capture, streaming,
the ToolMissing message) is shared in the base class.

Extension points for remote runners (AdbRunner, SshRunner, to be written for the bench):
  - override `wrap(argv, env)`: build the local argv, e.g.
    `["adb", "-s", serial, "shell", quote_remote(argv, env=env, cwd=cwd)]`;
    adb and ssh hand their single command string to a remote shell, hence `quote_remote`;
  - override `push(local, remote)` / `pull(remote, local)` for file transfer;
  - set `remote_env = True` so `env` is sent inside the command string instead of to the local process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imp_gguf.errors import InternalError, ToolMissing

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
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion. `env` holds overrides on top of the current environment.

        A non-zero exit status is returned, not raised: callers decide what failure means.
        """
        self.check()
        local_argv, local_cwd, local_env = self._prepare(argv, cwd, env)
        try:
            return subprocess.run(
                local_argv,
                cwd=local_cwd,
                env=local_env,
                timeout=timeout,
                capture_output=capture,
                text=True,
                errors="replace",
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ToolMissing(f"{local_argv[0]} not found: {exc.strerror}") from exc
        except subprocess.TimeoutExpired as exc:
            raise InternalError(f"{Path(local_argv[0]).name} did not finish within {timeout:g} s") from exc

    def stream(
        self,
        argv: Argv,
        *,
        on_line: Callable[[str], None],
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Run, handing each output line (stdout and stderr merged) to `on_line`; return the exit status.

        Used for long builds so progress can be shown and the full log kept. The child is killed if we
        are interrupted, so an interrupted build never keeps running behind our back.
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
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            return proc.wait()
        finally:
            if proc.poll() is None:
                _stop_group(proc)

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
