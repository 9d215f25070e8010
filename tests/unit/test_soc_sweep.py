"""The SoC table and the device report that picks a row (exact adb/ssh argv), the sweep's axes and profiles,
the bench table's SoC line: no device, no tools (moved from tests/e2e/test_soc_sweep.py, which runs them)."""

from __future__ import annotations

import json

import pytest

from imp_gguf.errors import BadInput
from imp_gguf.runtime.soc import MAX_FREQ_ARGV, SOCS, SocChoice, choose, cpu_mask, parse_max_freqs

# Per-core cpuinfo_max_freq (kHz) as an 8 Gen 3 reports them: 2 A520, 3+2 A720, 1 X4.
SM8650_FREQS = {0: 2265600, 1: 2265600, 2: 3148800, 3: 3148800, 4: 3148800, 5: 2956800, 6: 2956800, 7: 3302400}


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


def test_bench_table_names_the_soc_choice():
    from rich.console import Console

    from imp_gguf.speed.report import print_table

    soc = choose(soc_model="SM8650").to_dict()
    console = Console(record=True, width=200)
    print_table([{"protocol": "paper", "model_filename": "m.gguf", "device": "adb x (aarch64)", "n_threads": 6,
                  "cpu_mask": "0xfc", "soc_choice": soc}], console)
    assert ("threads 6, CPU mask 0xfc; SoC default: 6 threads, mask 0xfc (Snapdragon 8 Gen 3, from ro.soc.model)"
            in console.export_text())
