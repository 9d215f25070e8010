"""AdbRunner / SshRunner: the exact local commands they build, and proof that the remote command strings
deliver hostile arguments literally (run through `sh -c` here, as adb's and ssh's remote shells do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.errors import BadInput
from imp_gguf.runtime.devices import parse_device
from imp_gguf.runtime.runner import ADB_WORKDIR, AdbRunner, LocalRunner, QemuRunner, SshRunner, safe_name

HOSTILE = [
    "What's in the image?",
    'a "double" quote',
    "semi; rm -rf /",
    "$(touch /tmp/imp-gguf-pwned) `id` $HOME",
    "line one\nline two",
    "back\\slash and * glob ?",
    "",
    "--flag-looking",
    "tab\tand  spaces",
    "ünïcödé 🙂",
]

DUMP = "import json, os, sys; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'X': os.environ.get('X')}, open(os.environ['OUT'], 'w'))"


def _run_remote_string(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """What the device does with the one string adb/ssh hand it: `sh -c STRING`."""
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True, check=False)


# ---------------------------------------------------------------- adb: exact argv lists

def test_adb_shell_argv_is_one_quoted_string():
    r = AdbRunner(serial="R5CX123")
    argv = r.wrap(["./bin/llama-mtmd-cli", "-p", "a b", "--image", "x'y.png"], env={"LD_LIBRARY_PATH": "lib"},
                  cwd=ADB_WORKDIR)
    assert argv == [
        "adb", "-s", "R5CX123", "shell",
        "cd /data/local/tmp/imp-gguf && env LD_LIBRARY_PATH=lib ./bin/llama-mtmd-cli -p 'a b' --image 'x'\"'\"'y.png'",
    ]


def test_adb_without_serial_and_transfer_argv(tmp_path):
    r = AdbRunner()
    assert r.wrap(["uname", "-m"]) == ["adb", "shell", "uname -m"]
    local = tmp_path / "my model.gguf"
    assert r.push_argv(local, "/data/local/tmp/imp-gguf/models/my_model.gguf") == [
        "adb", "push", str(local), "/data/local/tmp/imp-gguf/models/my_model.gguf"]
    assert AdbRunner(serial="emulator-5554").pull_argv("/data/local/tmp/x.json", local) == [
        "adb", "-s", "emulator-5554", "pull", "/data/local/tmp/x.json", str(local)]


def test_adb_run_goes_through_wrap_with_env_and_cwd_inside(monkeypatch):
    """Runner.run must send env and cwd inside the string (remote_env), not to the local adb process."""
    seen = {}

    def fake_run(argv, **kw):
        seen["argv"], seen["kw"] = argv, kw
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(AdbRunner, "check", lambda self: None)
    AdbRunner(serial="S").run(["./bin/llama-bench", "--version"], cwd="/data/local/tmp/imp gguf", env={"A": "1 2"})
    assert seen["argv"] == ["adb", "-s", "S", "shell",
                            "cd '/data/local/tmp/imp gguf' && env 'A=1 2' ./bin/llama-bench --version"]
    assert seen["kw"]["cwd"] is None and seen["kw"]["env"] is None


@pytest.mark.parametrize("runner", [AdbRunner(serial="X"), SshRunner(host="127.0.0.1", user="root", port=2222)],
                         ids=["adb", "ssh"])
def test_remote_string_delivers_hostile_arguments_literally(runner, tmp_path):
    """Proof of quoting: the command string, run by sh -c, gives the program exactly our arguments."""
    cwd = tmp_path / "dir with space; $(x) 'q'"
    cwd.mkdir()
    out = tmp_path / "out.json"
    argv = runner.wrap([sys.executable, "-c", DUMP, *HOSTILE],
                       env={"X": "v a l'\"$(u)\n;", "OUT": str(out)}, cwd=str(cwd))
    command = argv[-1]
    proc = _run_remote_string(command, tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert got["argv"] == HOSTILE
    assert got["X"] == "v a l'\"$(u)\n;"
    assert Path(got["cwd"]) == cwd
    assert not Path("/tmp/imp-gguf-pwned").exists()


def test_bench_style_prompt_survives_quoting(tmp_path):
    """The exact argv shape the paper protocol sends (prompt with newline and quotes) through adb's string."""
    out = tmp_path / "o.json"
    question = "What's this?\nSay \"hi\"; $(reboot) `x`"
    argv = AdbRunner().wrap([sys.executable, "-c", DUMP, "-m", "models/m.gguf", "-p", question, "--jinja"],
                            env={"OUT": str(out)}, cwd=str(tmp_path))
    assert _run_remote_string(argv[-1], tmp_path).returncode == 0
    assert json.loads(out.read_text())["argv"] == ["-m", "models/m.gguf", "-p", question, "--jinja"]


