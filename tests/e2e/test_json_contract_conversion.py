"""The JSON contract of the conversion-side `--json` commands, pinned in golden files.

Each case runs one command as a user runs it (in process, through `imp_gguf.cli.main.main`; hub ids in a
subprocess against the loopback hub) and compares its JSON with tests/golden/json/<case>.json, which holds:

- "shape": every key path and the JSON type of its value, recursively ("str", "int", "float", "bool",
  "null"; an object as its keys' shapes; a list as the merged shape of its elements);
- "values": the whole JSON with the run's folders replaced by placeholders (<tmp>, <ckpt>, <pkg>) and
  the values that differ from run to run (timings, memory, host facts, measured scores) replaced by
  "<volatile>"; file names, types, actions, recipe names and counts stay exact.

Regenerate the goldens after an intended change of the JSON (then review the diff):

    IMP_GGUF_REGEN_GOLDEN=1 pytest tests/e2e/test_json_contract_conversion.py

Covered: convert (dry run and real run, F16 and --quant q4_k, --keep-intermediate, a second recipe that
reuses the first one's mmproj, a hub id's dry run), recipes list, recipes show (with and without --plan),
recipes compare (one recipe, one run, a short evaluation set), card, demo, inspect (whole and --key).
`fixtures tiny` prints no JSON (it has no --json) and `fixtures full-size --json` writes ~6 GB, so
neither is pinned here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "json"
REGEN = os.environ.get("IMP_GGUF_REGEN_GOLDEN") == "1"
VARIANT = "Imp-v1.5-3B-196"
HUB_REPO = f"MILVLG/{VARIANT}"

# Keys whose values change from run to run (or host to host); their type is still pinned by the shape.
VOLATILE = {
    "seconds", "peak_rss_mb",
    # compare's measurements and host
    "kl_mean", "kl_seeds", "kl_spread", "kl_p99", "kl_max", "kl_text_mean", "top1", "image_cos_min",
    "prefill_tps", "decode_tps", "encode_ms", "pareto", "machine", "system", "cpu_count", "threads",
    "imp_gguf", "llama_cpp_python", "llama_cpp",
}


# ---------------------------------------------------------------- shape and normalisation

def _type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    raise TypeError(type(v))


def shape(v: Any) -> Any:
    """Key paths and JSON types, recursively; a list by the merged shape of its elements."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        shapes: list[Any] = []
        for x in v:
            s = shape(x)
            if s not in shapes:
                shapes.append(s)
        return sorted(shapes, key=lambda s: json.dumps(s, sort_keys=True))
    return _type(v)


def normalise(v: Any, roots: dict[str, str], volatile: frozenset[str] | set[str] = frozenset(),
              key: str | None = None) -> Any:
    """The JSON with run folders as placeholders and volatile values masked."""
    if key in volatile:
        return "<volatile>"
    if isinstance(v, dict):
        return {k: normalise(x, roots, volatile, k) for k, x in v.items()}
    if isinstance(v, list):
        return [normalise(x, roots, volatile) for x in v]
    if isinstance(v, str):
        for root, name in sorted(roots.items(), key=lambda kv: -len(kv[0])):
            v = v.replace(root, name)
        return v
    return v


def check(case: str, data: Any, roots: dict[str, str], volatile: set[str] = VOLATILE) -> None:
    """Compare with (or, with IMP_GGUF_REGEN_GOLDEN=1, write) tests/golden/json/<case>.json."""
    got = {"shape": shape(data), "values": normalise(data, roots, volatile)}
    path = GOLDEN / f"{case}.json"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=False) + "\n")
        return
    assert path.is_file(), f"{path} missing: run with IMP_GGUF_REGEN_GOLDEN=1 to create it"
    want = json.loads(path.read_text())
    assert got["shape"] == want["shape"], f"{case}: the JSON's shape changed"
    assert got["values"] == want["values"], f"{case}: the JSON's values changed"


def run_json(capsys: pytest.CaptureFixture[str], *args: str, rc: int = 0) -> Any:
    from imp_gguf.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    assert code == rc, out.err[-3000:]
    return json.loads(out.out)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imp_gguf.synthetic_checkpoints.tiny import make_checkpoint

    return make_checkpoint(VARIANT, tmp_path_factory.mktemp("contract-ckpt") / VARIANT)


def _roots(tmp_path: Path, ckpt: Path | None = None) -> dict[str, str]:
    import imp_gguf

    roots = {str(tmp_path): "<tmp>", str(Path(imp_gguf.__file__).resolve().parent): "<pkg>"}
    if ckpt is not None:
        roots[str(ckpt)] = "<ckpt>"
    return roots


# ---------------------------------------------------------------- convert

