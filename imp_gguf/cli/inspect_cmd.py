"""`imp-gguf inspect`: metadata, tensor-type table and bits per weight of a GGUF file."""

from __future__ import annotations

from pathlib import Path

import typer
from gguf import Keys

from imp_gguf.cli._common import echo, print_json
from imp_gguf.gguf_info import field_value, open_reader, summary
from imp_gguf.spelling import unknown

# Characters of a non-string value (an array) shown in text mode; strings (the chat template) are shown
# whole on their line, newlines as \\n, so `| grep KEY` finds all of it. --key and --json give any value whole.
MAX_VALUE = 200


def inspect_lines(s: dict, *, tensors: bool = False) -> list[str]:
    """The text report, one fact per line ("key = value", as llama.cpp's gguf-dump), so grep finds them."""
    lines = [f"{s['path']}: arch {s['architecture']}, {s['file_bytes'] / 1e6:.2f} MB, {s['n_params'] / 1e6:.2f} M "
             f"parameters, {s['bpw']:.2f} bits/weight" + (f", file type {s['file_type']}" if s.get("file_type") else ""),
             "", "metadata:"]
    width = max((len(k) for k in s["metadata"]), default=0)
    for k, v in s["metadata"].items():
        text = str(v).replace("\n", "\\n")
        if k == Keys.General.FILE_TYPE and s.get("file_type"):
            text = f"{v} ({s['file_type']})"
        if not isinstance(v, str) and len(text) > MAX_VALUE:
            text = text[:MAX_VALUE - 3] + "..."
        lines.append(f"  {k:<{width}} = {text}")
    lines += ["", "tensor types:"]
    for t, n in s["tensor_types"].items():
        lines.append(f"  {t:<8} {n:>5} tensors  {s['tensor_type_bytes'][t] / 1e6:10.2f} MB")
    if tensors:
        lines += ["", "tensors (name, type, shape in ggml order):"]
        w = max((len(t["name"]) for t in s["tensors"]), default=0)
        lines += [f"  {t['name']:<{w}}  {t['type']:<7} {t['shape']}" for t in s["tensors"]]
    return lines


def key_values(file: Path, keys: list[str]) -> dict[str, object]:
    """The whole value of each named metadata key (arrays in full); an unknown key is bad input."""
    fields = open_reader(file).fields
    names = [k for k in fields if not k.startswith("GGUF.")]
    for k in keys:
        if k not in fields or k.startswith("GGUF."):
            raise unknown(f"key in {file.name}", k, names)
    return {k: field_value(fields[k]) for k in keys}


def inspect_cmd(
    file: Path = typer.Argument(..., help="A .gguf file (language model or mmproj)."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor."),
    keys: list[str] = typer.Option([], "--key", "-k", metavar="NAME",
                                   help="Print only this key's whole value (strings as written, with their line "
                                        "breaks; arrays one item per line); repeatable."),
) -> None:
    """Show a GGUF file's metadata (one "key = value" line each, strings whole), tensor types and bits per
    weight, on stdout: `imp-gguf inspect F.gguf | grep chat_template` shows the whole template on one line,
    `imp-gguf inspect F.gguf --key tokenizer.chat_template` prints it as written."""
    if keys:
        values = key_values(file, keys)
        if json_out:
            print_json(values)
        else:
            for v in values.values():
                for item in v if isinstance(v, list) else [v]:
                    echo(str(item))
        return
    s = summary(file)
    if not tensors:
        s = {k: v for k, v in s.items() if k != "tensors"}
    if json_out:
        print_json(s)
        return
    for line in inspect_lines(s, tensors=tensors):
        echo(line)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
