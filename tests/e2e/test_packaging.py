"""The base package (no extras) must work with its declared dependencies alone, and a wheel must carry
every file a command reads at run time (issue 12: `pip install -e . && imp-gguf demo` failed on a new
machine for want of click, which only the test extra brought in).

Here the extras are installed, so scripts/check_base_deps.py --block hides every installed module the
base dependencies do not bring (torch, transformers, safetensors, tokenizers, click, matplotlib,
huggingface_hub, ...). CI's first stage (scripts/fresh_install_check.sh) does the same for real, in new
virtual environments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import imp_gguf
from imp_gguf.speed.roofline import probe_source

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "check_base_deps.py"


def _blocked(code: str, *, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter after hiding what the base dependencies do not bring."""
    prelude = f"import runpy, sys; runpy.run_path({str(CHECK)!r})['block_non_base']()\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_base_commands_need_only_the_base_dependencies(tmp_path):
    """Every module imports, every --help works, verify/eval/fixtures/training exit 2 naming the extra."""
    proc = subprocess.run([sys.executable, str(CHECK), "--block"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hidden = proc.stdout.splitlines()[0]
    for name in ("torch", "transformers", "safetensors", "tokenizers", "matplotlib"):
        assert f" {name} " in f"{hidden} ", hidden  # the check really ran without them
    # click now comes with huggingface_hub (a base dependency), so hiding cannot catch issue 12 again:
    # imp_gguf itself must not import it (typer brings its own, old or new).
    assert not [p for p in Path(imp_gguf.__file__).parent.rglob("*.py")
                if any(ln.lstrip().startswith(("import click", "from click")) for ln in p.read_text().splitlines())]
    assert "base-dependency check: ok" in proc.stdout


def test_demo_with_the_base_dependencies_only(tmp_path):
    """The README's first command, in-process, with the extras hidden: every answer right."""
    proc = _blocked(f"from imp_gguf.cli.main import main\n"
                    f"sys.exit(main(['demo', '--json', '--outdir', {str(tmp_path / 'demo')!r}]))", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answers"] and result["correct"] == len(result["answers"]), result


def test_a_missing_extra_is_one_line_and_exit_2(tmp_path):
    proc = _blocked("from imp_gguf.cli.main import main\n"
                    f"sys.exit(main(['fixtures', 'tiny', 'imp-v1-3b', {str(tmp_path / 'tiny')!r}]))", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: torch is not installed (it comes with the reference extra): pip install 'imp-gguf[reference]'"]
    assert not (tmp_path / "tiny").exists()


def test_probe_source_is_package_data():
    assert probe_source().is_file()
    assert probe_source().resolve().is_relative_to(Path(imp_gguf.__file__).resolve().parent)


def test_the_wheel_carries_every_package_file(tmp_path):
    """`pip wheel` of the checkout holds every file under imp_gguf/ (recipes, the tiny Imp, demo images,
    the probe's C source...), so an installed wheel works like a checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [f for f in listed.stdout.splitlines() if (REPO / f).is_file()]
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheels"),
                    str(src)], check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    (wheel,) = (tmp_path / "wheels").glob("imp_gguf-*.whl")
    package = {f for f in files if f.startswith("imp_gguf/")}
    assert "imp_gguf/speed/probe/bandwidth.c" in package
    assert sorted(package - set(zipfile.ZipFile(wheel).namelist())) == []
    # the version is written once (imp_gguf.__version__); the wheel's metadata reads it from there
    metadata = zipfile.ZipFile(wheel).read(f"imp_gguf-{imp_gguf.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {imp_gguf.__version__}\n" in metadata


def test_the_installed_version_is_the_package_version():
    from importlib.metadata import version

    assert version("imp-gguf") == imp_gguf.__version__
    proc = subprocess.run([str(Path(sys.executable).with_name("imp-gguf")), "--version"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip() == f"imp-gguf {imp_gguf.__version__}", proc.stderr
