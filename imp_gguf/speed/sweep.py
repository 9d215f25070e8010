"""`bench --sweep`: the paper protocol under each configuration, a table of them, the best as a profile.

    imp-gguf bench -m M.gguf --mmproj MM.gguf --device adb --sweep threads=2,4,6,8 fa=on,off mask=big,none

Axes: threads (counts), fa (on|off|auto), mask (big = the SoC default's big cores, none = no pinning,
or a hex mask such as 0xfc), kv (f16|q8_0|q4_0). The best configuration (highest median decode tok/s,
then shortest total) is written as a device profile: its flags, what it measured and where; `bundle
--profile FILE` puts those flags into run.sh. Off a phone (host, qemu) the sweep logic is the same but
the numbers are not phone numbers, and the profile says so.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from imp_gguf.speed.protocols import FA, KV, BenchConfig, BenchSession, ModelFacts, check_kv_type, is_hex_mask
from imp_gguf.speed.rows import PaperRow, SweepPoint, SweepSummaryRow
from imp_gguf.errors import BadInput
from imp_gguf.spelling import unknown
from imp_gguf.runtime.soc import SocChoice

AXES = ("threads", "fa", "mask", "kv")
PROFILE_VERSION = 1


def parse_axes(specs: list[str]) -> dict[str, list[str]]:
    """["threads=2,4", "fa=on,off"] -> {"threads": ["2", "4"], "fa": ["on", "off"]}; one line per error."""
    axes: dict[str, list[str]] = {}
    for spec in specs:
        for part in spec.split():
            name, eq, values = part.partition("=")
            name = name.strip().lower()
            if not eq or not values:
                raise BadInput(f"--sweep {part!r}: expected AXIS=V1,V2,... (axes: {', '.join(AXES)})")
            if name not in AXES:
                raise unknown("--sweep axis", name, AXES)
            vals = [v.strip() for v in values.split(",") if v.strip()]
            for v in vals:
                _check(name, v)
            axes[name] = list(dict.fromkeys(axes.get(name, []) + vals))
    if not axes:
        raise BadInput("--sweep needs at least one AXIS=V1,V2,...")
    return axes


def _check(axis: str, v: str) -> None:
    if axis == "threads" and not (v.isdigit() and int(v) >= 1):
        raise BadInput(f"--sweep threads={v}: thread counts are positive integers")
    if axis == "fa" and v not in FA:
        raise unknown("--sweep fa", v, FA)
    if axis == "kv" and v not in KV:
        raise unknown("--sweep kv", v, KV)
    if axis == "mask" and v not in ("big", "none") and not is_hex_mask(v):
        raise BadInput(f"--sweep mask={v}: expected big, none or a hex CPU mask such as 0xfc")


def points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    names = [a for a in AXES if a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[a] for a in names))]


def configure(cfg: BenchConfig, point: SweepPoint, soc: SocChoice) -> BenchConfig:
    """The BenchConfig for one sweep point (axes not swept keep cfg's values)."""
    kw: dict[str, Any] = {}
    if "threads" in point:
        kw["threads"] = int(point["threads"])
    if "fa" in point:
        kw["flash_attn"] = point["fa"]
    if "kv" in point:
        kw["kv_type"] = point["kv"]
    if "mask" in point:
        mask = {"none": None, "big": soc.mask}.get(point["mask"], point["mask"])
        kw["cpu_mask"], kw["cpu_strict"] = mask, mask is not None
    return replace(cfg, **kw)


def summary_row(point: SweepPoint, cfg: BenchConfig, row: PaperRow) -> SweepSummaryRow:
    return SweepSummaryRow(point=point, threads=cfg.threads, fa=cfg.flash_attn or "default", cpu_mask=cfg.cpu_mask,
                           kv=cfg.kv_type, decode_tps=row.decode_tps, decode_tps_min=row.decode_tps_min,
                           decode_tps_max=row.decode_tps_max, prompt_tps=row.prompt_tps,
                           vision_encode_ms=row.vision_encode_ms, total_s=row.total_s, peak_rss_mb=row.peak_rss_mb,
                           args=args_of(cfg))


def args_of(cfg: BenchConfig) -> list[str]:
    """The llama.cpp flags a configuration stands for (threads first)."""
    return ["-t", str(cfg.threads), *cfg.tuning_args()]


def best(summary: list[SweepSummaryRow]) -> SweepSummaryRow:
    measured = [s for s in summary if s.decode_tps is not None]
    if not measured:
        raise BadInput("the sweep measured no decode speed")
    return max(measured, key=lambda s: (s.decode_tps or 0.0, -(s.total_s or 0.0)))


def run_sweep(session: BenchSession, facts: ModelFacts, axes: dict[str, list[str]], soc: SocChoice,
              log: Callable[[str], None]) -> tuple[list[PaperRow], list[SweepSummaryRow]]:
    """Every point through the paper protocol on one device session; (rows, summary)."""
    base = replace(session.cfg, llama_bench_check=False)
    for kv in axes.get("kv", []):  # before the first run, not at the point that would fail
        check_kv_type(facts, kv)
    rows: list[PaperRow] = []
    summary: list[SweepSummaryRow] = []
    for i, point in enumerate(points(axes), 1):
        cfg = configure(base, point, soc)
        threads = cfg.threads if cfg.threads is not None else soc.threads
        cfg = replace(cfg, threads=threads)
        session.cfg, session.threads = cfg, threads
        log(f"sweep {i}/{len(points(axes))}: {' '.join(f'{k}={v}' for k, v in point.items())}")
        row = session.run_paper(facts)
        row.sweep_point = point
        rows.append(row)
        summary.append(summary_row(point, cfg, row))
    session.cfg = base
    return rows, summary


@dataclass(frozen=True)
class DeviceProfile:
    """`bench --sweep`'s best configuration and where it was measured: the file `bundle --profile` reads
    (load_profile checks it back)."""

    created: str
    device: str
    device_kind: str
    device_model: str | None
    soc: SocChoice
    cpu_info: str | None
    n_cpus: int | None
    build_commit: str | None
    model_filename: str
    best: SweepSummaryRow
    sweep: list[SweepSummaryRow]
    emulated: bool
    note: str | None
    protocol: str = "paper"
    version: int = PROFILE_VERSION

    @property
    def args(self) -> list[str]:
        return self.best.args

    def to_dict(self) -> dict[str, Any]:
        return {
            "imp_gguf_profile": self.version, "created": self.created, "device": self.device,
            "device_kind": self.device_kind, "device_model": self.device_model, "soc": self.soc.to_dict(),
            "cpu_info": self.cpu_info, "n_cpus": self.n_cpus, "build_commit": self.build_commit,
            "model_filename": self.model_filename, "protocol": self.protocol, "best": self.best.to_dict(),
            "args": self.args, "sweep": [s.to_dict() for s in self.sweep], "emulated": self.emulated,
            "note": self.note,
        }


def make_profile(summary: list[SweepSummaryRow], rows: list[PaperRow], soc: SocChoice) -> DeviceProfile:
    top = best(summary)
    f = rows[0].facts
    on_phone = f.device_kind in ("adb", "ssh") and f.device_arch in ("aarch64", "arm64")
    return DeviceProfile(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        device=f.device, device_kind=f.device_kind, device_model=f.device_model, soc=soc, cpu_info=f.cpu_info,
        n_cpus=f.n_cpus, build_commit=f.build_commit, model_filename=rows[0].model_filename, best=top,
        sweep=summary, emulated=bool(f.emulated),
        note=None if on_phone else f"measured on {f.device}: the sweep's logic, not phone numbers")


def write_profile(profile: DeviceProfile, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    tmp.replace(path)


ALLOWED_FLAGS = {"-t": "int", "-C": "hex", "--cpu-strict": ("0", "1"), "-fa": FA, "-ctk": KV, "-ctv": KV,
                 "-lm": ("none", "mmap")}


def load_profile(path: Path) -> dict[str, Any]:
    """A profile written by `bench --sweep`, its flags checked one by one (they end up in a shell script)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"--profile {path}: not a readable JSON profile ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) or data.get("imp_gguf_profile") != PROFILE_VERSION:
        raise BadInput(f"--profile {path}: not an imp-gguf device profile (written by `bench --sweep`)")
    args = data.get("args")
    if not isinstance(args, list) or len(args) % 2 or not all(isinstance(a, str) for a in args):
        raise BadInput(f"--profile {path}: 'args' must be a list of flag, value pairs")
    for flag, value in zip(args[::2], args[1::2]):
        rule = ALLOWED_FLAGS.get(flag)
        ok = (rule == "int" and value.isdigit() and int(value) > 0) or (rule == "hex" and is_hex_mask(value)) or (
            isinstance(rule, tuple) and value in rule)
        if not ok:
            raise BadInput(f"--profile {path}: flag {flag} {value!r} is not one a profile may set")
    return data


def apply_profile(cfg: BenchConfig, args: list[str]) -> BenchConfig:
    """`cfg` with a profile's flags (load_profile has checked them)."""
    flags = dict(zip(args[::2], args[1::2]))
    kw: dict[str, Any] = {"threads": int(flags["-t"])} if "-t" in flags else {}
    if "-C" in flags:
        kw.update(cpu_mask=flags["-C"], cpu_strict=flags.get("--cpu-strict", "1") == "1")
    if "-fa" in flags:
        kw["flash_attn"] = flags["-fa"]
    if "-ctk" in flags:
        kw["kv_type"] = flags["-ctk"]
    if "-lm" in flags:
        kw["mmap"] = flags["-lm"] == "mmap"
    return replace(cfg, **kw)


def table(summary: list[SweepSummaryRow]) -> list[dict[str, str]]:
    """Rows for the human table (best marked)."""
    top = best(summary) if any(s.decode_tps is not None for s in summary) else None

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    return [{"": "*" if s is top else "", "threads": str(s.threads), "fa": s.fa, "mask": s.cpu_mask or "-",
             "kv": s.kv, "decode tok/s": f(s.decode_tps, ".2f"), "prompt tok/s": f(s.prompt_tps, ".2f"),
             "T_VE s": f(None if s.vision_encode_ms is None else s.vision_encode_ms / 1000, ".2f"),
             "total s": f(s.total_s, ".2f"), "peak RSS MB": f(s.peak_rss_mb, ".0f")} for s in summary]
