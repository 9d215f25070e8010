"""The JSON of the runtime side's `--json` commands is a contract (issue #21): these tests pin it.

For each command the golden file tests/golden/json/<command>.json holds
  - "shape": every key path of the output (`$.turns[].timings.decode_ms`: `[]` stands for any element of
    a list) with the JSON types seen there ("null", "bool", "int", "float", "string", "object", "array");
    a path whose value may be null in one run and a number in another lists both (UNIONS below adds
    what one run cannot show), and a path that may be missing lists "absent";
  - "values": exact values of the fields that do not depend on timing, paths or the machine;
  - "order": the order the keys of each object print in.

A run passes when every path it prints is in the golden shape with one of its types, every golden path
not marked "absent" is printed, and each pinned value is equal.

Regenerate the golden files from the current code (after an intended change of the JSON, never to make
a refactoring pass) with

    IMP_GGUF_REGEN_GOLDEN=1 pytest tests/e2e/test_json_contract_runtime.py

then review `git diff tests/golden/json/`.

Commands: run (one -p; two -p, a conversation; --backend cli), bench (paper with its decode check and the
bandwidth probe, llama-bench, followup, --sweep; local device, one run, the bundled tiny Imp), bundle
--target host, runtime where/build (the cached host build, reused, never rebuilt), verify, eval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "json"
REGEN = os.environ.get("IMP_GGUF_REGEN_GOLDEN") == "1"

Q_SHAPE, Q_COLOUR = "What shape is it?", "What colour is the shape?"

NULLABLE_FLOAT = ["float", "null"]

# Types one run cannot show: bench figures are rounded floats or null (a lost log line, a missing
# `time -v`, one run only), some counts int or null, device facts strings or null. On regeneration every
# bench path seen as a float or as null only gets these unions, by the name it ends with.
INT_OR_NULL = (".avg_ns", ".samples_ns[]", ".eval_runs", ".sample_runs", ".prompt_tokens", ".first_token_us",
               ".last_token_us", ".encode_start_us", "$[].n_generated", "$.rows[].n_generated")
STR_OR_NULL = (".device_model", ".android_version", ".soc", ".system_info", ".protocol_note", ".note",
               ".peak_rss_source", ".text", ".cpu_mask", ".mask", ".name")
OBJECT_OR_NULL = (".bandwidth_probe",)
BOOL_OR_NULL = (".passed", ".within_10pct")
# run --backend cli: llama-mtmd-cli's timing lines can be lost (its logger is never flushed): a timing absent.
# Objects whose keys are data, not a contract (file names inside a bundle, hashed by the web UI's build):
# pinned as one `*` child whose type every value shares.
MAPS = ("$.sha256",)
ABSENT_UNDER = {"run-cli": ("$.timings.", "$.turns[].timings.")}
UNIONS: dict[str, dict[str, list[str]]] = {
    "verify": {
        "$.text_logits_max_err_over_std": NULLABLE_FLOAT, "$.text_top1_agreement": NULLABLE_FLOAT,
        "$.image_cos_min": NULLABLE_FLOAT, "$.image_cos_mean": NULLABLE_FLOAT,
        "$.image_prompt_max_err_over_std": NULLABLE_FLOAT, "$.image_prompt_top1_match": ["bool", "null"],
        "$.tokenizer_mismatches[]": ["absent", "string"], "$.problems[]": ["absent", "string"],
    },
}


def _loosen(name: str, merged: dict[str, list[str]]) -> None:
    """The unions above, applied to a golden shape being regenerated."""
    for p, types in merged.items():
        t = set(types)
        if name.startswith("bench"):
            if p.endswith(INT_OR_NULL):
                t |= {"int", "null"}
            elif p.endswith(STR_OR_NULL):
                t |= {"string", "null"}
            elif p.endswith(OBJECT_OR_NULL):
                t |= {"object", "null"}
            elif p.endswith(BOOL_OR_NULL):
                t |= {"bool", "null"}
            elif t <= {"float", "null"}:
                t |= {"float", "null"}
                if name == "bench-llama-bench":  # llama-bench's own numbers: 4000 prints as an int
                    t.add("int")
        if p.startswith(ABSENT_UNDER.get(name, ("\0",))):
            t.add("absent")
        merged[p] = sorted(t)
    for p, extra in UNIONS.get(name, {}).items():
        merged[p] = sorted(set(merged.get(p, [])) | set(extra))


# ----------------------------------------------------------------------------- shapes

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
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    raise TypeError(f"not JSON: {type(v).__name__}")


def shape(v: Any, path: str = "$", out: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """{key path: JSON types seen there}, recursively (list elements share the path `...[]`)."""
    out = {} if out is None else out
    out.setdefault(path, set()).add(_type(v))
    if isinstance(v, dict):
        for k, x in v.items():
            shape(x, f"{path}.{'*' if path in MAPS else k}", out)
    elif isinstance(v, list):
        for x in v:
            shape(x, f"{path}[]", out)
    return out


def order(v: Any, path: str = "$", out: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """{object path: its keys in printed order} (an object seen at a path again adds the keys it adds)."""
    out = {} if out is None else out
    if isinstance(v, dict) and path not in MAPS:
        keys = out.setdefault(path, [])
        keys.extend(k for k in v if k not in keys)
        for k, x in v.items():
            order(x, f"{path}.{k}", out)
    elif isinstance(v, list):
        for x in v:
            order(x, f"{path}[]", out)
    return out


def _get(doc: Any, path: str) -> Any:
    """The value at a path without `[]` (indices as `.0`)."""
    cur = doc
    for part in path.removeprefix("$").split(".")[1:]:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def check(name: str, outputs: list[Any], value_paths: list[str]) -> None:
    """Compare the outputs (several runs of one command) with the golden file; IMP_GGUF_REGEN_GOLDEN=1
    writes it instead."""
    seen: dict[str, set[str]] = {}
    for doc in outputs:
        for p, types in shape(doc).items():
            seen.setdefault(p, set()).update(types)
    values = {p: _get(outputs[0], p) for p in value_paths}
    keys = order(outputs[0])
    file = GOLDEN / f"{name}.json"
    if REGEN:
        merged = {p: sorted(t) for p, t in seen.items()}
        _loosen(name, merged)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({"shape": dict(sorted(merged.items())), "values": values, "order": keys}, indent=1,
                                   ensure_ascii=False) + "\n")
        return
    golden = json.loads(file.read_text())
    want: dict[str, list[str]] = golden["shape"]
    extra = sorted(p for p in seen if p not in want)
    assert not extra, f"{name}: paths the golden file does not have: {extra}"
    wrong = {p: (sorted(t), want[p]) for p, t in seen.items() if not t <= set(want[p])}
    assert not wrong, f"{name}: types differ (seen, golden): {wrong}"
    missing = sorted(p for p, t in want.items() if p not in seen and "absent" not in t)
    assert not missing, f"{name}: paths no longer printed: {missing}"
    assert values == golden["values"], f"{name}: pinned values differ"
    for p, ks in keys.items():  # keys print in the same order (a key that may be missing keeps its place)
        want_order = [k for k in golden["order"].get(p, []) if k in ks]
        assert ks == want_order, f"{name}: the keys of {p} print in another order"


# ----------------------------------------------------------------------------- fixtures

def _paths(result: Any) -> tuple[Path, Path]:
    """A conversion's (model, mmproj), whether convert() returns a mapping or a typed value."""
    if isinstance(result, dict):
        return Path(result["model"]), Path(result["mmproj"])
    return Path(result.model), Path(result.mmproj)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundled tiny Imp converted to F16, and a held-out one-shape scene."""
    import random

    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp import data as D
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    root = tmp_path_factory.mktemp("json-contract")
    image = root / "scene.png"
    D.render(D.random_scene(random.Random("conversation-test"), 1)).save(image)
    model, mmproj = _paths(convert(default_checkpoint(), root / "f16", outtype="f16"))
    return {"ckpt": default_checkpoint(), "model": model, "mmproj": mmproj, "image": image, "root": root}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> Any:
    from imp_gguf.cli.main import main

    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == code, cap.err[-2000:]
    return json.loads(cap.out)


def _run(tiny: dict[str, Any], *extra: str) -> list[str]:
    return ["run", "-m", str(tiny["model"]), "--mmproj", str(tiny["mmproj"]), "--image", str(tiny["image"]),
            "-n", "8", "-t", "2", "--json", *extra]


# ----------------------------------------------------------------------------- run

RUN_VALUES = ["$.backend", "$.answer", "$.turns.0.question", "$.turns.0.answer", "$.timings.prompt_tokens",
              "$.timings.decode_tokens"]


def test_run_one_question(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, _run(tiny, "-p", Q_SHAPE))
    check("run", [out], [*RUN_VALUES, "$.turns.0.timings.cached_tokens"])


def test_run_conversation(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, _run(tiny, "-p", Q_SHAPE, "-p", Q_COLOUR))
    check("run-conversation", [out], [*RUN_VALUES, "$.turns.1.question", "$.turns.1.answer",
                                      "$.turns.1.timings.cached_tokens", "$.turns.1.timings.prompt_tokens",
                                      "$.turns.1.timings.encode_ms"])


@pytest.mark.slow
def test_run_cli_backend(tiny: dict[str, Any], host_tools: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, _run(tiny, "-p", Q_SHAPE, "--backend", "cli"))
    check("run-cli", [out], ["$.backend", "$.answer", "$.turns.0.question", "$.timings.decode_tokens"])


# ----------------------------------------------------------------------------- bench

def _bench(tiny: dict[str, Any], *extra: str) -> list[str]:
    return ["bench", "-m", str(tiny["model"]), "--mmproj", str(tiny["mmproj"]), "--image", str(tiny["image"]),
            "--runs", "1", "--threads", "1", "--n-gen", "8", "--json", *extra]


ROW_VALUES = ["protocol", "model_filename", "mmproj_filename", "model_type", "n_threads", "n_gen", "n_text_tokens",
              "n_image_tokens", "image_size", "device_kind", "emulated", "passed", "type_k", "type_v",
              "flash_attn_flag", "cpu_mask", "cpu_strict", "load_mode", "build_commit", "backends", "target_tps"]


def _row_values(prefix: str, keys: list[str]) -> list[str]:
    return [f"{prefix}.{k}" for k in keys]


@pytest.mark.slow
def test_bench_paper(tiny: dict[str, Any], host_tools: dict[str, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "rows.json"
    rows = _json(capsys, _bench(tiny, "--out", str(out_file)))
    assert json.loads(out_file.read_text()) == rows  # --out writes what --json prints
    check("bench-paper", [rows], [*_row_values("$.0", [*ROW_VALUES, "n_prompt", "n_depth", "runs", "warmup_runs",
                                                       "question"]),
                                  "$.0.soc_choice", "$.0.paper.decode_tps", "$.0.paper.source"])


@pytest.mark.slow
def test_bench_llama_bench(tiny: dict[str, Any], host_tools: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, _bench(tiny, "--protocol", "llama-bench", "--no-bandwidth"))
    check("bench-llama-bench", [rows], [*_row_values("$.0", [*ROW_VALUES, "n_prompt", "n_depth"]),
                                        *_row_values("$.1", ["n_prompt", "n_gen", "n_depth"]),
                                        "$.0.soc_choice"])


@pytest.mark.slow
def test_bench_followup(tiny: dict[str, Any], host_tools: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, _bench(tiny, "--protocol", "followup", "--no-bandwidth"))
    check("bench-followup", [rows], [*_row_values("$.0", [*ROW_VALUES[:-1], "n_ctx", "question", "followup_question",
                                                          "followup_text_tokens", "paper_prediction", "followup_goal",
                                                          "runs"]), "$.0.soc_choice"])


@pytest.mark.slow
def test_bench_sweep(tiny: dict[str, Any], host_tools: dict[str, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "profile.json"
    argv = _bench(tiny, "--no-bandwidth", "--profile-out", str(profile), "--sweep", "threads=1", "fa=on,off")
    del argv[argv.index("--threads"):argv.index("--threads") + 2]  # the sweep sets them
    out = _json(capsys, argv)
    written = json.loads(profile.read_text())
    assert written == out["profile"]  # the file is what --json shows
    check("bench-sweep", [out], [*_row_values("$.rows.0", [*ROW_VALUES[:-1], "sweep_point"]), "$.rows.1.sweep_point",
                                 "$.rows.0.soc_choice", "$.sweep.0.point", "$.sweep.0.args", "$.sweep.1.args",
                                 "$.profile.imp_gguf_profile", "$.profile.device_kind", "$.profile.protocol",
                                 "$.profile.model_filename", "$.profile.emulated", "$.profile.soc"])


# ----------------------------------------------------------------------------- bundle, runtime

@pytest.mark.slow
def test_bundle_host(tiny: dict[str, Any], host_tools: dict[str, Path], web_ui, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for name, flags in (("b", []), ("no-ui", ["--no-ui"])):  # with llama.cpp's web UI (built first), without
        out = _json(capsys, ["bundle", str(tmp_path / name), "-m", str(tiny["model"]), "--mmproj",
                             str(tiny["mmproj"]), "--target", "host", "--json", *flags])
        manifest = json.loads((tmp_path / name / "bundle.json").read_text())
        assert {k: v for k, v in out.items() if k not in ("folder", "tarball")} == manifest
        outs.append(out)
    assert outs[0]["web_ui"]["key"] == web_ui.key and outs[1]["web_ui"]["folder"] is None
    # the files a bundle holds, by name (the web UI's own names are its build's: only their folder is pinned)
    model, mmproj = Path(tiny["model"]).name, Path(tiny["mmproj"]).name
    assert sorted(k for k in outs[1]["sha256"]) == sorted(k for k in outs[0]["sha256"] if not k.startswith("ui/")) == [
        "README.txt", "bin/llama-bench", "bin/llama-mtmd-cli", "bin/llama-perplexity", "bin/llama-quantize",
        "bin/llama-server", "chat.sh", f"models/{model}", f"models/{mmproj}", "run.sh", "serve.sh"]
    assert "ui/index.html" in outs[0]["sha256"]
    check("bundle", outs, ["$.target", "$.llama_cpp_python", "$.commit", "$.patches", "$.model", "$.mmproj",
                           "$.tuning", "$.server_memory_budget_mb"])


@pytest.mark.slow
def test_runtime_where_and_build(host_tools: dict[str, Path], web_ui, capsys: pytest.CaptureFixture[str]) -> None:
    where = _json(capsys, ["runtime", "where", "--target", "host", "--json"])
    assert where["ui"]["key"] == web_ui.key  # the UI is built (the fixture), so where names it
    built = _json(capsys, ["runtime", "build", "--target", "host", "--json"])  # reused: the cache holds it
    assert built["reused"] is True and built["build_dir"] == where["build_dir"]
    values = ["$.target", "$.reused", "$.commit", "$.flag_hash", "$.defines", "$.patches"]
    check("runtime-where", [where], values)
    check("runtime-build", [built], values)


def test_runtime_build_termux(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["runtime", "build", "--target", "termux", "--json"])
    check("runtime-build-termux", [out], ["$.target", "$.built", "$.script"])


# ----------------------------------------------------------------------------- verify, eval (PyTorch)

@pytest.mark.slow
def test_verify(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = _json(capsys, ["verify", str(tiny["ckpt"]), str(tiny["model"]), str(tiny["mmproj"]), "-t", "2", "--json"])
    check("verify", [out], ["$.variant", "$.tokenizer_mismatches", "$.problems", "$.ok", "$.image_prompt_top1_match"])


@pytest.mark.slow
def test_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "acc.png"
    out = _json(capsys, ["eval", "-r", "f16", "-n", "5", "--json", "--plot", str(plot), "--outdir", str(tmp_path / "g")])
    out_plain = _json(capsys, ["eval", "-r", "f16", "-n", "5", "--no-pytorch", "--json"])
    check("eval", [out], ["$.n", "$.seed", "$.accuracy", "$.by_kind", "$.agreement_with_pytorch"])
    check("eval-no-pytorch", [out_plain], ["$.n", "$.seed", "$.accuracy", "$.agreement_with_pytorch"])