# ---------------------------------------------------------------- ssh: exact argv lists

def test_ssh_argv():
    r = SshRunner.from_url("ssh://u0_a123@192.168.1.7:8022", options=["-i", "/k/id", "-o", "StrictHostKeyChecking=no"])
    assert (r.user, r.host, r.port) == ("u0_a123", "192.168.1.7", 8022)
    assert r.wrap(["ls", "a b"], cwd="imp-gguf") == [
        "ssh", "-p", "8022", "-o", "BatchMode=yes", "-i", "/k/id", "-o", "StrictHostKeyChecking=no", "--",
        "u0_a123@192.168.1.7", "cd imp-gguf && ls 'a b'"]
    assert r.push_argv(Path("/x/m.gguf"), "imp-gguf/models/m.gguf") == [
        "scp", "-q", "-P", "8022", "-o", "BatchMode=yes", "-i", "/k/id", "-o", "StrictHostKeyChecking=no", "--",
        "/x/m.gguf", "u0_a123@192.168.1.7:imp-gguf/models/m.gguf"]
    assert r.pull_argv("imp-gguf/r.json", Path("/x/r.json"))[-2:] == ["u0_a123@192.168.1.7:imp-gguf/r.json", "/x/r.json"]
    assert SshRunner.from_url("pi@board").wrap(["true"]) == ["ssh", "-o", "BatchMode=yes", "--", "pi@board", "true"]


def test_parse_device_and_safe_names():
    assert parse_device("local")[0] == "local" and isinstance(parse_device("local")[1], LocalRunner)
    assert isinstance(parse_device("qemu")[1], QemuRunner)
    kind, r = parse_device("adb:R5CX 1")
    assert kind == "adb" and r.serial == "R5CX 1"
    assert parse_device("adb")[1].serial is None
    kind, r = parse_device("ssh://root@127.0.0.1:2200", ssh_options=["-i", "k"])
    assert kind == "ssh" and r.port == 2200 and r.options == ["-i", "k"]
    with pytest.raises(BadInput):
        parse_device("usb")
    with pytest.raises(BadInput):
        parse_device("ssh://")
    assert safe_name("my model; $(x).gguf") == "my_model_x_.gguf"
    assert safe_name("../..") == "file"


def test_fake_adb_push_and_pull(tmp_path, monkeypatch):
    """push/pull call the local adb program with exactly the argv built above."""
    log = tmp_path / "adb.log"
    fake = tmp_path / "bin" / "adb"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    r = AdbRunner(serial="S1")
    r.push(tmp_path / "a b.gguf", "/data/local/tmp/imp-gguf/models/a_b.gguf")
    r.pull("/data/local/tmp/imp-gguf/x", tmp_path / "x")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["-s", "S1", "push", str(tmp_path / "a b.gguf"), "/data/local/tmp/imp-gguf/models/a_b.gguf"],
                     ["-s", "S1", "pull", "/data/local/tmp/imp-gguf/x", str(tmp_path / "x")]]
