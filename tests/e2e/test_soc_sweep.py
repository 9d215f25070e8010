"""The device report over a fake adb, run.sh's choice on the phone, `bench --sweep` end to end on the host
(real llama-mtmd-cli) and under qemu, profiles into run.sh. The table, the report's argv, sweep axes and profile checks are in tests/unit/test_soc_sweep.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput
from imp_gguf.runtime.soc import SOCS, shell_case

VARIANT = "Imp-v1.5-3B-196"


# ---------------------------------------------------------------- the device report, over a fake adb

FAKE_ADB = '''#!{py}
import subprocess, sys
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
open({log!r}, "a").write(repr(args) + "\\n")
assert args[0] == "shell" and len(args) == 2, args  # one command string, always
sys.exit(subprocess.run(["sh", "-c", args[1]]).returncode)
'''


def _fake_phone(tmp_path: Path, soc: str) -> Path:
    """A folder with `adb` (runs the command string with sh -c, logs it) and `getprop` (answers ro.soc.model)."""
    d = tmp_path / "phone-bin"
    d.mkdir(exist_ok=True)
    (d / "adb").write_text(FAKE_ADB.format(py=sys.executable, log=str(tmp_path / "adb.log")))
    (d / "getprop").write_text(f"#!/bin/sh\n[ \"$1\" = ro.soc.model ] && echo {soc}\n")
    for p in d.iterdir():
        p.chmod(0o755)
    return d


def test_soc_choice_over_adb_uses_getprop(tmp_path, monkeypatch):
    from imp_gguf.runtime.devices import Device, soc_choice
    from imp_gguf.runtime.runner import AdbRunner

    monkeypatch.setenv("PATH", f"{_fake_phone(tmp_path, 'SM8550')}{os.pathsep}{os.environ['PATH']}")
    runner = AdbRunner(serial="FAKE1", workdir=str(tmp_path))
    dev = Device("adb", runner, "linux-arm64", None, {}, "aarch64", 8, info=runner.device_info())
    assert dev.info["soc"] == "SM8550"
    choice = soc_choice(dev)
    assert (choice.soc, choice.threads, choice.mask, choice.how) == ("SM8550", 5, "0xf8", "ro.soc.model")
    log = (tmp_path / "adb.log").read_text()
    assert "['shell', 'getprop ro.soc.model']" in log and "cat /proc/cpuinfo" in log and "cpuinfo_max_freq" in log


# ---------------------------------------------------------------- run.sh picks the row on the phone

def _fake_tools(tmp_path: Path) -> dict[str, Path]:
    from imp_gguf.runtime import build as rt

    d = tmp_path / "fake-tools"
    d.mkdir(exist_ok=True)
    tools = {}
    for name in rt.TOOLS:
        (d / name).write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
        (d / name).chmod(0o755)
        tools[name] = d / name
    return tools


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path_factory.mktemp("tiny"), outtype="f16").to_dict()
    return Path(r["model"]), Path(r["mmproj"])


def _run_sh(bundle: Path, tmp_path: Path, soc: str | None, **env: str) -> list[str]:
    path = os.environ["PATH"] if soc is None else f"{_fake_phone(tmp_path, soc)}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(["sh", str(bundle / "run.sh"), "/img.png", "q"], capture_output=True, text=True,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("IMP_")}, "PATH": path, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


def _after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize("soc", SOCS, ids=[s.model for s in SOCS])
def test_run_sh_chooses_the_soc_row_on_the_phone(tmp_path, tiny_pair, soc):
    from imp_gguf.runtime.bundle import make_bundle

    out = tmp_path / "b"
    make_bundle(out, model=tiny_pair[0], mmproj=tiny_pair[1], binaries=_fake_tools(tmp_path))
    args = _run_sh(out, tmp_path, soc.model)
    assert _after(args, "-t") == str(soc.threads) and _after(args, "-C") == soc.mask
    assert _after(args, "--cpu-strict") == "1" and _after(args, "-lm") == "none"
    assert _after(args, "-c") == "768" and _after(args, "-n") == "256"  # 16 image tokens + 256 + 256, rounded
    assert _after(_run_sh(out, tmp_path, soc.model, IMP_CPU_MASK=""), "-C") is None  # empty: unpinned
    args = _run_sh(out, tmp_path, soc.model, IMP_THREADS="3", IMP_CTX="1024")
    assert _after(args, "-t") == "3" and _after(args, "-c") == "1024"


def test_run_sh_unknown_soc_is_unpinned(tmp_path, tiny_pair):
    from imp_gguf.runtime.bundle import make_bundle

    out = tmp_path / "b"
    make_bundle(out, model=tiny_pair[0], mmproj=tiny_pair[1], binaries=_fake_tools(tmp_path))
    assert "case \"$soc\" in" in (out / "run.sh").read_text() and shell_case() in (out / "run.sh").read_text()
    args = _run_sh(out, tmp_path, "SM6375")
    assert _after(args, "-C") is None and int(_after(args, "-t")) >= 1


# ---------------------------------------------------------------- sweeps

def _bench_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "bench", *args], capture_output=True,
                          text=True, timeout=3000)


def test_sweep_cli_refuses_bad_axes_in_one_line(tiny_pair):
    m, mm = map(str, tiny_pair)
    for extra, word in ((["--sweep", "fa=sometimes"], "fa"), (["threads=2"], "unexpected argument"),
                        (["--sweep", "threads=1", "--protocol", "llama-bench"], "paper protocol"),
                        (["--kv-type", "q9"], "--kv-type")):
        r = _bench_cli("-m", m, "--mmproj", mm, *extra)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and word in r.stderr, (extra, r.stderr)


@pytest.mark.slow
def test_sweep_on_the_host_writes_a_profile_that_bundles(tmp_path, tiny_pair, host_tools):
    """Real llama-mtmd-cli per point; the best point's flags become the profile and run.sh's flags."""
    from imp_gguf.runtime.bundle import make_bundle

    m, mm = map(str, tiny_pair)
    prof = tmp_path / "prof.json"
    r = _bench_cli("-m", m, "--mmproj", mm, "-r", "1", "--n-gen", "8", "--no-bandwidth", "--json",
                   "--sweep", "threads=1,2", "fa=on,off", "--profile-out", str(prof))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    sweep = out["sweep"]
    assert [(s["threads"], s["fa"]) for s in sweep] == [(1, "on"), (1, "off"), (2, "on"), (2, "off")]
    assert all(s["decode_tps"] > 0 for s in sweep)
    top = max(sweep, key=lambda s: (s["decode_tps"], -s["total_s"]))
    saved = json.loads(prof.read_text())
    assert saved["best"] == top and saved["args"] == top["args"]
    assert saved["args"][:2] == ["-t", str(top["threads"])] and "-fa" in saved["args"]
    assert "not phone numbers" in saved["note"]
    for row, s in zip(out["rows"], sweep):  # each point really ran with its flags
        assert row["command"][row["command"].index("-t") + 1] == str(s["threads"])
        assert row["command"][row["command"].index("-fa") + 1] == s["fa"]
    bundle = tmp_path / "b"
    r2 = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "bundle", "-m", m, "--mmproj", mm, "--target",
                         "host", "--profile", str(prof), str(bundle)], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    make_bundle(tmp_path / "fake", model=tiny_pair[0], mmproj=tiny_pair[1], binaries=_fake_tools(tmp_path),
                profile=saved | {"_path": "prof.json"})
    args = _run_sh(tmp_path / "fake", tmp_path, "SM8650")  # the profile wins over the SoC table
    assert _after(args, "-t") == str(top["threads"]) and _after(args, "-fa") == top["fa"]
    assert _after(args, "-C") is None
    assert json.loads((bundle / "bundle.json").read_text())["tuning"]["args"] == top["args"]


@pytest.mark.cross
@pytest.mark.slow
def test_sweep_under_qemu(tiny_pair, arm64_tools):
    from imp_gguf.speed.protocols import BenchConfig
    from imp_gguf.speed.bench import bench
    from imp_gguf.speed.sweep import make_profile

    rows = bench([tiny_pair[0]], [tiny_pair[1]], device="qemu", sweep={"threads": ["1", "2"]},
                 cfg=BenchConfig(runs=1, n_gen=4, bandwidth=False))
    assert [r.base.n_threads for r in rows] == [1, 2] and all(r.facts.emulated for r in rows)
    assert rows[0].sweep_summary is not None and rows[0].soc_choice is not None
    prof = make_profile(rows[0].sweep_summary, rows, rows[0].soc_choice)
    assert prof.emulated is True and prof.note and "not phone numbers" in prof.note


def test_quantized_kv_needs_heads_divisible_by_the_block(tiny_pair):
    """Phi-2 (Imp-3B) has heads of 80: llama.cpp refuses a q8_0 cache, so bench says so first (exit 2)."""
    from dataclasses import replace

    from imp_gguf.speed.protocols import check_kv_type, model_facts

    facts = model_facts(*tiny_pair)
    assert facts.head_dim == 64  # the tiny Imp: 256 wide, 4 heads
    check_kv_type(facts, "q8_0")
    with pytest.raises(BadInput, match="heads of 80, not a multiple of q8_0's block of 32"):
        check_kv_type(replace(facts, head_dim=80), "q8_0")
