"""The SoC table, the device report that picks a row (exact adb/ssh argv), run.sh's choice on the phone,
`bench --sweep` end to end on the host (real llama-mtmd-cli) and under qemu, profiles into run.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput
from imp_gguf.runtime.soc import (MAX_FREQ_ARGV, SOCS, SocChoice, choose, cpu_mask, parse_max_freqs, shell_case)

VARIANT = "Imp-v1.5-3B-196"
# Per-core cpuinfo_max_freq (kHz) as an 8 Gen 3 reports them: 2 A520, 3+2 A720, 1 X4.
SM8650_FREQS = {0: 2265600, 1: 2265600, 2: 3148800, 3: 3148800, 4: 3148800, 5: 2956800, 6: 2956800, 7: 3302400}


# ---------------------------------------------------------------- the table

@pytest.mark.parametrize("soc", SOCS, ids=[s.model for s in SOCS])
def test_each_table_row_is_chosen_by_its_own_report(soc):
    assert soc.threads == len(soc.big_cpus) and all(0 <= c < 8 for c in soc.big_cpus)
    assert int(soc.mask, 16) == sum(1 << c for c in soc.big_cpus)
    by_prop = choose(soc_model=soc.model, nproc=8)
    assert (by_prop.threads, by_prop.mask, by_prop.soc, by_prop.how) == (soc.threads, soc.mask, soc.model,
                                                                       "ro.soc.model")
    assert by_prop.args() == ["-t", str(soc.threads), "-C", soc.mask, "--cpu-strict", "1"]
    cpuinfo = f"processor\t: 0\nBogoMIPS\t: 38.40\nHardware\t: Qualcomm Technologies, Inc {soc.model}\n"
    by_cpuinfo = choose(cpuinfo=cpuinfo, nproc=8)
    assert (by_cpuinfo.soc, by_cpuinfo.mask, by_cpuinfo.how) == (soc.model, soc.mask, "/proc/cpuinfo")


def test_expected_rows_and_masks():
    rows = {s.name: (s.threads, s.mask) for s in SOCS}
    assert rows == {"Snapdragon 8 Gen 3": (6, "0xfc"), "Snapdragon 8 Elite": (6, "0xfc"),
                    "Snapdragon 8 Gen 2": (5, "0xf8"), "Snapdragon 888": (4, "0xf0")}


def test_unknown_socs_fall_back_to_frequencies_then_cores():
    text = "\n".join(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq {f}" for c, f in SM8650_FREQS.items())
    freqs = parse_max_freqs(text)
    assert freqs == SM8650_FREQS
    c = choose(soc_model="SM9999", max_freqs=freqs, nproc=8)  # not in the table: the clusters decide
    assert (c.threads, c.mask, c.soc, c.how) == (6, "0xfc", None, "cpufreq")
    assert choose(max_freqs={i: 2000000 for i in range(8)}, nproc=8) == SocChoice(6, None, None, None, "cores")
    assert choose(nproc=2) == SocChoice(2, None, None, None, "cores")
    assert cpu_mask([0, 1, 2, 3]) == "0xf"


# ---------------------------------------------------------------- the device report, over adb and ssh

def test_report_argv_is_quoted_for_the_remote_shell():
    from imp_gguf.runtime.runner import AdbRunner, SshRunner

    adb = AdbRunner(serial="R5CX 1")
    assert adb.wrap(MAX_FREQ_ARGV) == [
        "adb", "-s", "R5CX 1", "shell",
        "sh -c 'for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; "
        "do echo \"$f $(cat \"$f\")\"; done'"]
    assert adb.wrap(["getprop", "ro.soc.model"]) == ["adb", "-s", "R5CX 1", "shell", "getprop ro.soc.model"]
    ssh = SshRunner.from_url("ssh://u0_a123@192.168.1.7:8022", options=["-i", "k ey"])
    assert ssh.wrap(["cat", "/proc/cpuinfo"]) == ["ssh", "-p", "8022", "-o", "BatchMode=yes", "-i", "k ey", "--",
                                                  "u0_a123@192.168.1.7", "cat /proc/cpuinfo"]


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


# ---------------------------------------------------------------- sweep logic and profiles

def test_sweep_axes_points_and_errors():
    from imp_gguf.speed.protocols import BenchConfig
    from imp_gguf.speed.rows import SweepSummaryRow
    from imp_gguf.speed.sweep import best, configure, parse_axes, points

    axes = parse_axes(["threads=2,4,6,8 fa=on,off", "mask=big,none,0x3"])
    assert axes == {"threads": ["2", "4", "6", "8"], "fa": ["on", "off"], "mask": ["big", "none", "0x3"]}
    pts = points(axes)
    assert len(pts) == 24 and pts[0] == {"threads": "2", "fa": "on", "mask": "big"}
    soc = choose(soc_model="SM8650")
    cfg = configure(BenchConfig(), {"threads": "6", "fa": "off", "mask": "big", "kv": "q8_0"}, soc)
    assert cfg.tuning_args() == ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "off", "-C", "0xfc", "--cpu-strict", "1",
                                 "-lm", "none"] and cfg.threads == 6
    assert configure(BenchConfig(), {"mask": "none"}, soc).cpu_mask is None
    for bad, word in (("threads=0", "positive"), ("fa=maybe", "fa"), ("mask=fc", "hex"), ("speed=1", "axis"),
                      ("threads", "AXIS=")):
        with pytest.raises(BadInput, match=word):
            parse_axes([bad])
    def point(decode_tps: float | None, total_s: float | None = None) -> SweepSummaryRow:
        return SweepSummaryRow(point={}, threads=1, fa="default", cpu_mask=None, kv="f16", decode_tps=decode_tps,
                               decode_tps_min=None, decode_tps_max=None, prompt_tps=None, vision_encode_ms=None,
                               total_s=total_s, peak_rss_mb=None, args=[])

    assert best([point(5.0, 3.0), point(6.0, 9.0), point(6.0, 4.0), point(None)]) == point(6.0, 4.0)


def test_profile_validation(tmp_path):
    from imp_gguf.speed.sweep import load_profile

    p = tmp_path / "p.json"
    good = {"imp_gguf_profile": 1, "args": ["-t", "6", "-C", "0xfc", "--cpu-strict", "1", "-fa", "on"]}
    p.write_text(json.dumps(good))
    assert load_profile(p)["args"] == good["args"]
    for args in (["-t", "6; rm -rf /"], ["--mmproj", "x"], ["-t"], ["-C", "$(id)"]):
        p.write_text(json.dumps(good | {"args": args}))
        with pytest.raises(BadInput, match="--profile"):
            load_profile(p)
    p.write_text("{}")
    with pytest.raises(BadInput, match="not an imp-gguf device profile"):
        load_profile(p)


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


def test_bench_table_names_the_soc_choice():
    from rich.console import Console

    from imp_gguf.speed.report import print_table

    soc = choose(soc_model="SM8650").to_dict()
    console = Console(record=True, width=200)
    print_table([{"protocol": "paper", "model_filename": "m.gguf", "device": "adb x (aarch64)", "n_threads": 6,
                  "cpu_mask": "0xfc", "soc_choice": soc}], console)
    assert ("threads 6, CPU mask 0xfc; SoC default: 6 threads, mask 0xfc (Snapdragon 8 Gen 3, from ro.soc.model)"
            in console.export_text())