def test_convert_f16_dry_run(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--dry-run", "--json")
    check("convert_f16_dry_run", data, _roots(tmp_path, ckpt))


def test_convert_f16(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    data = run_json(capsys, "convert", str(ckpt), "-o", str(out), "--json")
    check("convert_f16", data, _roots(tmp_path, ckpt))
    # the same folder again: a dry run that finds both files (blocked, exit 2) and one with --force
    data = run_json(capsys, "convert", str(ckpt), "-o", str(out), "--dry-run", "--json", rc=2)
    check("convert_f16_dry_run_blocked", data, _roots(tmp_path, ckpt))
    data = run_json(capsys, "convert", str(ckpt), "-o", str(out), "--dry-run", "--force", "--json")
    check("convert_f16_dry_run_overwrite", data, _roots(tmp_path, ckpt))


def test_convert_q4_k_dry_run(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--quant", "q4_k", "--dry-run",
                    "--json")
    check("convert_q4_k_dry_run", data, _roots(tmp_path, ckpt))
    data = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--quant", "q4_k", "--dry-run",
                    "--keep-intermediate", "--json")
    check("convert_q4_k_keep_intermediate_dry_run", data, _roots(tmp_path, ckpt))


def test_convert_q4_k_then_second_recipe_reuses_mmproj(ckpt: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    data = run_json(capsys, "convert", str(ckpt), "-o", out, "--quant", "q4_k", "--json")
    check("convert_q4_k", data, _roots(tmp_path, ckpt))
    data = run_json(capsys, "convert", str(ckpt), "-o", out, "--quant", "q4_0", "--dry-run", "--json")
    check("convert_q4_0_reuse_dry_run", data, _roots(tmp_path, ckpt))
    data = run_json(capsys, "convert", str(ckpt), "-o", out, "--quant", "q4_0", "--json")
    check("convert_q4_0_reuse", data, _roots(tmp_path, ckpt))
    assert data["mmproj_reused"] is True


def test_convert_q4_k_keep_intermediate(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--quant", "q4_k",
                    "--keep-intermediate", "--json")
    check("convert_q4_k_keep_intermediate", data, _roots(tmp_path, ckpt))


def test_convert_with_card(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--quant", "q4_k", "--card",
                    "--json")
    check("convert_q4_k_card", data, _roots(tmp_path, ckpt))


def test_convert_hub_id_dry_run(hub, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    repo = hub.add(HUB_REPO, ckpt, extra={"README.md": b"---\nlicense: apache-2.0\n---\n# tiny\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "10",
            "HF_HUB_DOWNLOAD_TIMEOUT": "10", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "convert", HUB_REPO, "--quant", "q4_k",
                           "--dry-run", "--json", "-o", "out"], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    roots = _roots(tmp_path) | {repo.commit: "<commit>"}
    check("convert_hub_q4_k_dry_run", json.loads(proc.stdout), roots)
    proc = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "convert", HUB_REPO, "--dry-run", "--json",
                           "-o", "out"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check("convert_hub_f16_dry_run", json.loads(proc.stdout), roots)


# ---------------------------------------------------------------- recipes, card, inspect

def test_recipes_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # the shipped measurements: fixed data, so nothing is volatile
    check("recipes_list", run_json(capsys, "recipes", "list", "--json"), _roots(tmp_path), volatile=set())


def test_recipes_show(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path) -> None:
    check("recipes_show", run_json(capsys, "recipes", "show", "q4_k", "--json"), _roots(tmp_path))
    conv = run_json(capsys, "convert", str(ckpt), "-o", str(tmp_path / "out"), "--json")
    for part, path in (("model", conv["model"]), ("mmproj", conv["mmproj"])):
        data = run_json(capsys, "recipes", "show", "q4_k", "--plan", path, "--json")
        check(f"recipes_show_plan_{part}", data, _roots(tmp_path, ckpt))


def test_card_and_inspect(capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    conv = run_json(capsys, "convert", str(ckpt), "-o", str(out), "--quant", "q4_k", "--json")
    check("card", run_json(capsys, "card", str(out), "--json"), _roots(tmp_path, ckpt))
    check("card_lmstudio", run_json(capsys, "card", str(out), "--lmstudio", str(tmp_path / "lms"), "--json"),
          _roots(tmp_path, ckpt))
    check("inspect_model", run_json(capsys, "inspect", conv["model"], "--json"), _roots(tmp_path, ckpt))
    check("inspect_mmproj_tensors", run_json(capsys, "inspect", conv["mmproj"], "--tensors", "--json"),
          _roots(tmp_path, ckpt))
    check("inspect_key", run_json(capsys, "inspect", conv["model"], "--key", "general.name", "--key",
                                  "imp_gguf.recipe", "--json"), _roots(tmp_path, ckpt))


# ---------------------------------------------------------------- compare and demo (they run llama.cpp)

def test_recipes_compare(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    from imp_gguf.quant import compare
    from imp_gguf.quant.evalset import build_evalset

    monkeypatch.setattr(compare, "build_evalset", partial(build_evalset, n_texts=1, n_images=1, decode_tokens=4,
                                                          seeds=(0,), scenes_per_seed=1, answer_tokens=4))
    data = run_json(capsys, "recipes", "compare", str(ckpt), "--recipes", "q4_k", "-o", str(tmp_path / "cmp"),
                    "--runs", "1", "--threads", "1", "--json")
    check("recipes_compare", data, _roots(tmp_path, ckpt))


@pytest.mark.slow
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "demo", "-o", str(tmp_path / "demo"), "--json")
    check("demo", data, _roots(tmp_path))
