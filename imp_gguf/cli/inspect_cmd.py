"""`imp-gguf inspect`: metadata, tensor-type table and bits per weight of a GGUF file."""

from __future__ import annotations

from pathlib import Path

import typer
from gguf import Keys

from imp_gguf.cli._common import echo, print_json
from imp_gguf.gguf_info import summary

MAX_VALUE = 200  # characters of a metadata value shown in text mode (--json has them whole)


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
        if len(text) > MAX_VALUE:
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


def inspect_cmd(
    file: Path = typer.Argument(..., help="A .gguf file (language model or mmproj)."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor."),
) -> None:
    """Show a GGUF file's metadata (one "key = value" line each), tensor types and bits per weight, on stdout:
    `imp-gguf inspect F.gguf | grep chat_template` works."""
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
