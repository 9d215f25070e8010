"""Where a benchmark runs: this machine, qemu-user, an adb device or an ssh host, with its tools staged.

`open_device("adb:SERIAL")` finds the right llama.cpp build (host build locally, the static linux-arm64
build under qemu and on phones), pushes the tools and the bandwidth probe to the device once, and
describes the device (uname -m, cores, model/Android version, peak-RSS tool).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imp_gguf.bench.parse import parse_version
from imp_gguf.errors import BadInput
from imp_gguf.runtime.build import BuildResult, where
from imp_gguf.runtime.remote import RemoteRunner, parse_device, safe_name
from imp_gguf.runtime.runner import Runner

BENCH_TOOLS = ("llama-mtmd-cli", "llama-bench", "llama-perplexity")
TIME_CANDIDATES = ("/usr/bin/time", "/data/data/com.termux/files/usr/bin/time", "/system/bin/time")


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
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a tool on the device; `timed` wraps it in `time -v` (peak RSS) when the device has one."""
        argv = [os.fspath(a) for a in argv]
        if self.is_remote:
            if timed and self.time_cmd:
                argv = [*self.time_cmd, *argv]
            return self.runner.run(argv, cwd=self.workdir, timeout=timeout, env=env)
        local = self.runner.wrap(argv)  # qemu-aarch64 prog ... (time must run natively, around qemu)
        if timed and self.time_cmd:
            local = [*self.time_cmd, *local]
        return _run_to_files(local, timeout=timeout, env=env)

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


def _run_to_files(argv: list[str], *, timeout: float | None, env: Mapping[str, str] | None):
    """Run with stdout/stderr going to files, not pipes.

    llama.cpp's logger is an asynchronous thread that the process abandons at exit; if it is blocked on a
    full pipe, the last entries (the llama_perf timing lines) are lost. Files never block.
    """
    import tempfile

    from imp_gguf.runtime.runner import merged_env

    with tempfile.TemporaryFile("w+", errors="replace") as out, tempfile.TemporaryFile("w+", errors="replace") as err:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout,
                                  env=merged_env(env), check=False)
        except FileNotFoundError as exc:
            from imp_gguf.errors import ToolMissing

            raise ToolMissing(f"{argv[0]} not found: {exc.strerror}") from exc
        except subprocess.TimeoutExpired as exc:
            from imp_gguf.errors import InternalError

            raise InternalError(f"{Path(argv[0]).name} did not finish within {timeout:g} s") from exc
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def _time_cmd_local() -> list[str] | None:
    exe = shutil.which("time", path="/usr/bin:/bin") or ("/usr/bin/time" if Path("/usr/bin/time").is_file() else None)
    if not exe:
        return None
    proc = subprocess.run([exe, "-v", "true"], capture_output=True, text=True, check=False)
    return [exe, "-v"] if "Maximum resident" in proc.stderr else None


def _time_cmd_remote(runner: RemoteRunner) -> list[str] | None:
    for cand in TIME_CANDIDATES:
        proc = runner.run([cand, "-v", "true"], timeout=60)
        text = proc.stderr + proc.stdout
        if proc.returncode == 0 and ("Maximum resident" in text or "Max RSS" in text):  # GNU time / toybox
            return [cand, "-v"]
    return None


def _build_for(target: str, env: Mapping[str, str] | None = None) -> BuildResult:
    return where(target, env=env)


