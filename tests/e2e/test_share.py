"""A converted folder made ready to share (`imp-gguf card`, `convert --card`): the model card and the
Modelfile list exactly the GGUFs present, stay consistent as recipes are added, and the Modelfile's Go
template renders conversations exactly as the GGUF's Jinja chat template does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gguf import Keys

from imp_gguf.chat_templates import TEMPLATES, render
from imp_gguf.gguf_info import open_reader
from imp_gguf.share.ollama import GO_TEMPLATES

CLI = [sys.executable, "-m", "imp_gguf.cli.main"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


# ---------------------------------------------------------------- a renderer for ollama's Go templates

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def _parse(src: str) -> list:
    """The subset the Modelfiles use: text, {{ .Field }}, if / else if / else / end, range, with
    conditions `.X`, `not .X` and `eq .X "text"`; {{- and -}} trim whitespace as in Go."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m[1]:
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            tokens.pop()
            text = text.lstrip()
        tokens.append(("text", text))
        tokens.append(("act", m[2]))
        if m[3]:
            tokens.append(("trim", ""))
        pos = m.end()
    tail = src[pos:]
    if tokens and tokens[-1][0] == "trim":
        tokens.pop()
        tail = tail.lstrip()
    tokens.append(("text", tail))

    def block(i: int) -> tuple[list, int, str]:
        body: list = []
        while i < len(tokens):
            kind, val = tokens[i]
            i += 1
            if kind == "text":
                body.append(("text", val))
            elif val == "end" or val == "else" or val.startswith("else if "):
                return body, i, val
            elif val.startswith("if "):
                branches, cond = [], val[3:]
                while True:
                    inner, i, stop = block(i)
                    branches.append((cond, inner))
                    if stop == "end":
                        break
                    cond = stop[8:] if stop.startswith("else if ") else "true"
                body.append(("if", branches))
            elif val.startswith("range "):
                inner, i, stop = block(i)
                assert stop == "end", stop
                body.append(("range", val[6:], inner))
            else:
                body.append(("value", val))
        return body, i, "eof"

    tree, _, stop = block(0)
    assert stop == "eof"
    return tree


def _value(expr: str, dot: dict[str, Any]) -> Any:
    expr = expr.strip()
    if expr == "true":
        return True
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.startswith("not "):
        return not _value(expr[4:], dot)
    if expr.startswith("eq "):
        a, b = re.fullmatch(r'eq (\.\w+) (".*")', expr).groups()
        return _value(a, dot) == _value(b, dot)
    assert re.fullmatch(r"\.\w+", expr), f"outside the subset: {expr!r}"
    return dot[expr[1:]]


def _exec(tree: list, dot: dict[str, Any]) -> str:
    out = []
    for node in tree:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            out.append(str(_value(node[1], dot)))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _value(cond, dot):
                    out.append(_exec(body, dot))
                    break
        elif node[0] == "range":
            for item in _value(node[1], dot):
                out.append(_exec(node[2], item))
    return "".join(out)


