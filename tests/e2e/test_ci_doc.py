"""docs/ci.md's GitHub Actions workflow, run here as GitHub would run its `run:` steps (not the `uses:`
actions): in order, each with `bash -eo pipefail`, the job's env with the matrix entry filled in,
GITHUB_PATH / GITHUB_ENV / GITHUB_STEP_SUMMARY files, in a fresh virtual environment that the install
step makes from a copy of this checkout (IMP_GGUF_PIP_SPEC; pip's cache supplies the compiled wheels)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def workflow() -> dict[str, Any]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "docs" / "ci.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "docs/ci.md holds exactly one workflow"
    return yaml.safe_load(blocks[0])


def expand(value: str, matrix: dict[str, str]) -> str:
    """GitHub's ${{ }} expressions, as far as the job's env uses them (matrix values, secrets unset)."""
    def one(m: re.Match) -> str:
        expr = m[1].strip()
        if expr.startswith("matrix."):
            return str(matrix[expr[7:]])
        if expr.startswith("secrets."):
            return ""
        raise AssertionError(f"expression outside what this test fills in: {expr}")
    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


class Runner:
    """The runner's side of `run:` steps: environment, files GitHub reads back, working directory."""

    def __init__(self, tmp: Path, job: dict[str, Any], matrix: dict[str, str], extra_env: dict[str, str]) -> None:
        self.workspace = tmp / "workspace"
        self.workspace.mkdir()
        runner_temp = tmp / "runner-temp"
        runner_temp.mkdir()
        self.files = {k: tmp / f"{k.lower()}.txt" for k in ("GITHUB_PATH", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
        for f in self.files.values():
            f.touch()
        # a fresh environment: no virtual environment of this session on PATH, no Python or HF overrides
        path = [p for p in os.environ["PATH"].split(os.pathsep) if "venv" not in p]
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("VIRTUAL_ENV", "PYTHON", "HF_", "PYTEST", "IMP_GGUF")) and k != "PATH"}
        self.env = keep | {"PATH": os.pathsep.join(path), "CI": "true", "GITHUB_ACTIONS": "true",
                           "GITHUB_WORKSPACE": str(self.workspace), "RUNNER_TEMP": str(runner_temp),
                           **{k: str(v) for k, v in self.files.items()},
                           **{k: expand(v, matrix) for k, v in (job.get("env") or {}).items()}, **extra_env}

    def run(self, step: dict[str, Any], timeout: float = 1800) -> subprocess.CompletedProcess:
        script = self.workspace.parent / "step.sh"
        script.write_text(step["run"])
        before = {k: f.read_text() for k, f in self.files.items()}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=self.workspace,
                              env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        added = {k: self.files[k].read_text()[len(before[k]):] for k in ("GITHUB_PATH", "GITHUB_ENV")}
        for line in added["GITHUB_PATH"].splitlines():
            self.env["PATH"] = line.strip() + os.pathsep + self.env["PATH"]
        for line in added["GITHUB_ENV"].splitlines():
            key, _, value = line.partition("=")
            self.env[key] = value
        return proc

    @property
    def summary(self) -> str:
        return self.files["GITHUB_STEP_SUMMARY"].read_text()


def run_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in steps if "run" in s]


def test_workflow_shape() -> None:
    """What a user copies: triggers, a matrix, the caches, and a compare step that checks a baseline."""
    wf = workflow()
    job = wf["jobs"]["compare"]
    include = job["strategy"]["matrix"]["include"]
    assert include and len({e["name"] for e in include}) == len(include)
    assert job["strategy"]["fail-fast"] is False
    uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
    assert {"actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"} <= set(uses)
    cache = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/cache"))
    assert {"~/.cache/pip", "~/.cache/imp-gguf", "~/.cache/huggingface"} <= set(cache["with"]["path"].split())
    names = [s["name"] for s in run_steps(job["steps"])]
    assert names == ["Install imp-gguf", "Resolve the checkpoint", "Compare recipes against the baseline"]
    compare = run_steps(job["steps"])[-1]["run"]
    assert "--baseline" in compare and "GITHUB_STEP_SUMMARY" in compare and "exit 1" in compare


def shipped_baseline() -> Path:
    """The tiny Imp's baseline that imp-gguf ships (bench/ in a checkout; inside the package if moved there)."""
    found = [p for p in [ROOT / "bench" / "baselines" / "recipes-tiny-imp.json",
                         *(ROOT / "imp_gguf").rglob("recipes-tiny-imp.json")] if p.is_file()]
    assert found, "no recipes-tiny-imp.json baseline in the checkout"
    return found[0]


def copy_checkout(dest: Path) -> Path:
    """Tracked and new files of this checkout (no build/ or egg-info of a developer's tree)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_workflow_steps_run_as_written(tmp_path: Path) -> None:
    wf = workflow()
    job = wf["jobs"]["compare"]
    entry = next(e for e in job["strategy"]["matrix"]["include"] if e["checkpoint"] == "tiny-imp")
    spec = copy_checkout(tmp_path / "src")
    gh = Runner(tmp_path, job, entry, {"IMP_GGUF_PIP_SPEC": str(spec)})
    baseline = gh.workspace / "baselines" / f"{entry['name']}.json"
    baseline.parent.mkdir()
    shutil.copy(shipped_baseline(), baseline)

    steps = run_steps(job["steps"])
    for step in steps:
        proc = gh.run(step)
        assert proc.returncode == 0, (step["name"], proc.stdout[-2000:], proc.stderr[-4000:])
    assert (tmp_path / "runner-temp" / "venv" / "bin" / "imp-gguf").is_file()  # a fresh install was used
    assert gh.env["CHECKPOINT"].endswith("Tiny-Imp-v1.5-56px")
    summary = gh.summary
    assert summary.startswith(f"## {entry['name']}\n# Recipe comparison") and "no regression" in summary
    for recipe in entry["recipes"].split(","):
        assert re.search(rf"^\| {recipe} \|", summary, re.M)

    # A regression: the same step appends the report to the summary, then fails the job with 1.
    data = json.loads(baseline.read_text())
    data["tolerance"] = {k: 0.0 for k in data["tolerance"]}
    for recipe in entry["recipes"].split(","):
        data["recipes"][recipe]["kl_mean"] = 1e-9
    baseline.write_text(json.dumps(data))
    proc = gh.run(steps[-1])
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert "::error::recipes compare exited" in proc.stdout
    second = gh.summary[len(summary):]
    assert second.startswith(f"## {entry['name']}\n# Recipe comparison") and "## Baseline" in second
    assert "no regression" not in second.split("## Baseline")[1]
