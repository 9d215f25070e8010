"""imp-gguf bench (the parsers, roofline and verdicts are in tests/unit/test_bench.py): real runs of the built tools on a tiny converted Imp:
locally, under qemu-aarch64 (cross, slow), over ssh to an sshd started on 127.0.0.1, and through a fake
`adb` that executes the remote command strings with `sh -c`. Speeds are never asserted: only that
they were measured and labelled correctly.

.ci/run needs Debian's openssh-server (sshd) and openssh-client for the ssh tests; the fixture installs
openssh-server with apt-get when it is missing (as root) and skips when it cannot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from imp_gguf.speed.protocols import BenchConfig, exit_code
from imp_gguf.speed.bench import bench
from imp_gguf.runtime.parse import parse_bandwidth
from imp_gguf.speed.protocols import TextCounter, fit_question, model_facts
from imp_gguf.speed.roofline import build_probe
from imp_gguf.pins import LLAMA_CPP_COMMIT

VARIANT = "Imp-v1.5-3B-196"


# ---------------------------------------------------------------- prompt fitting on a converted model

@pytest.fixture(scope="module")
def tiny(converted):
    r = converted(VARIANT, "f16")
    return Path(r["model"]), Path(r["mmproj"])


def test_fit_question_hits_the_token_count(tiny):
    facts = model_facts(*tiny)
    assert facts.n_image_tokens == (facts.image_size // 14) ** 2
    counter = TextCounter(facts)
    base = counter.count("")
    q, n = fit_question(counter, base + 12)
    assert n == base + 12 and counter.count(q) == n
    # the tiny tokenizer's template alone exceeds 41 tokens: the shortest question is used and reported
    q, n = fit_question(counter, 41)
    assert q == "?" and n > 41


# ---------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def probe_host():
    return build_probe("host")


def test_bandwidth_probe_runs(probe_host):
    out = subprocess.run([str(probe_host), "-t", "1", "-s", "64", "-r", "2"], capture_output=True, text=True, check=True)
    res = parse_bandwidth(out.stdout)
    assert res["threads"] == 1 and res["gbps"] > 0


@pytest.mark.slow
def test_bench_local_paper_protocol_cli(tiny, converted, host_tools, tmp_path, test_image):
    from imp_gguf.cli.main import main

    f32 = converted(VARIANT, "f32")
    out = tmp_path / "rows.json"
    rc = main(["bench", "--model", str(tiny[0]), "--model", f32["model"], "--mmproj", str(tiny[1]),
               "--image", str(test_image), "--runs", "2", "--threads", "1", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and (tmp_path / "rows.png").stat().st_size > 1000
    for row in rows:
        # llama-bench's JSON fields, then ours
        for key in ("build_commit", "cpu_info", "model_filename", "model_type", "model_size", "n_threads",
                    "n_prompt", "n_gen", "avg_ts", "stddev_ts", "samples_ts", "vision_encode_ms", "prompt_tps",
                    "decode_tps", "ttft_ms", "peak_rss_mb", "bandwidth_gbps", "decode_efficiency", "ceiling_tps",
                    "device", "emulated", "verdict"):
            assert key in row, key
        assert row["build_commit"] == LLAMA_CPP_COMMIT[:7]
        assert row["device_kind"] == "local" and row["emulated"] is False
        assert row["passed"] is None and "not a device result" in row["verdict"]
        assert row["n_gen"] == 64 and row["runs"] == 2 and len(row["samples_ts"]) == 2
        assert all(d["n_generated"] == 64 or d["timings_source"] == "timestamps" for d in row["runs_detail"])
        # the text tokens we counted are the ones llama.cpp prefilled (text + image tokens)
        assert row["n_prompt"] == row["n_text_tokens"] + row["n_image_tokens"]
        assert row["decode_tps"] > 0 and row["vision_encode_ms"] is not None and row["prompt_tps"] > 0
        assert row["bandwidth_gbps"] > 0 and row["ceiling_tps"] > 0 and row["decode_efficiency"] > 0
        assert row["peak_rss_mb"] is None or row["peak_rss_mb"] > 1
        assert row["cpu_features"] and row["system_info"]
        assert row["paper"]["decode_tps"] == 12.73
        # the load the measurement shared the machine with, one sample per measured run
        assert len(row["load_avg_1m"]) == 2 and all(x >= 0 for x in row["load_avg_1m"])


@pytest.mark.slow
def test_bench_local_llama_bench_protocol(tiny, host_tools):
    rows = [r.to_dict() for r in bench([tiny[0]], [tiny[1]], device="local",
                                       cfg=BenchConfig(protocol="llama-bench", runs=1, threads=1, n_gen=16, bandwidth=False))]
    assert [bool(r["n_gen"]) for r in rows] == [False, True]
    pp, tg = rows
    assert pp["n_depth"] == tg["n_depth"] == pp["n_image_tokens"]
    assert pp["n_prompt"] == pp["n_text_tokens"] + pp["n_image_tokens"]
    assert tg["decode_tps"] == pytest.approx(tg["avg_ts"], rel=1e-3) and pp["prompt_tps"] > 0
    assert tg["model_filename"] == tiny[0].name and "samples_ts" in tg
    assert "not a device result" in tg["verdict"]
    assert tg["load_avg_1m"][0] >= 0


@pytest.mark.cross
@pytest.mark.slow
def test_bench_qemu_is_labelled_emulated(tiny, arm64_tools):
    rows = bench([tiny[0]], [tiny[1]], device="qemu", cfg=BenchConfig(runs=1, threads=2, n_gen=8))
    row = rows[0].to_dict()
    assert row["emulated"] is True and row["device_kind"] == "qemu" and row["passed"] is None
    assert "emulated" in row["verdict"] and exit_code(rows) == 0
    assert row["n_generated"] == 8 or row["timings_source"] == ["timestamps"]
    assert "NEON" in row["cpu_features"] and "MATMUL_INT8" in row["cpu_features"]  # the i8mm build
    assert row["decode_tps"] > 0 and row["bandwidth_gbps"] > 0


# ---------------------------------------------------------------- ssh: a real sshd on 127.0.0.1

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """sshd -D on a free port with throwaway host/user keys; yields (url, ssh options)."""
    if os.geteuid() != 0:
        pytest.skip("the test sshd needs root (PermitRootLogin for the current user)")
    if not Path("/usr/sbin/sshd").exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"],
                       env=env, capture_output=True, check=False, timeout=600)
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("ssh-keygen") or not shutil.which("scp"):
        pytest.skip("openssh-server / openssh-client not installed (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if Path(p).exists()), None)
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPermitRootLogin yes\nStrictModes no\n"
        f"UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        + (f"Subsystem sftp {sftp}\n" if sftp else ""))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir sshd insists on
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    opts = ["-i", str(d / "user_key"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR"]
    try:
        for _ in range(100):
            if proc.poll() is not None:
                pytest.skip(f"sshd exited: {(d / 'sshd.log').read_text()[-300:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        yield f"ssh://root@127.0.0.1:{port}", opts, d
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_ssh_runner_real_quoting(sshd, tmp_path):
    from imp_gguf.runtime.runner import SshRunner

    from tests.unit.test_remote import DUMP, HOSTILE

    url, opts, _ = sshd
    r = SshRunner.from_url(url, options=opts)
    out = tmp_path / "o.json"
    cwd = tmp_path / "a dir; $(x)"
    cwd.mkdir()
    proc = r.run([sys.executable, "-c", DUMP, *HOSTILE], env={"OUT": str(out), "X": "it's"}, cwd=str(cwd), timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["argv"] == HOSTILE and got["X"] == "it's" and Path(got["cwd"]) == cwd
    # scp round trip through a hostile local name
    src = tmp_path / "we ird'name.txt"
    src.write_text("payload")
    r.push(src, f"{tmp_path}/pushed.txt")
    r.pull(f"{tmp_path}/pushed.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "payload"


@pytest.mark.slow
def test_bench_over_ssh(sshd, tiny, host_tools, tmp_path):
    """The whole remote path: uname, push tools + probe + models + image by scp, run there, parse."""
    url, opts, _ = sshd
    remote_dir = str(tmp_path / "remote")
    rows = bench([tiny[0]], [tiny[1]], device=url, ssh_options=opts, remote_dir=remote_dir,
                 cfg=BenchConfig(runs=1, threads=1, n_gen=8, bandwidth_mib=64))
    row = rows[0].to_dict()
    assert row["device_kind"] == "ssh" and row["device_arch"] == os.uname().machine
    assert row["passed"] is None and "not a device result" in row["verdict"]  # x86_64 ssh host
    assert row["decode_tps"] > 0 and row["bandwidth_gbps"] > 0 and row["build_commit"]
    assert row["peak_rss_mb"] is None or row["peak_rss_mb"] > 1
    remote = Path(remote_dir)
    assert (remote / "bin" / "llama-mtmd-cli").is_file() and (remote / "bin" / "bandwidth").is_file()
    assert (remote / "models" / tiny[0].name).stat().st_size == tiny[0].stat().st_size
    assert list((remote / "images").glob("*.png"))


# ---------------------------------------------------------------- adb: fake adb that runs strings with sh -c

FAKE_ADB = '''#!{py}
import os, shutil, subprocess, sys
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
open({log!r}, "a").write(repr(args) + "\\n")
if args[0] == "shell":
    assert len(args) == 2, args  # one command string, always
    sys.exit(subprocess.run(["sh", "-c", args[1]]).returncode)
if args[0] in ("push", "pull"):
    shutil.copyfile(args[1], args[2])
    sys.exit(0)
sys.exit(1)
'''


@pytest.mark.slow
def test_bench_over_fake_adb(tiny, host_tools, tmp_path, monkeypatch):
    from imp_gguf.runtime.devices import open_device
    from imp_gguf.runtime.runner import AdbRunner

    fake = tmp_path / "bin" / "adb"
    fake.parent.mkdir()
    fake.write_text(FAKE_ADB.format(py=sys.executable, log=str(tmp_path / "adb.log")))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    workdir = tmp_path / "data local tmp"
    runner = AdbRunner(serial="FAKE1", workdir=str(workdir))
    dev = open_device("adb:FAKE1", runner=runner)
    assert dev.kind == "adb" and dev.target == "host" and dev.tools["llama-mtmd-cli"] == "./bin/llama-mtmd-cli"
    rows = bench([tiny[0]], [tiny[1]], dev=dev, cfg=BenchConfig(runs=1, threads=1, n_gen=8, bandwidth_mib=64))
    assert rows[0].facts.device_kind == "adb" and (rows[0].decode_tps or 0) > 0
    log = (tmp_path / "adb.log").read_text()
    assert "'push'" in log and "getprop ro.product.model" in log and "llama-mtmd-cli" in log


# ---------------------------------------------------------------- full-size checkpoints (shape, tokenizer)

def test_fullsize_table_matches_the_real_variant():
    from imp_gguf.synthetic_checkpoints.fullsize import FULL_VARIANTS, n_params, spec_tensors

    spec = FULL_VARIANTS["Imp-v1.5-3B-196"]
    table = dict(spec_tensors(spec))
    assert table["transformer.embd.wte.weight"] == (51200, 2560)
    assert table["transformer.h.31.mixer.Wqkv.weight"] == (7680, 2560)
    assert table["transformer.h.31.mlp.fc1.weight"] == (10240, 2560)
    assert table["lm_head.linear.bias"] == (51200,)
    vp = "transformer.vision_tower.vision_tower.vision_model."
    assert table[vp + "embeddings.position_embedding.weight"] == (196, 1152)
    assert table[vp + "encoder.layers.25.mlp.fc1.weight"] == (4304, 1152)
    assert vp + "encoder.layers.26.mlp.fc1.weight" not in table
    assert table["transformer.mm_projector.0.weight"] == (2560, 1152)
    assert 3.0e9 < n_params(spec) < 3.3e9  # Phi-2 2.78 B + SigLIP 26 blocks 0.40 B + projector
    big = dict(spec_tensors(FULL_VARIANTS["imp-v1-3b"]))
    assert big[vp + "embeddings.position_embedding.weight"] == (729, 1152)


def test_fullsize_small_replica_converts_with_real_token_ids(tmp_path):
    """The generator at reduced widths: converts, and the tokenizer has Phi-2/Imp's special-token ids."""
    import llama_cpp

    from imp_gguf.synthetic_checkpoints.fullsize import EOS_ID, FULL_VARIANTS, IMAGE_ID, make_fullsize
    from imp_gguf.synthetic_checkpoints.shards import to_bf16
    from imp_gguf.convert import convert
    from imp_gguf.gguf_info import read_gguf_meta

    import numpy as np

    assert to_bf16(np.array([1.0, -2.5, 3.14159], dtype=np.float32)).tolist() == [0x3F80, 0xC020, 0x4049]
    spec = replace(FULL_VARIANTS["Imp-v1.5-3B-196"], n_embd=256, n_layer=2, n_head=4, n_ff=1024, v_embd=192,
                   v_ff=344, v_head=4, v_layers_original=3)
    ck = make_fullsize("x", tmp_path / "ck", spec=spec, shard_bytes=20_000_000)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    r = convert(ck, tmp_path / "gguf", outtype="f16").to_dict()
    assert r["image_tokens"] == 196 and r["vision_blocks_run"] == 2
    meta = read_gguf_meta(r["model"])
    assert meta["phi2.embedding_length"] == 256
    llm = llama_cpp.Llama(r["model"], vocab_only=True, verbose=False)
    ids = llm.tokenize(b"Hi</s><image><|endoftext|>", add_bos=False, special=True)
    assert ids[-3:] == [EOS_ID, IMAGE_ID, 50256]
    assert llm.n_vocab() == 51200


def test_fixtures_cli_help_and_errors(tmp_path):
    from imp_gguf.cli.main import main

    assert main(["fixtures", "full-size", "--variant", "nope", str(tmp_path / "x")]) == 2
    (tmp_path / "exists").mkdir()
    assert main(["fixtures", "full-size", str(tmp_path / "exists")]) == 2
    assert main(["bench", "--model", str(tmp_path / "missing.gguf"), "--mmproj", str(tmp_path / "m.gguf")]) == 2


def test_fixtures_tiny_cli(tmp_path):
    from imp_gguf.cli.main import main

    out = tmp_path / "tiny"
    assert main(["fixtures", "tiny", "Imp-v1.5-3B-196", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors.index.json").is_file()
    assert main(["fixtures", "tiny", "Imp-v1.5-3B-196", str(out)]) == 2  # exists, no --force
    assert main(["fixtures", "tiny", "nope", str(tmp_path / "n")]) == 2