def render_ollama(template: str, messages: list[dict[str, str]]) -> str:
    """As ollama fills a template: .System the system messages' text, .Messages every message."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return _exec(_parse(template), {"System": system, "Messages": msgs})


CONVERSATIONS = [
    [{"role": "user", "content": "What is in the picture?"}],
    [{"role": "user", "content": "What colour is the square?"}, {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "And the circle?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Shape?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How many shapes?\nCount them."}],
]


def test_go_renderer_follows_go_semantics() -> None:
    """The small renderer itself: trimming markers, else-if chains and range, against known outputs."""
    t = '{{- if eq .Role "a" }}A{{ else if .X }}X{{ else }}Z{{ end -}}  \n {{ range .L }}[{{ .V }}]{{ end }}'
    assert _exec(_parse(t), {"Role": "a", "X": "", "L": [{"V": 1}, {"V": 2}]}) == "A[1][2]"
    assert _exec(_parse(t), {"Role": "b", "X": "y", "L": []}) == "X"
    assert _exec(_parse(t), {"Role": "b", "X": "", "L": []}) == "Z"
    assert _exec(_parse("a {{- .V }} b"), {"V": "!"}) == "a! b"


@pytest.mark.parametrize("name", sorted(GO_TEMPLATES))
def test_go_template_renders_as_the_jinja_template(name: str) -> None:
    for conv in CONVERSATIONS:
        assert render_ollama(GO_TEMPLATES[name], conv) == render(TEMPLATES[name], conv), conv
    assert set(GO_TEMPLATES) == set(TEMPLATES)  # every chat template family has its ollama form


# ---------------------------------------------------------------- the folder: card, Modelfile, LM Studio

def front_matter(card: str) -> dict[str, Any]:
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    out: dict[str, Any] = {}
    key = None
    for line in m[1].splitlines():
        if line.startswith("- "):
            out[key].append(line[2:])
        else:
            key, _, value = line.partition(": ")
            key = key.rstrip(":")
            out[key] = value if value else []
    return out


def table_files(card: str) -> list[str]:
    return re.findall(r"^\| `([^`]+\.gguf)` \|", card, re.M)


def modelfile_froms(text: str) -> list[str]:
    return re.findall(r"^FROM \./(.+)$", text, re.M)


def check_folder(out: Path) -> tuple[str, str]:
    """README.md and Modelfile name exactly the GGUFs present; Modelfile's pair exists and belongs together."""
    card, mf = (out / "README.md").read_text(), (out / "Modelfile").read_text()
    present = sorted(p.name for p in out.glob("*.gguf"))
    assert sorted(table_files(card)) == present
    froms = modelfile_froms(mf)
    assert len(froms) == 2 and set(froms) <= set(present) and froms[1].startswith("mmproj-"), froms
    from imp_gguf.pair import check_pair

    check_pair(out / froms[0], out / froms[1])
    return card, mf


