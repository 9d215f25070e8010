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
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from imp_gguf.speed.protocols import FA, KV, BenchConfig, check_kv_type, is_hex_mask
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


def configure(cfg: Any, point: dict[str, str], soc: SocChoice) -> Any:
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


def summary_row(point: dict[str, str], cfg: Any, row: dict[str, Any]) -> dict[str, Any]:
    return {"point": point, "threads": cfg.threads, "fa": cfg.flash_attn or "default", "cpu_mask": cfg.cpu_mask,
            "kv": cfg.kv_type, "decode_tps": row.get("decode_tps"), "decode_tps_min": row.get("decode_tps_min"),
            "decode_tps_max": row.get("decode_tps_max"), "prompt_tps": row.get("prompt_tps"),
            "vision_encode_ms": row.get("vision_encode_ms"), "total_s": row.get("total_s"),
            "peak_rss_mb": row.get("peak_rss_mb"), "args": args_of(cfg)}


def args_of(cfg: Any) -> list[str]:
    """The llama.cpp flags a configuration stands for (threads first)."""
    return ["-t", str(cfg.threads), *cfg.tuning_args()]


def best(summary: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [s for s in summary if s.get("decode_tps") is not None]
    if not measured:
        raise BadInput("the sweep measured no decode speed")
    return max(measured, key=lambda s: (s["decode_tps"], -(s.get("total_s") or 0.0)))


def run_sweep(session: Any, facts: Any, axes: dict[str, list[str]], soc: SocChoice,
              log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every point through the paper protocol on one device session; (rows, summary)."""
    base = replace(session.cfg, llama_bench_check=False)
    for kv in axes.get("kv", []):  # before the first run, not at the point that would fail
        check_kv_type(facts, kv)
    rows, summary = [], []
    for i, point in enumerate(points(axes), 1):
        cfg = configure(base, point, soc)
        if cfg.threads is None:
            cfg = replace(cfg, threads=soc.threads)
        session.cfg, session.threads = cfg, cfg.threads
        log(f"sweep {i}/{len(points(axes))}: {' '.join(f'{k}={v}' for k, v in point.items())}")
        row = session.run_paper(facts)
        row["sweep_point"] = point
        rows.append(row)
        summary.append(summary_row(point, cfg, row))
    session.cfg = base
    return rows, summary


def make_profile(summary: list[dict[str, Any]], rows: list[dict[str, Any]], soc: SocChoice) -> dict[str, Any]:
    top = best(summary)
    r0 = rows[0]
    on_phone = r0.get("device_kind") in ("adb", "ssh") and r0.get("device_arch") in ("aarch64", "arm64")
    return {
        "imp_gguf_profile": PROFILE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": r0.get("device"), "device_kind": r0.get("device_kind"), "device_model": r0.get("device_model"),
        "soc": soc.to_dict(), "cpu_info": r0.get("cpu_info"), "n_cpus": r0.get("n_cpus"),
        "build_commit": r0.get("build_commit"), "model_filename": r0.get("model_filename"),
        "protocol": "paper", "best": top, "args": top["args"], "sweep": summary,
        "emulated": bool(r0.get("emulated")),
        "note": None if on_phone else (f"measured on {r0.get('device')}: the sweep's logic, not phone numbers"),
    }


def write_profile(profile: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile, indent=2) + "\n")
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


def table(summary: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows for the human table (best marked)."""
    top = best(summary) if any(s.get("decode_tps") is not None for s in summary) else None

    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    return [{"": "*" if s is top else "", "threads": str(s["threads"]), "fa": s["fa"], "mask": s["cpu_mask"] or "-",
             "kv": s["kv"], "decode tok/s": f(s["decode_tps"], ".2f"), "prompt tok/s": f(s["prompt_tps"], ".2f"),
             "T_VE s": f(None if s["vision_encode_ms"] is None else s["vision_encode_ms"] / 1000, ".2f"),
             "total s": f(s["total_s"], ".2f"), "peak RSS MB": f(s["peak_rss_mb"], ".0f")} for s in summary]
