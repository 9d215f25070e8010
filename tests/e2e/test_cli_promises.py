"""What the help and the README promise, the tool does (issue #22): each point typed as a user types it.

The commands run through a real shell (`sh`), so pipes, redirections and a stderr that is not a terminal
are the ones a user or a CI log has.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_cli_usability import CLI, IMAGE, TINY, one_error_line, sh


@pytest.fixture(scope="module")
def q4(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from imp_gguf.quant.quantize import convert_and_quantize
    from imp_gguf.quant.recipes import load_recipe

    return convert_and_quantize(TINY, tmp_path_factory.mktemp("q4"), load_recipe("q4_k")).to_dict()


# ---------------------------------------------------------------- 1. -q/--quiet everywhere; the dry run names defaults

@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_works_on_every_command(where, q4, tmp_path):
    q = lambda cmd: f"imp-gguf -q {cmd}" if where == "before" else f"imp-gguf {cmd} -q"  # noqa: E731
    cmds = [f"convert {TINY} -o {tmp_path / 'c'} --quant q4_k",
            f"convert {TINY} -o {tmp_path / 'f'} --dry-run",
            f"run -m {q4['model']} --mmproj {q4['mmproj']} --image {IMAGE} -p 'How many shapes are there?' -n 8",
            f"inspect {q4['model']}",
            "recipes list",
            f"recipes show q4_k --plan {q4['model']}"]
    for cmd in cmds:
        proc = sh(q(cmd))
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert proc.stdout.strip(), cmd  # the result is still printed
        assert proc.stderr == "", (cmd, proc.stderr)  # no progress, notes or timings
    # convert's result under --quiet is the bare paths, for xargs
    assert sh(q(f"convert {TINY} -o {tmp_path / 'c2'}")).stdout.split() == \
        [str(tmp_path / "c2" / "Tiny-Imp-v1.5-2.9M-56px-F16.gguf"), str(tmp_path / "c2" / "mmproj-Tiny-Imp-v1.5-2.9M-56px-F16.gguf")]
    # an error still says what is wrong, in one line
    proc = sh(q(f"inspect {tmp_path / 'nope.gguf'}"))
    assert proc.returncode == 2 and "does not exist" in one_error_line(proc.stderr)


def test_quiet_is_a_root_flag_but_not_taken_from_option_values():
    import typer

    from imp_gguf.cli._common import hoist_flags
    from imp_gguf.cli.main import app

    root = typer.main.get_command(app)
    assert hoist_flags(["run", "-q", "-v", "-m", "m"], root) == ["--verbose", "--quiet", "run", "-m", "m"]
    assert hoist_flags(["run", "-p", "-q", "-m", "m"], root) == ["run", "-p", "-q", "-m", "m"]  # the question "-q"
    proc = sh("imp-gguf --help")
    assert "-q, --quiet" in proc.stdout and "-v, --verbose" in proc.stdout


@pytest.mark.parametrize("quant", [[], ["--quant", "q4_k"]])
def test_dry_run_text_names_every_default_its_json_names(quant, tmp_path):
    args = " ".join([str(TINY), "-o", str(tmp_path), "--dry-run", *quant])
    as_json = json.loads(sh(f"imp-gguf convert {args} --json").stdout)
    assert as_json["defaults"], "the tiny Imp's config leaves rope_theta to ImpConfig's default"
    proc = sh(f"imp-gguf convert {args}")
    assert proc.returncode == 0, proc.stderr
    for key, d in as_json["defaults"].items():
        assert f"default: {key} = {d['value']} (not in config.json; from {d['from']})" in proc.stderr


# ---------------------------------------------------------------- 2. "(default: all cores)" and nothing else

def test_all_cores_options_show_no_zero_default():
    for cmd in ("bench --help", "runtime build --help", "run --help", "verify --help", "recipes compare --help"):
        text = " ".join(sh(f"COLUMNS=200 imp-gguf {cmd}").stdout.split())
        assert "all cores" in text, cmd
        assert "[default: 0]" not in text, cmd


# ---------------------------------------------------------------- 3. a failed check: exit 3, one line

@pytest.fixture(scope="module")
def zeros(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The tiny Imp with every weight zero, converted: its PyTorch outputs are constant."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    from imp_gguf.convert import convert

    root = tmp_path_factory.mktemp("zeros")
    ckpt = root / "Zeros-Imp"
    import shutil

    shutil.copytree(TINY, ckpt)
    for f in ckpt.glob("*.safetensors"):
        save_file({k: torch.zeros_like(v) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
    r = convert(ckpt, root / "gguf", outtype="f16")
    return ckpt, r.model, r.mmproj


def test_verify_on_constant_outputs_exits_3_saying_why_in_one_line(zeros):
    ckpt, model, mmproj = zeros
    proc = sh(f"imp-gguf verify {ckpt} {model} {mmproj}")
    assert proc.returncode == 3, proc.stderr
    line = one_error_line(proc.stderr)  # no NaN warnings from numpy, no library chatter: one line
    assert "parity failed: undefined" in line and "constant" in line
    assert "nan" not in proc.stdout.lower() and "undefined" in proc.stdout
    report = json.loads(sh(f"imp-gguf verify {ckpt} {model} {mmproj} --json").stdout)
    assert report["ok"] is False and report["text_logits_max_err_over_std"] is None and report["problems"]


# ---------------------------------------------------------------- 4. --json is JSON, termux too

def test_termux_json_is_json():
    proc = sh("imp-gguf runtime build --target termux --json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["target"] == "termux" and data["built"] is False and "cmake --build" in data["script"]


# ---------------------------------------------------------------- 5. fallbacks once; progress lines in a log

def test_quant_fallbacks_are_one_summary_line_and_progress_is_lines(tmp_path):
    proc = sh(f"imp-gguf convert {TINY} -o {tmp_path / 'a'} --quant q4_k")  # stderr is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    notes = [ln for ln in err if "note:" in ln]
    assert len(notes) == 1, err
    assert ("3 tensors written wider than the recipe asks" in notes[0]
            and "v.blk.{0-2}.ffn_down.weight (mmproj, rows of 720) Q8_0 -> F16" in notes[0]
            and re.search(r"\+0\.\d\d MB", notes[0]) and "--verbose lists them" in notes[0])
    assert not any("needs rows divisible" in ln for ln in err)
    assert any(re.match(r"  converting to F16: [\d.]+ / 8\.9 MB \(\d+%\), \d+ s$", ln) for ln in err), err
    assert any(ln.startswith("  quantizing to Q4_K_M + Q8_0 mmproj") for ln in err), err
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr  # lines, not a redrawn bar
    verbose = sh(f"imp-gguf convert {TINY} -o {tmp_path / 'b'} --quant q4_k -v").stderr
    assert len(re.findall(r"v\.blk\.\d\.ffn_down\.weight: Q8_0 needs rows divisible by its block, 720", verbose)) == 3


def test_plain_convert_prints_progress_lines_in_a_log(tmp_path):
    log = tmp_path / "log"
    assert sh(f"imp-gguf convert {TINY} -o {tmp_path / 'o'} 2> {log}").returncode == 0
    assert re.search(r"^  writing F16: [\d.]+ / 8\.9 MB", log.read_text(), re.M), log.read_text()


# ---------------------------------------------------------------- 6. the README's grep shows the whole template

def test_readme_grep_shows_the_whole_template_and_key_prints_it(q4):
    from imp_gguf.gguf_info import read_gguf_meta

    template = read_gguf_meta(q4["model"])["tokenizer.chat_template"]
    assert len(template) > 200  # long enough that a cut would show
    proc = sh(f"imp-gguf inspect {q4['model']} | grep chat_template")  # the README's line, as written
    assert proc.returncode == 0
    value = proc.stdout.strip().split(" = ", 1)[1]
    assert value == template.replace("\n", "\\n") and not value.endswith("...")
    proc = sh(f"imp-gguf inspect {q4['model']} --key tokenizer.chat_template")
    assert proc.returncode == 0 and proc.stdout == template + "\n"
    proc = sh(f"imp-gguf inspect {q4['model']} --key tokenizer.chat_templat")
    assert proc.returncode == 2 and "did you mean tokenizer.chat_template" in one_error_line(proc.stderr)


# ---------------------------------------------------------------- 8. recipes list tells what was measured

def test_recipes_list_reports_the_kl_ladder_with_its_spread_and_no_accuracy_tie():
    from imp_gguf.quant.catalog import BASELINE, LADDER

    base = json.loads(BASELINE.read_text())["recipes"]
    proc = sh("imp-gguf recipes list")
    text = " ".join(proc.stdout.split())
    assert f"KL order: {' < '.join(LADDER)}, as their bits per weight, overall and in each of 4 seeds" in text
    assert "accuracy cannot separate the recipes" in text
    assert " acc" not in proc.stdout.splitlines()[0]  # no column that reads as a measured tie
    for name in LADDER:
        seeds = base[name]["kl_seeds"].values()
        row = next(ln for ln in proc.stdout.splitlines() if ln[2:].startswith(f"{name} "))
        assert f"±{(max(seeds) - min(seeds)) / 2:.4f}" in row  # the spread over seeds
    listing = json.loads(sh("imp-gguf recipes list --json").stdout)
    assert listing["kl_order"]["ordered"] and listing["kl_order"]["recipes"] == list(LADDER)


@pytest.mark.slow
def test_kl_ladder_on_the_tiny_imp_falls_as_bits_rise_in_every_seed(tmp_path):
    """Measured now, not read from the baseline: KL of the ladder by bits per weight, per seed, with its spread."""
    from imp_gguf.quant.catalog import BASELINE, LADDER

    # As typed, but with room for the held-out accuracy the tiny Imp adds (200 questions per recipe).
    cmd = (f"{' '.join(CLI)} recipes compare {TINY} --recipes {','.join(LADDER)} -o {tmp_path} --runs 1 -t 1 "
           f"--baseline {BASELINE} --json")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["recipe"]: r for r in json.loads(proc.stdout)["recipes"]}
    by_bits = sorted(LADDER, key=lambda n: -rows[n]["bpw"])
    assert by_bits == list(LADDER)
    seeds = list(rows[LADDER[0]]["kl_seeds"])
    assert len(seeds) >= 3
    for hi, lo in zip(by_bits, by_bits[1:]):
        assert rows[hi]["kl_mean"] < rows[lo]["kl_mean"], (hi, lo)
        for s in seeds:
            assert rows[hi]["kl_seeds"][s] < rows[lo]["kl_seeds"][s], (hi, lo, s)
    for r in rows.values():
        lo, hi = r["kl_spread"]
        assert lo <= r["kl_mean"] <= hi and lo < hi  # the spread is reported, and real
    md = (tmp_path / "report.md").read_text()
    assert "KL seeds" in md