@pytest.fixture
def source(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny Imp-v1.5-3B-196 with a model card stating its license, as a hub repo has."""
    src = tmp_path / "Imp-v1.5-3B-196"
    shutil.copytree(tiny_checkpoints["Imp-v1.5-3B-196"], src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Imp\n")
    return src


def test_folder_written_twice_stays_consistent(source: Path, tmp_path: Path) -> None:
    first = run("convert", str(source), "-o", "out", "--card", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert {f"wrote {Path('out') / 'README.md'}", f"wrote {Path('out') / 'Modelfile'}"} <= set(first.stdout.splitlines())
    out = tmp_path / "out"
    card, mf = check_folder(out)
    assert modelfile_froms(mf) == ["Imp-v1.5-3B-196-F16.gguf", "mmproj-Imp-v1.5-3B-196-F16.gguf"]
    fm = front_matter(card)
    assert fm["base_model"] == "MILVLG/Imp-v1.5-3B-196" and fm["base_model_relation"] == "quantized"
    assert fm["license"] == "apache-2.0" and fm["pipeline_tag"] == "image-text-to-text"
    assert {"gguf", "llama.cpp", "multimodal"} <= set(fm["tags"])
    for text in ("llama-server -m Imp-v1.5-3B-196-F16.gguf --mmproj mmproj-Imp-v1.5-3B-196-F16.gguf --jinja",
                 "llama-mtmd-cli -m Imp-v1.5-3B-196-F16.gguf", "--jinja", "ollama create", "imp-gguf bundle",
                 "LM Studio", "hf upload local/Imp-v1.5-3B-196-GGUF .",
                 "exactly 56 x 56 pixels", "pad it to a centred square with RGB (127, 127, 127)"):
        assert text in card, text

    # A second recipe added to the folder: both files regenerated, the recommended recipe now in the Modelfile.
    second = run("convert", str(source), "-o", "out", "--quant", "q4_k", "--card", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["card"]["recommended"] == "Imp-v1.5-3B-196-Q4_K_M.gguf"
    card, mf = check_folder(out)
    assert len(table_files(card)) == 4
    fm = front_matter(card)  # now read from the quantized model: llama.cpp's quantizer kept the source keys
    assert (fm["base_model"], fm["license"]) == ("MILVLG/Imp-v1.5-3B-196", "apache-2.0")
    assert modelfile_froms(mf) == ["Imp-v1.5-3B-196-Q4_K_M.gguf", "mmproj-Imp-v1.5-3B-196-Q8_0.gguf"]
    assert re.search(r"^\| `Imp-v1.5-3B-196-Q4_K_M.gguf` \| q4_k \(recommended\) \| Q4_K_M \|", card, re.M)
    assert re.search(r"^\| `mmproj-Imp-v1.5-3B-196-Q8_0.gguf` \| mmproj for `Imp-v1.5-3B-196-Q4_K_M.gguf` \|",
                     card, re.M)

    # Measured figures from `recipes compare`'s report.json, only for files as it measured them.
    q4, f16 = out / "Imp-v1.5-3B-196-Q4_K_M.gguf", out / "Imp-v1.5-3B-196-F16.gguf"
    report = {"recipes": [{"recipe": "q4_k", "model": str(q4), "lm_bytes": q4.stat().st_size, "kl_mean": 0.01234,
                           "accuracy": 0.875},
                          {"recipe": "f16", "model": str(f16), "lm_bytes": 1, "kl_mean": 0.5, "accuracy": 0.1}]}
    (out / "report.json").write_text(json.dumps(report))
    again = run("card", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    card, _ = check_folder(out)
    assert re.search(r"^\| `Imp-v1.5-3B-196-Q4_K_M.gguf` .* \| 0\.0123 \| 0\.875 \|$", card, re.M)
    assert re.search(r"^\| `Imp-v1.5-3B-196-F16.gguf` .* \| - \| - \|$", card, re.M)  # stale row ignored

    # A file removed: gone from both on the next run.
    for p in (q4, out / "mmproj-Imp-v1.5-3B-196-Q8_0.gguf"):
        p.unlink()
    assert run("card", "out", cwd=tmp_path).returncode == 0
    card, mf = check_folder(out)
    assert len(table_files(card)) == 2 and "Q4_K_M" not in mf


def test_card_keeps_other_files_and_lays_out_lmstudio(source: Path, tmp_path: Path) -> None:
    assert run("convert", str(source), "-o", "out", "--quiet", cwd=tmp_path).returncode == 0
    out = tmp_path / "out"
    (out / "README.md").write_text("my own notes\n")
    refused = run("card", "out", cwd=tmp_path)
    assert refused.returncode == 2 and "README.md exists and was not written by imp-gguf card" in refused.stderr
    assert (out / "README.md").read_text() == "my own notes\n" and not (out / "Modelfile").exists()
    proc = run("card", "out", "--force", "--publisher", "me", "--lmstudio", "lms", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lm_dir = tmp_path / "lms" / "me" / "Imp-v1.5-3B-196-GGUF"
    assert json.loads(proc.stdout)["lmstudio"] == str(Path("lms") / "me" / "Imp-v1.5-3B-196-GGUF")
    assert sorted(p.name for p in lm_dir.iterdir()) == sorted(p.name for p in out.glob("*.gguf"))
    for p in lm_dir.iterdir():
        assert p.samefile(out / p.name)
    assert "hf upload me/Imp-v1.5-3B-196-GGUF ." in (out / "README.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run("card", "empty", cwd=tmp_path)
    assert none.returncode == 2 and "needs a language-model GGUF and an mmproj GGUF" in none.stderr


STOPS = {"imp_phi2": "</s>", "imp_qwen2": "<|im_end|>", "imp_phi3": "<|end|>", "imp_phi3_nosys": "<|end|>"}


@pytest.mark.parametrize("variant,template", [("Imp-v1.5-3B-196", None), ("Imp-v1.5-2B-Qwen1.5", None),
                                              ("Imp-v1.5-4B-Phi3", None), ("Imp-v1.5-4B-Phi3", "imp_phi3_nosys")])
def test_modelfile_template_matches_the_gguf(tiny_checkpoints: dict[str, Path], tmp_path: Path, variant: str,
                                             template: str | None) -> None:
    """For each chat template family: the Modelfile written for the GGUF renders as the GGUF's own Jinja."""
    from imp_gguf.convert import convert
    from imp_gguf.share.card import write_card

    kw = {"chat_template": template} if template else {}
    res = convert(tiny_checkpoints[variant], tmp_path / "out", outtype="f16", **kw)
    written = write_card(tmp_path / "out")
    assert written.modelfile is not None
    mf = written.modelfile.read_text()
    go = re.search(r'^TEMPLATE """(.*?)"""$', mf, re.S | re.M)[1]
    jinja = open_reader(res.model).fields[Keys.Tokenizer.CHAT_TEMPLATE].contents()
    for conv in CONVERSATIONS:
        assert render_ollama(go, conv) == render(jinja, conv)
    name = res.facts.chat_template
    assert re.findall(r'^PARAMETER stop "(.*)"$', mf, re.M) == [STOPS[name]]
    assert re.search(r"^PARAMETER temperature ", mf, re.M) and re.search(r"^PARAMETER num_ctx \d+$", mf, re.M)
