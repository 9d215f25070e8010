"""The CLI as people use it (issue #15): pipes, a second recipe in the same folder, dry runs that tell
the truth, one spelling rule for names, one meaning per flag, help that reads, numbers that agree.

Each numbered point of the issue has a test driven by a user's command line (main() as the console
script calls it, or a subprocess with a real pipe); the library pieces behind them are tested directly.
The bundled tiny Imp converts in well under a second, so these tests use it. The promises that need no
files are in tests/unit/test_cli_usability.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.cli.main import main
from imp_gguf.errors import BadInput
from imp_gguf.tiny_imp.bundled import default_checkpoint

from tests.unit.test_cli_usability import _commands

CLI = [sys.executable, "-m", "imp_gguf.cli.main"]
TINY = default_checkpoint()
IMAGE = TINY.parent / "images" / "shapes-01.png"


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    """A shell command line as a user types it; `imp-gguf` is this checkout's CLI."""
    exe = " ".join(CLI)
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd.replace("imp-gguf", exe)], capture_output=True,
                          text=True, timeout=600, **kw)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def q4(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny Imp at q4_k, through the CLI."""
    out = tmp_path_factory.mktemp("q4")
    from imp_gguf.quant.quantize import convert_and_quantize
    from imp_gguf.quant.recipes import load_recipe

    return convert_and_quantize(TINY, out, load_recipe("q4_k")).to_dict()


@pytest.fixture()
def other_ckpt(tmp_path: Path) -> Path:
    """The tiny Imp with a different config.json: same shapes, another checkpoint (another source hash)."""
    dst = tmp_path / "Other-Imp"
    shutil.copytree(TINY, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["imp_gguf_test_marker"] = 1
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ---------------------------------------------------------------- 1. model and mmproj belong together

def test_pair_check_library(q4, other_ckpt, tmp_path):
    from imp_gguf.convert import convert
    from imp_gguf.pair import check_pair
    from tests.plugins.runtime_tools import write_tiny_llama

    m, mm = q4["model"], q4["mmproj"]
    assert check_pair(m, mm).n_embd == 256
    with pytest.raises(BadInput, match="swapped"):
        check_pair(mm, m)
    with pytest.raises(BadInput, match="not an mmproj"):
        check_pair(m, m)
    with pytest.raises(BadInput, match="is an mmproj"):
        check_pair(mm, mm)
    narrow = write_tiny_llama(tmp_path / "narrow.gguf", n_embd=64)
    with pytest.raises(BadInput, match="projects to width 256 but narrow.gguf is 64 wide"):
        check_pair(narrow, mm)
    other = convert(other_ckpt, tmp_path / "other", outtype="f16").to_dict()
    with pytest.raises(BadInput, match="different checkpoints"):
        check_pair(m, other["mmproj"])
    with pytest.raises(BadInput, match="does not exist"):
        check_pair(tmp_path / "nope.gguf", mm)


@pytest.mark.parametrize("argv", [
    ["bundle", "--model", "{mm}", "--mmproj", "{m}", "--target", "host", "{out}"],
    ["run", "-m", "{mm}", "--mmproj", "{m}", "--image", str(IMAGE), "-p", "What?"],
    ["bench", "--model", "{mm}", "--mmproj", "{m}"],
    ["verify", str(TINY), "{mm}", "{m}"],
])
def test_every_command_taking_a_pair_refuses_a_swap_before_any_work(argv, q4, tmp_path, capsys):
    args = [a.format(m=q4["model"], mm=q4["mmproj"], out=tmp_path / "bundle") for a in argv]
    assert main(args) == 2
    assert "swapped" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no bundle, nothing written


# ---------------------------------------------------------------- 2. results on stdout

def test_inspect_pipes_to_grep(q4):
    proc = sh(f"imp-gguf inspect {q4['model']} | grep chat_template")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("tokenizer.chat_template")
    proc = sh(f"imp-gguf inspect {q4['model']} | grep general.file_type")
    assert "Q4_K_M" in proc.stdout  # 11: the file type's name, not only its number
    assert json.loads(sh(f"imp-gguf inspect {q4['model']} --json").stdout)["file_type"] == "Q4_K_M"


def test_recipes_list_and_show_redirect_to_a_file(tmp_path, q4):
    f = tmp_path / "f"
    assert sh(f"imp-gguf recipes list > {f}").returncode == 0
    assert "q4_k" in f.read_text() and "q6_k" in f.read_text()
    proc = sh(f"imp-gguf recipes show q4_k --plan {q4['model']}")
    assert proc.returncode == 0 and "output.weight" in proc.stdout and "Q4_K_M" in proc.stdout


def test_convert_and_demo_results_on_stdout_progress_on_stderr(tmp_path, capsys):
    assert main(["convert", str(TINY), "-o", str(tmp_path / "c"), "--quant", "q4_k"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^wrote .*Q4_K_M\.gguf", out, re.M) and re.search(r"^wrote .*mmproj.*Q8_0\.gguf", out, re.M)
    assert "wrote" not in err
    assert main(["demo", "-o", str(tmp_path / "d")]) == 0
    out, err = capsys.readouterr()
    assert "model:" in out and "Q: " in out and "A: " in out and "correct through llama.cpp" in out
    assert "checkpoint:" in err and "Q: " not in err


# ---------------------------------------------------------------- 3. a second recipe into the same folder

def test_second_recipe_reuses_the_identical_mmproj(tmp_path, capsys, other_ckpt):
    out = tmp_path / "out1"
    assert main(["convert", str(TINY), "--quant", "q4_k", "-o", str(out)]) == 0
    mm = next(out.glob("mmproj-*Q8_0.gguf"))
    before = (mm.read_bytes(), mm.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(["convert", str(TINY), "--quant", "q4_0", "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mmproj_reused"] is True and res["mmproj"] == str(mm)
    assert [o["action"] for o in res["outputs"]] == ["write", "reuse"]
    assert (mm.read_bytes(), mm.stat().st_mtime_ns) == before
    assert main(["convert", str(TINY), "--quant", "q8_0", "-o", str(out)]) == 0
    assert "reused" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir())[-1] == mm.name and len(list(out.iterdir())) == 4
    # another checkpoint's mmproj under the same name is an error, and stays as it was
    renamed = tmp_path / "renamed"
    assert main(["convert", str(other_ckpt), "--quant", "q4_k", "-o", str(renamed),
                 "--model-name", "Tiny-Imp-v1.5-56px"]) == 0
    capsys.readouterr()
    assert main(["convert", str(TINY), "--quant", "q4_0", "-o", str(renamed)]) == 2
    assert "another mmproj" in one_error_line(capsys.readouterr().err)


def test_mmproj_reuse_decision(q4, other_ckpt, tmp_path):
    from imp_gguf.convert import plan_conversion
    from imp_gguf.quant.quantize import mmproj_reuse
    from imp_gguf.quant.recipes import load_recipe

    sha = plan_conversion(TINY, tmp_path).ckpt.source_sha256()
    mm = Path(q4["mmproj"])
    assert mmproj_reuse(mm, sha, load_recipe("q4_0").mmproj) == "reuse"
    assert mmproj_reuse(mm, sha, load_recipe("f16").mmproj) == "different"  # another type
    other = plan_conversion(other_ckpt, tmp_path).ckpt.source_sha256()
    assert mmproj_reuse(mm, other, load_recipe("q4_0").mmproj) == "different"
    assert mmproj_reuse(tmp_path / "none.gguf", sha, load_recipe("q4_0").mmproj) == "absent"


# ---------------------------------------------------------------- 4. dry runs that tell the truth

def test_quant_dry_run_lists_the_final_files_with_the_real_runs_keys(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["convert", str(TINY), "--quant", "Q4_K_M", "-o", str(out), "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert not out.exists() or list(out.iterdir()) == []
    assert main(["convert", str(TINY), "--quant", "Q4_K_M", "-o", str(out), "--json"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert set(dry) == set(real) | {"dry_run"} and dry["dry_run"] is True and "dry_run" not in real
    assert (dry["model"], dry["mmproj"]) == (real["model"], real["mmproj"])
    assert dry["model"].endswith("-Q4_K_M.gguf") and dry["mmproj"].endswith("-Q8_0.gguf")
    assert dry["tensor_types"] == real["tensor_types"] and dry["fallbacks"] == real["fallbacks"]
    for key in ("lm_bytes", "mmproj_bytes"):
        assert abs(dry[key] - real[key]) < 0.05 * real[key], key  # estimate: tensor data, without metadata
    # the real result names only files that exist (no temporary F16 paths)
    paths = [v for v in _strings(real) if v.startswith(str(tmp_path))]
    assert paths and all(Path(p).exists() for p in paths), paths
    # a second dry run says what would block the run, and exits as the run would
    assert main(["convert", str(TINY), "--quant", "q4_k", "-o", str(out), "--dry-run", "--json"]) == 2
    cap = capsys.readouterr()
    again = json.loads(cap.out)
    assert [o["action"] for o in again["outputs"]] == ["blocked", "reuse"]
    assert "exists; pass --force" in again["blocked"][0] and "dry run" in one_error_line(cap.err)
    assert main(["convert", str(TINY), "--quant", "q4_0", "-o", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^would write .*-Q4_0\.gguf  \(Q4_0, ~1\.\d MB\)$", text, re.M)
    assert re.search(r"^would reuse .*mmproj-.*-Q8_0\.gguf", text, re.M)


def test_plain_dry_run_has_the_real_runs_keys(tmp_path, capsys):
    assert main(["convert", str(TINY), "-o", str(tmp_path), "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == []
    assert main(["convert", str(TINY), "-o", str(tmp_path), "--json"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert set(dry) == set(real) | {"dry_run"}
    assert [o["path"] for o in dry["outputs"]] == [o["path"] for o in real["outputs"]] == [real["model"], real["mmproj"]]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


# ---------------------------------------------------------------- 5. recipes list helps to choose

def test_recipes_list_fits_80_columns_and_has_the_figures(capsys):
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert re.search(r"^\* q4_k +Q4_K_M +Q8_0 +5\.1\d +1\.79 +5\.8 +1\.88 +0\.0\d", out, re.M)  # default, bpw, GB, tok/s, MB, KL
    for name in ("q5_k", "q6_k", "q4_0_pure"):
        assert re.search(rf"^  {name} ", out, re.M), name
    assert "Q4_K_M or Q4_K = q4_k" in out
    assert main(["recipes", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["recipes"]}
    assert rows["q4_k"]["default"] and rows["q6_k"]["ftype"] == "Q6_K" and rows["q5_k"]["ftype"] == "Q5_K_M"
    assert rows["q4_0_pure"]["pure"] and rows["q4_0_pure"]["bpw_3b"] == 4.5


def test_pure_q4_0_is_q4_0_everywhere(tmp_path, capsys):
    assert main(["convert", str(TINY), "--quant", "q4_0_pure", "-o", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"].endswith("-Q4_0-PURE.gguf")
    assert set(res["tensor_types"]) == {"Q4_0", "F32"}  # every matrix Q4_0 (token embedding and output too)


# ---------------------------------------------------------------- 6. names

@pytest.mark.parametrize("spelling, recipe", [("Q4_K", "q4_k"), ("q4_k_m", "q4_k"), ("Q4_K_M", "q4_k"),
                                              ("q4_K", "q4_k"), ("15", "q4_k"), ("Q3_K", "q3_k"), ("F16", "f16"),
                                              ("Q5_K", "q5_k"), ("q6_k", "q6_k"), ("Q5_K_S", "q5_k_s")])
def test_llama_quantize_names_and_aliases(spelling, recipe):
    from imp_gguf.quant.recipes import load_recipe

    assert load_recipe(spelling).name == recipe


def test_names_case_none_and_did_you_mean(tmp_path, capsys):
    assert main(["convert", str(TINY), "-o", str(tmp_path / "a"), "--outtype", "F16", "--dry-run"]) == 0
    assert "-F16.gguf  (F16" in capsys.readouterr().out
    assert main(["convert", str(TINY), "-o", str(tmp_path / "b"), "--quant", "none", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0].endswith("-F16.gguf")
    assert main(["convert", str(TINY), "--quant", "q4_kk", "--dry-run"]) == 2
    assert "did you mean q4_k?" in one_error_line(capsys.readouterr().err)
    assert main(["convert", str(TINY), "--outtype", "f61", "--dry-run"]) == 2
    assert "did you mean f16?" in one_error_line(capsys.readouterr().err)
    for argv, hint in ((["run", "-m", "m", "--mmproj", "mm", "--image", "i", "-p", "q", "--backend", "pyhton"], "python"),
                       (["runtime", "where", "--target", "linux-arm"], "linux-arm64"),
                       (["fixtures", "tiny", "Imp-v1.5-3B-169", str(tmp_path / "f")], "Imp-v1.5-3B-196")):
        assert main(argv) == 2
        assert f"did you mean {hint}?" in one_error_line(capsys.readouterr().err)
    assert main(["demo", "-o", str(tmp_path / "d"), "--quant", "NONE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "f16"


# ---------------------------------------------------------------- 7. a missing path is a missing folder

def test_missing_relative_path_is_a_missing_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(*a, **kw):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "Imp-v1.5-3B-196").mkdir(parents=True)
    assert main(["convert", "models/Imp-v1.5-3B-169", "--dry-run"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith("error: models/Imp-v1.5-3B-169: no such checkpoint folder (did you mean models/Imp-v1.5-3B-196?)")
    assert "if you meant the hub repo models/Imp-v1.5-3B-169" in err and "network" in err
    assert main(["convert", "./models/nothing", "--dry-run"]) == 2
    assert "hub" not in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- 8. one meaning per flag

def test_bench_json_is_a_switch_and_out_takes_the_file(tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "m.gguf"), "--mmproj", str(tmp_path / "mm.gguf"), "--json",
                 "--out", str(tmp_path / "rows.json")]) == 2
    assert "m.gguf does not exist" in one_error_line(capsys.readouterr().err)


def test_compare_outdir_and_its_old_spelling(capsys):
    from imp_gguf.cli.main import app
    import typer

    compare = typer.main.get_command(app).commands["recipes"].commands["compare"]
    out = next(p for p in compare.params if "--outdir" in p.opts)
    old = next(p for p in compare.params if "--out" in p.opts)
    assert "-o" in out.opts and old.hidden


def test_verbose_after_the_subcommand(capsys):
    assert main(["recipes", "show", "nope", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown recipe 'nope'" in err
    assert main(["recipes", "show", "nope"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- 9. contradictions are refused

@pytest.mark.parametrize("extra, needle", [
    (["--outtype", "q8_0", "--quant", "q4_k"], "contradicts --quant"),
    (["--keep-intermediate"], "--keep-intermediate needs --quant"),
    (["--outtype", "q4_k"], "use --quant q4_k"),
    (["--outtype", "Q4_K_M"], "use --quant q4_k_m"),
])
def test_contradicting_flags(extra, needle, tmp_path, capsys):
    assert main(["convert", str(TINY), "-o", str(tmp_path), *extra]) == 2
    assert needle in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 10. help that reads

@pytest.mark.parametrize("columns", [80, 120])
def test_every_help_text_reads(columns, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(columns))
    width = min(columns, 120) - 2
    for path, cmd in [([], None), *_commands()]:
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        where = " ".join(path) or "imp-gguf"
        usage = text.splitlines()[0]
        assert "{" not in usage and "<" not in usage, f"{where}: {usage}"
        assert not re.search(r"<(str|int|float|path|list\[)", text, re.I), f"{where}: type labels"
        for line in text.splitlines():
            assert len(line) <= width + 2, f"{where} at {columns}: {line!r}"
        _paragraphs_are_filled(text, width, where)
        if cmd is not None:
            for p in cmd.params:
                if getattr(p, "opts", None) and not getattr(p, "hidden", False) and p.param_type_name == "option":
                    assert p.help, f"{where}: {p.opts} has no help"
            # every bracket written in a help text is printed (no markup swallows "[reference]")
            flat = " ".join(text.split())
            sources = [cmd.help or ""] + [p.help or "" for p in cmd.params if not getattr(p, "hidden", False)]
            for bracket in re.findall(r"\[[^\]\s]*\]", " ".join(" ".join(src.split()) for src in sources)):
                assert bracket in flat, f"{where}: {bracket} lost"
    assert main(["verify", "--help"]) == 0
    assert "pip install 'imp-gguf[reference]'" in " ".join(capsys.readouterr().out.split())
    assert main(["eval", "--help"]) == 0
    assert "the [reference] extra" in " ".join(capsys.readouterr().out.split())


def _paragraphs_are_filled(text: str, width: int, where: str) -> None:
    """In the description (above Arguments/Options), every line of a paragraph but its last is full: the
    next word would not have fitted. A line broken mid-sentence by a hard newline fails this."""
    desc = text.split("\nArguments:")[0].split("\nOptions:")[0].split("\nCommands:")[0]
    paragraphs = re.split(r"\n\s*\n", desc)
    for para in paragraphs[1:]:  # [0] is the usage line
        lines = para.splitlines()
        if not lines or not lines[0].startswith("  ") or lines[0].startswith("    "):
            continue  # \b example blocks are kept as written
        for line, nxt in zip(lines, lines[1:]):
            assert len(line) + 1 + len(nxt.split()[0]) > width, f"{where}: line broken early: {line!r}"


# ---------------------------------------------------------------- 11. numbers that agree

def test_run_prints_the_numbers_its_json_holds(q4, capsys):
    args = ["run", "-m", q4["model"], "--mmproj", q4["mmproj"], "--image", str(IMAGE), "-p",
            "What colour is the background?", "-n", "12", "-t", "1"]
    assert main([*args, "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["timings"]
    # the single-turn keys scripts read, and what a first turn reused of a cache: nothing
    assert set(t) == {"encode_ms", "prefill_ms", "prompt_tokens", "decode_ms", "decode_tokens", "decode_tps",
                      "cached_tokens"}
    assert t["cached_tokens"] == 0
    assert t["decode_tps"] == round(1000 * t["decode_tokens"] / t["decode_ms"], 1)
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    m = re.search(r"image encode ([\d.]+) ms, prompt (\d+) tokens, text prefill ([\d.]+) ms, (\d+) tokens in "
                  r"([\d.]+) ms \(([\d.]+) tok/s\)", err)
    assert m, err
    assert int(m.group(2)) == t["prompt_tokens"] and int(m.group(4)) == t["decode_tokens"]
    assert round(1000 * int(m.group(4)) / float(m.group(5)), 1) == float(m.group(6))


@pytest.mark.slow
def test_run_cli_backend_reports_timings(q4, host_tools, capsys):
    assert main(["run", "-m", q4["model"], "--mmproj", q4["mmproj"], "--image", str(IMAGE), "-p",
                 "What colour is the background?", "-n", "12", "-t", "1", "--backend", "cli", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["timings"]
    assert t["encode_ms"] > 0 and t["prompt_tokens"] > 16 and t["decode_tokens"] > 0 and t["decode_tps"] > 0
