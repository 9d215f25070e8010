"""`imp-gguf inspect`: metadata, tensor-type table and bits per weight of a GGUF file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from imp_gguf.cli._common import err_console, print_json
from imp_gguf.gguf_info import summary


def inspect_cmd(
    file: Path = typer.Argument(..., help="A .gguf file (language model or mmproj)."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor."),
) -> None:
    """Show a GGUF file's metadata, tensor types and bits per weight."""
    s = summary(file)
    if not tensors:
        s = {k: v for k, v in s.items() if k != "tensors"}
    if json_out:
        print_json(s)
        return
    c = err_console
    c.print(f"[bold]{escape(str(file))}[/]  arch={escape(str(s['architecture']))}  {s['file_bytes'] / 1e6:.2f} MB  "
            f"{s['n_params'] / 1e6:.2f} M params  {s['bpw']:.2f} bits/weight")
    meta = Table("key", "value", title="metadata", show_lines=False)
    for k, v in s["metadata"].items():
        text = str(v)
        meta.add_row(escape(k), escape(text if len(text) < 100 else text[:97] + "..."))
    c.print(meta)
    types = Table("type", "tensors", "MB", title="tensor types")
    for t, n in s["tensor_types"].items():
        types.add_row(t, str(n), f"{s['tensor_type_bytes'][t] / 1e6:.2f}")
    c.print(types)
    if tensors:
        tt = Table("name", "type", "shape (ggml order)")
        for t in s["tensors"]:
            tt.add_row(escape(t["name"]), t["type"], str(t["shape"]))
        c.print(tt)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
