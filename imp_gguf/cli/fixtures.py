"""`imp-gguf fixtures tiny|published|full-size`: checkpoints for tests and for speed figures (wiring only).

tiny       a tiny Imp checkpoint of any released layout (imp_gguf.synthetic_checkpoints.tiny; needs torch).
published  a release at full size in its published form: config, names, shapes, dtype, shards, tokenizer
           files (imp_gguf.synthetic_checkpoints.published; needs torch for the names; sparse zeros by default).
full-size  a random-weight checkpoint in the exact shape of a real variant (imp_gguf.synthetic_checkpoints.fullsize;
           streamed tensor by tensor: ~6 GB written, a few hundred MB of RAM).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from imp_gguf.cli._common import echo, every_tenth, info as _info, print_json, typer_factory
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.spelling import unknown


sub = typer_factory("Write checkpoints for tests (tiny) and for speed measurements (full-size, random weights).")


@sub.command("tiny")
def tiny_cmd(
    variant: str = typer.Argument(..., help="The released checkpoint to mirror, e.g. Imp-v1.5-3B-196 (a name it "
                                            "does not know lists the others)."),
    out: Path = typer.Argument(..., help="Folder to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights (same seed, same files)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """A tiny checkpoint with the real names, nesting, configs and tokenizer files of a variant."""
    from imp_gguf.synthetic_checkpoints.tiny import VARIANTS, make_checkpoint

    if variant not in VARIANTS:
        raise unknown("variant", variant, VARIANTS)
    if out.exists() and not force:
        raise OutputExists(f"{out} exists: pass --force to replace it")
    path = make_checkpoint(variant, out, seed=seed, overwrite=True)
    echo(f"wrote {path}")


@sub.command("published")
def published_cmd(
    variant: str = typer.Argument(..., help="The released checkpoint to mirror, e.g. Imp-v1.5-3B-196 (a name it "
                                            "does not know lists the others)."),
    out: Path = typer.Argument(..., help="Folder to write."),
    data: str = typer.Option("zeros", "--data",
                             help="zeros: sparse files, seconds and no disk; random: seeded noise that gives "
                                  "non-flat logits (writes the full size, minutes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights, with --data random."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """A released checkpoint as published, at full size: what `convert` must accept without a download."""
    from imp_gguf.synthetic_checkpoints.published import make_published

    tenths = every_tenth(_info, lambda done, total, name: f"  {done / 1e9:5.2f} / {total / 1e9:.2f} GB  {name}")
    path = make_published(variant, out, data=data, seed=seed, force=force,
                          progress=lambda name, done, total: tenths(done, total, name))
    echo(f"wrote {path}")


@sub.command("full-size")
def full_size_cmd(
    out: Path = typer.Argument(..., help="Folder to write (~6 GB for the 3B variants)."),
    variant: str = typer.Option("Imp-v1.5-3B-196", "--variant",
                                help="Imp-v1.5-3B-196 (196 px) | imp-v1-3b (384 px, 729 image tokens)"),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights (same seed, same files)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout."),
) -> None:
    """Random weights, real shapes: for speed figures of a variant without downloading it."""
    from imp_gguf.synthetic_checkpoints.fullsize import FULL_VARIANTS, make_fullsize, n_params

    if variant not in FULL_VARIANTS:
        raise BadInput(f"no full-size spec for {variant!r}: choose one of {', '.join(FULL_VARIANTS)}")
    tenths = every_tenth(_info, lambda done, total, name: f"  {done / 1e9:5.2f} / {total / 1e9:.2f} GB  {name}")

    def progress(name: str, done: int, total: int) -> None:
        tenths(done, total, name)

    t0 = time.monotonic()
    path = make_fullsize(variant, out, seed=seed, force=force, progress=progress)
    params, seconds = n_params(FULL_VARIANTS[variant]), round(time.monotonic() - t0, 1)
    if json_out:
        print_json({"folder": str(path), "variant": variant, "n_params": params, "seconds": seconds})
    else:
        echo(f"wrote {path} ({params / 1e9:.2f} B parameters, bf16) in {seconds} s")


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="fixtures")
