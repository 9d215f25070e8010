"""Thread count and big-core mask per phone SoC: one table, and how a device's own report picks a row.

Public measurements and llama.cpp's discussions agree: on big.LITTLE Snapdragons the little cores cost
30-40% of decode, so the threads go to the big cores only, pinned there (`-C MASK --cpu-strict 1`); flash
attention on CPU has to be tried per device (`bench --sweep`), so the table leaves it to llama.cpp's default.

A device reports itself with `getprop ro.soc.model` (Android, over adb or in Termux), else the
`Hardware` line of /proc/cpuinfo (older kernels); without either, the per-core `cpuinfo_max_freq` values
give the clusters, and the slowest cluster is left out on 6+ cores.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Soc:
    model: str  # ro.soc.model
    name: str
    cores: str  # CPU numbering as the kernel has it, slowest cluster first
    big_cpus: tuple[int, ...]  # where the threads go
    threads: int
    source: str

    @property
    def mask(self) -> str:
        return cpu_mask(self.big_cpus)


SOCS: tuple[Soc, ...] = (
    Soc("SM8650", "Snapdragon 8 Gen 3", "cpu0-1 A520 2.27 GHz, cpu2-4 A720 3.15, cpu5-6 A720 2.96, cpu7 X4 3.3",
        (2, 3, 4, 5, 6, 7), 6, "the 6 big cores (X4 + 5 A720); the A520s cost 30-40% of decode"),
    Soc("SM8750", "Snapdragon 8 Elite", "cpu0-5 Oryon 3.53 GHz, cpu6-7 Oryon 4.32",
        (2, 3, 4, 5, 6, 7), 6, "no little cores; 6 threads measured best (OmniInfer PR #45)"),
    Soc("SM8550", "Snapdragon 8 Gen 2", "cpu0-2 A510 2.0 GHz, cpu3-4 A715 2.8, cpu5-6 A710 2.8, cpu7 X3 3.2",
        (3, 4, 5, 6, 7), 5, "5 threads = all performance cores; 6+ pulls in A510s, -30-40% decode (OmniInfer PR #66)"),
    Soc("SM8350", "Snapdragon 888", "cpu0-3 A55 1.8 GHz, cpu4-6 A78 2.42, cpu7 X1 2.84",
        (4, 5, 6, 7), 4, "the 4 big cores (X1 + 3 A78), as llama.cpp's MobileVLM notes run it (-t 4)"),
)
BY_MODEL = {s.model: s for s in SOCS}


def cpu_mask(cpus: tuple[int, ...] | list[int]) -> str:
    """llama.cpp's -C value: a hex mask with bit i for CPU i."""
    return hex(sum(1 << c for c in cpus))


@dataclass(frozen=True)
class SocChoice:
    """What a device gets by default: threads and mask, which table row (if any) and why."""

    threads: int
    mask: str | None
    soc: str | None  # the table row's model, or None
    name: str | None
    how: str  # which report decided: ro.soc.model | /proc/cpuinfo | cpufreq | cores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def args(self) -> list[str]:
        """The llama.cpp flags (llama-mtmd-cli and llama-bench spell them alike)."""
        out = ["-t", str(self.threads)]
        if self.mask:
            out += ["-C", self.mask, "--cpu-strict", "1"]
        return out


_SM = re.compile(r"\b(SM\d{4})\b", re.I)


def parse_max_freqs(text: str) -> dict[int, int]:
    """`PATH VALUE` lines for /sys/devices/system/cpu/cpuN/cpufreq/cpuinfo_max_freq -> {N: kHz}."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        m = re.search(r"cpu(\d+)/cpufreq/cpuinfo_max_freq\s+(\d+)\s*$", line.strip())
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def choose(*, soc_model: str | None = None, cpuinfo: str = "", max_freqs: dict[int, int] | None = None,
           nproc: int = 0) -> SocChoice:
    """The table row named by the device (ro.soc.model, else /proc/cpuinfo's Hardware line), else the
    cores with more than the lowest max frequency (6+ cores, 2+ clusters), else every core."""
    for how, text in (("ro.soc.model", soc_model or ""), ("/proc/cpuinfo", _hardware(cpuinfo))):
        m = _SM.search(text)
        if m and m.group(1).upper() in BY_MODEL:
            s = BY_MODEL[m.group(1).upper()]
            return SocChoice(s.threads, s.mask, s.model, s.name, how)
    freqs = max_freqs or {}
    n = nproc or len(freqs) or 1
    if len(freqs) >= 6 and len(set(freqs.values())) >= 2:
        low = min(freqs.values())
        big = sorted(c for c, f in freqs.items() if f > low)
        return SocChoice(len(big), cpu_mask(big), None, None, "cpufreq")
    return SocChoice(n - 2 if n >= 8 else n, None, None, None, "cores")


def _hardware(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "hardware":
            return value.strip()
    return ""


# The per-core max frequencies, as an argv for the device's runner (quoted for the remote shell there).
MAX_FREQ_SCRIPT = "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do echo \"$f $(cat \"$f\")\"; done"
MAX_FREQ_ARGV = ["sh", "-c", MAX_FREQ_SCRIPT]


def shell_case() -> str:
    """The table as a POSIX sh `case` for run.sh (which picks a row on the phone itself)."""
    lines = ['case "$soc" in']
    for s in SOCS:
        lines.append(f"    *{s.model}*|*{s.model.lower()}*) IMP_THREADS_DEFAULT={s.threads}; "
                     f"IMP_MASK_DEFAULT={s.mask} ;;  # {s.name}")
    lines.append("esac")
    return "\n".join(lines)
