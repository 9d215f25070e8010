"""Where the llama.cpp tools run: this machine, qemu-user, an adb device or an ssh host (`--device`).

`open_device("adb:SERIAL")` finds the right llama.cpp build (host build locally, the static linux-arm64
build under qemu and on phones), pushes its DEVICE_TOOLS to the device once, and describes the device
(uname -m, cores, model/Android version, peak-RSS tool). The small queries below (version, load, CPU,
SoC) ask the device itself.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from imp_gguf.errors import BadInput
from imp_gguf.runtime.build import DEVICE_TOOLS, BuildResult, where
from imp_gguf.runtime.parse import ToolFields, parse_version
from imp_gguf.runtime.runner import (AdbRunner, LocalRunner, QemuRunner, RemoteRunner, Runner, SshRunner,
                                     safe_name)
from imp_gguf.runtime.soc import MAX_FREQ_ARGV, SocChoice, choose, parse_max_freqs

TIME_CANDIDATES = ("/usr/bin/time", "/data/data/com.termux/files/usr/bin/time", "/system/bin/time")


def parse_device(device: str, *, ssh_options: Sequence[str] = ()) -> tuple[str, Runner]:
    """--device value -> (kind, runner). kind: local | qemu | adb | ssh."""
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


@dataclass
class Device:
    kind: str  # local | qemu | adb | ssh
    runner: Runner
    target: str  # build target whose binaries run there
    build: BuildResult | None
    tools: dict[str, str]  # tool -> path as the runner sees it
    arch: str
    nproc: int
    emulated: bool = False
    workdir: str | None = None  # remote cwd for relative paths
    time_cmd: list[str] | None = None  # e.g. ["/usr/bin/time", "-v"], None if unknown
    info: dict[str, Any] = field(default_factory=dict)
    staged: dict[str, str] = field(default_factory=dict)  # local path -> device path

    @property
    def is_remote(self) -> bool:
        return isinstance(self.runner, RemoteRunner)

    @property
    def is_aarch64_device(self) -> bool:
        return self.kind in ("adb", "ssh") and self.arch in ("aarch64", "arm64")

    @property
    def label(self) -> str:
        if self.kind == "local":
            return f"host {self.arch}"
        if self.kind == "qemu":
            return "qemu-aarch64 (emulated)"
        name = self.info.get("model") or getattr(self.runner, "destination", None) or self.kind
        return f"{self.kind} {name} ({self.arch})"

    def default_threads(self) -> int:
        # 8-core phones (Snapdragon 8 Gen 3: 1+5 big, 2 little): little cores slow every step down.
        return self.nproc - 2 if self.nproc >= 8 else max(1, self.nproc)

    def run(self, argv: Sequence[str], *, timed: bool = False, timeout: float | None = None,
            env: Mapping[str, str] | None = None, input: str | None = None) -> CompletedProcess[str]:
        """Run a tool on the device; `timed` wraps it in `time -v` (peak RSS) when the device has one;
        `input` is its standard input."""
        argv = [os.fspath(a) for a in argv]
        time_cmd = self.time_cmd if timed and self.time_cmd else []
        if self.is_remote:
            return self.runner.run([*time_cmd, *argv], cwd=self.workdir, timeout=timeout, env=env, input=input)
        # time runs natively, around qemu-aarch64; files keep llama.cpp's last log lines (Runner.run)
        return LocalRunner().run([*time_cmd, *self.runner.wrap(argv)], timeout=timeout, env=env, to_files=True,
                                 input=input)

    def add_tools(self, tools: Mapping[str, Path], log: Callable[[str], None] | None = None) -> None:
        """Make local binaries runnable there under their names: a remote device gets them in bin/."""
        if not self.is_remote:
            self.tools.update({name: str(path) for name, path in tools.items()})
            return
        runner: RemoteRunner = self.runner  # type: ignore[assignment]
        runner.mkdir(runner.remote_path("bin"))
        for name, path in tools.items():
            remote = runner.remote_path("bin", name)
            if runner.push_if_changed(Path(path), remote) and log:
                log(f"pushed {name} to {remote}")
            self.tools[name] = f"./bin/{name}"
        runner.run(["chmod", "755", *[f"bin/{n}" for n in tools]], cwd=self.workdir, timeout=60)

    def stage(self, local: Path, sub: str = "models", *, always: bool = False) -> str:
        """Path of `local` on the device: pushed once per session, and skipped when a remote file of the
        same name and size exists (models are GBs), unless `always` (small files such as images)."""
        local = Path(local).resolve()
        key = str(local)
        if key in self.staged:
            return self.staged[key]
        if not self.is_remote:
            self.staged[key] = key
            return key
        runner: RemoteRunner = self.runner  # type: ignore[assignment]
        rel = f"{sub}/{safe_name(local.name)}"
        runner.mkdir(runner.remote_path(sub))
        if always:
            runner.push(local, runner.remote_path(rel))
        else:
            runner.push_if_changed(local, runner.remote_path(rel))
        self.staged[key] = rel  # relative to workdir: every run cds there
        return rel


def _time_cmd(runner: Runner, candidates: Sequence[str]) -> list[str] | None:
    """The first `time -v` that reports peak RSS (GNU time, or Android's toybox with "Max RSS")."""
    for cand in candidates:
        proc = runner.run([cand, "-v", "true"], timeout=60)
        text = proc.stderr + proc.stdout
        if proc.returncode == 0 and ("Maximum resident" in text or "Max RSS" in text):
            return [cand, "-v"]
    return None


def open_device(spec: str, *, ssh_options: Sequence[str] = (), remote_target: str | None = None,
                remote_dir: str | None = None, build: BuildResult | None = None,
                log: Callable[[str], None] | None = None, runner: Runner | None = None) -> Device:
    """Resolve --device, stage the tools (remote), and describe the device.

    `remote_dir` overrides the remote working folder (adb: /data/local/tmp/imp-gguf, ssh: ~/imp-gguf);
    `runner` replaces the runner parse_device would make (tests: a fake adb).
    """
    kind, parsed = parse_device(spec, ssh_options=ssh_options)
    runner = runner or parsed
    if remote_dir is not None and isinstance(runner, RemoteRunner):
        runner.workdir = remote_dir
    runner.check()
    if kind in ("local", "qemu"):
        target, arch = ("host", platform.machine()) if kind == "local" else ("linux-arm64", "aarch64")
        nproc, info = os.cpu_count() or 1, {}
        local_time = shutil.which("time", path="/usr/bin:/bin")
        time_cmd = _time_cmd(LocalRunner(), [local_time] if local_time else [])
    else:  # adb / ssh: ask the device what it is, then push the matching build
        assert isinstance(runner, RemoteRunner)
        uname = runner.output(["uname", "-m"])
        if uname is None:
            raise BadInput(f"--device {spec}: cannot run commands there (uname -m failed)")
        arch = uname.strip()
        if remote_target is not None:
            target = remote_target
        elif arch in ("aarch64", "arm64"):
            target = "linux-arm64"
        elif arch == platform.machine():
            target = "host"  # same ISA as this machine (e.g. a test sshd on 127.0.0.1)
        else:
            raise BadInput(f"--device {spec} is {arch}: no build for it (pass --remote-target)")
        nproc_s = runner.output(["nproc"]) or "0"
        nproc = int(nproc_s) if nproc_s.isdigit() else 1
        time_cmd = _time_cmd(runner, TIME_CANDIDATES)
        info = {k: v for k, v in runner.device_info().items() if v}  # type: ignore[attr-defined]
    b = build or where(target)
    dev = Device(kind, runner, target, b, {}, arch, nproc, emulated=kind == "qemu", time_cmd=time_cmd, info=info,
                 workdir=runner.workdir if isinstance(runner, RemoteRunner) else None)
    dev.add_tools({t: b.binaries[t] for t in DEVICE_TOOLS}, log)
    return dev


def _read(dev: Device, path: str) -> str:
    """A text file on the device, '' when unreadable."""
    if dev.is_remote:
        proc = dev.runner.run(["cat", path], timeout=60)
        return proc.stdout if proc.returncode == 0 else ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def version_info(dev: Device) -> ToolFields:
    """llama.cpp build id and flags: the build stamp plus `llama-bench --version` run on the device."""
    out: ToolFields = {}
    if dev.build is not None:
        st = dev.build.stamp
        out.update(build_commit=(st.get("commit") or "")[:7] or None, build_flag_hash=st.get("flag_hash"),
                   build_defines=st.get("defines"), build_target=dev.target)
    proc = dev.run([dev.tools["llama-bench"], "--version"], timeout=300)
    out.update({k: v for k, v in parse_version((proc.stdout or "") + (proc.stderr or "")).items() if v is not None})
    return out


def load_average(dev: Device) -> float | None:
    """The device's 1-minute load average: how much other work competed with a measurement."""
    try:
        return float(_read(dev, "/proc/loadavg").split()[0])
    except (IndexError, ValueError):
        return None


def cpu_info(dev: Device) -> str | None:
    """Like llama-bench's cpu_info: /proc/cpuinfo's model name (or Hardware / CPU part on ARM)."""
    if dev.kind == "qemu":
        return "qemu-aarch64 (emulated)"
    fields: dict[str, str] = {}
    for line in _read(dev, "/proc/cpuinfo").splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), v.strip())
    for k in ("model name", "hardware", "processor name"):
        if fields.get(k):
            return fields[k]
    if fields.get("cpu part"):
        return f"ARM CPU part {fields['cpu part']} (implementer {fields.get('cpu implementer', '?')})"
    return None


def soc_choice(dev: Device) -> SocChoice:
    """Threads and big-core mask for this device, from its own report (imp_gguf.runtime.soc): getprop
    ro.soc.model (already in dev.info on adb and Termux), /proc/cpuinfo, the per-core max frequencies."""
    if dev.kind == "qemu":  # qemu-user reports the host: no phone to choose for
        return choose(nproc=dev.nproc)
    freq = dev.run(MAX_FREQ_ARGV, timeout=60)
    return choose(soc_model=dev.info.get("soc"), cpuinfo=_read(dev, "/proc/cpuinfo"),
                  max_freqs=parse_max_freqs(freq.stdout if freq.returncode == 0 else ""), nproc=dev.nproc)