def open_device(spec: str, *, ssh_options: Sequence[str] = (), remote_target: str | None = None,
                remote_dir: str | None = None, build: BuildResult | None = None, probe: bool = True,
                log=None, runner: Runner | None = None) -> Device:
    """Resolve --device, stage the tools (remote), and describe the device.

    `remote_dir` overrides the remote working folder (adb: /data/local/tmp/imp-gguf, ssh: ~/imp-gguf);
    `runner` replaces the runner parse_device would make (tests: a fake adb).
    """
    from imp_gguf.bench.roofline import build_probe

    log = log or (lambda msg: None)
    kind, parsed = parse_device(spec, ssh_options=ssh_options)
    runner = runner or parsed
    if remote_dir is not None and isinstance(runner, RemoteRunner):
        runner.workdir = remote_dir
    runner.check()
    if kind == "local":
        b = build or _build_for("host")
        tools = {t: str(b.binaries[t]) for t in BENCH_TOOLS}
        dev = Device(kind, runner, "host", b, tools, platform.machine(), os.cpu_count() or 1,
                     time_cmd=_time_cmd_local())
        if probe:
            dev.tools["bandwidth"] = str(build_probe("host"))
        return dev
    if kind == "qemu":
        b = build or _build_for("linux-arm64")
        tools = {t: str(b.binaries[t]) for t in BENCH_TOOLS}
        dev = Device(kind, runner, "linux-arm64", b, tools, "aarch64", os.cpu_count() or 1, emulated=True,
                     time_cmd=_time_cmd_local())
        if probe:
            dev.tools["bandwidth"] = str(build_probe("linux-arm64"))
        return dev
    # adb / ssh: ask the device what it is, then push the matching build
    assert isinstance(runner, RemoteRunner)
    uname = runner.output(["uname", "-m"])
    if uname is None:
        raise BadInput(f"--device {spec}: cannot run commands there (uname -m failed)")
    arch = uname.strip()
    if remote_target is None:
        if arch in ("aarch64", "arm64"):
            remote_target = "linux-arm64"
        elif arch == platform.machine():
            remote_target = "host"  # same ISA as this machine (e.g. a test sshd on 127.0.0.1)
        else:
            raise BadInput(f"--device {spec} is {arch}: no build for it (pass --remote-target)")
    b = build or _build_for(remote_target)
    nproc_s = runner.output(["nproc"]) or "0"
    workdir = runner.workdir
    dev = Device(kind, runner, remote_target, b, {}, arch, int(nproc_s) if nproc_s.isdigit() else 1,
                 workdir=workdir)
    runner.mkdir(runner.remote_path("bin"))
    local_tools = {t: Path(b.binaries[t]) for t in BENCH_TOOLS}
    if probe and remote_target in ("host", "linux-arm64"):
        local_tools["bandwidth"] = build_probe(remote_target)
    for name, path in local_tools.items():
        remote = runner.remote_path("bin", name)
        if runner.push_if_changed(path, remote):
            log(f"pushed {name} to {remote}")
        dev.tools[name] = f"./bin/{name}"
    runner.run(["chmod", "755", *[f"bin/{n}" for n in local_tools]], cwd=workdir, timeout=60)
    dev.time_cmd = _time_cmd_remote(runner)
    dev.info.update({k: v for k, v in runner.device_info().items() if v})  # type: ignore[attr-defined]
    return dev


def version_info(dev: Device) -> dict[str, Any]:
    """llama.cpp build id and flags: the build stamp plus `llama-bench --version` run on the device."""
    out: dict[str, Any] = {}
    if dev.build is not None:
        st = dev.build.stamp
        out.update(build_commit=(st.get("commit") or "")[:7] or None, build_flag_hash=st.get("flag_hash"),
                   build_defines=st.get("defines"), build_target=dev.target)
    proc = dev.run([dev.tools["llama-bench"], "--version"], timeout=300)
    out.update({k: v for k, v in parse_version((proc.stdout or "") + (proc.stderr or "")).items() if v is not None})
    return out


def load_average(dev: Device) -> float | None:
    """The device's 1-minute load average: how much other work competed with a measurement."""
    if dev.is_remote:
        proc = dev.runner.run(["cat", "/proc/loadavg"], timeout=60)
        text = proc.stdout if proc.returncode == 0 else ""
    else:
        try:
            text = Path("/proc/loadavg").read_text()
        except OSError:
            return None
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return None


def cpu_info(dev: Device) -> str | None:
    """Like llama-bench's cpu_info: /proc/cpuinfo's model name (or Hardware / CPU part on ARM)."""
    if dev.kind == "qemu":
        return "qemu-aarch64 (emulated)"
    if dev.is_remote:
        proc = dev.runner.run(["cat", "/proc/cpuinfo"], timeout=60)
        text = proc.stdout if proc.returncode == 0 else ""
    else:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), v.strip())
    for k in ("model name", "hardware", "processor name"):
        if fields.get(k):
            return fields[k]
    if fields.get("cpu part"):
        return f"ARM CPU part {fields['cpu part']} (implementer {fields.get('cpu implementer', '?')})"
    return None


def soc_choice(dev: Device):
    """Threads and big-core mask for this device, from its own report (imp_gguf.runtime.soc): getprop
    ro.soc.model (already in dev.info on adb and Termux), /proc/cpuinfo, the per-core max frequencies."""
    from imp_gguf.runtime.soc import CPUINFO_ARGV, MAX_FREQ_ARGV, choose, parse_max_freqs

    if dev.kind == "qemu":  # qemu-user reports the host: no phone to choose for
        return choose(nproc=dev.nproc)
    if dev.is_remote:
        cpu = dev.run(CPUINFO_ARGV, timeout=60)
        freq = dev.run(MAX_FREQ_ARGV, timeout=60)
        cpuinfo = cpu.stdout if cpu.returncode == 0 else ""
        freqs = parse_max_freqs(freq.stdout if freq.returncode == 0 else "")
    else:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
        lines = []
        for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")):
            try:
                lines.append(f"{f} {f.read_text().strip()}")
            except OSError:
                continue
        freqs = parse_max_freqs("\n".join(lines))
    return choose(soc_model=dev.info.get("soc"), cpuinfo=cpuinfo, max_freqs=freqs, nproc=dev.nproc)
