"""`imp-gguf convert`: checkpoint -> language-model GGUF + mmproj GGUF (optionally quantized)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import typer

from imp_gguf.cli._common import STATE, echo, info, print_json, progress
from imp_gguf.cli.card import write_and_show
from imp_gguf.convert import CheckpointFacts, ConversionResult, dry_run_result, plan_conversion, run_conversion
from imp_gguf.converters.registry import FAMILIES
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.hub import HUB_ID, split_spec
from imp_gguf.policy import OUTTYPES

if TYPE_CHECKING:
    from imp_gguf.quant.quantize import FallbackRow, QuantizedConversion

    Result = Union[ConversionResult, QuantizedConversion]

HELP = """Convert an Imp checkpoint into two GGUF files that llama.cpp runs unchanged.

CKPT is a local checkpoint folder (config.json, safetensors single or sharded, tokenizer files) or a hub repo id
(MILVLG/Imp-v1.5-3B-196[@revision]). A hub id is downloaded into the standard Hugging Face cache (shared with
other tools, reused and resumed): only config, index, safetensors shards, tokenizer files and README.md, never
remote code or pickle weights (those only with --allow-pickle); each shard is checked against the sha256 the hub
advertises. HF_TOKEN, HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE=1 are honoured; download progress goes to stderr.
A dry run on a hub id downloads no weights (it reads the shards' headers). The GGUFs record the repo and commit.

Writes <Base>-<Size>-<ENC>.gguf (arch {archs}, with the tokenizer and Imp's chat template) and
mmproj-<Base>-<Size>-<ENC>.gguf (SigLIP + projector, arch clip). With --quant, only the recipe's files are kept;
an identical mmproj already in OUTDIR (same checkpoint and type) is reused, so recipes can be compared in one
folder. Nothing is overwritten without --force; outputs appear only when complete.

The paths written are printed on stdout (with --json, the whole result); progress goes to stderr (a bar
on a terminal, a line every few seconds in a pipe or log), with the values taken from config-class defaults
and llama.cpp's shape fallbacks (one summary line; --verbose lists each tensor).

Examples:

\b
  imp-gguf convert ./Imp-v1.5-3B-196 -o out
  imp-gguf convert ./Imp-v1.5-3B-196 -o out --quant q4_k
  imp-gguf convert ./Imp-v1.5-3B-196 -o out --quant q4_0 --dry-run
  imp-gguf convert MILVLG/Imp-v1.5-2B-Qwen1.5 --dry-run --json
""".format(archs=" or ".join(", ".join(sorted({f.arch for f in FAMILIES.values()})).rsplit(", ", 1)))


def convert_cmd(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint folder or hub repo id."),
    outdir: Path = typer.Option(Path("."), "--outdir", "-o", help="Folder for the two GGUF files."),
    outtype: Optional[str] = typer.Option(None, "--outtype",
                                          help=f"Conversion type, any case: {', '.join(OUTTYPES)} (default f16)."),
    quant: Optional[str] = typer.Option(None, "--quant",
                                        help="Quant recipe (see `imp-gguf recipes list`; llama-quantize's names such "
                                             "as Q4_K_M or Q4_K work too), a recipe .toml, or none. Converts to F16 "
                                             "first, then runs llama.cpp's quantizer."),
    keep_intermediate: bool = typer.Option(False, "--keep-intermediate", help="With --quant: keep the F16 files."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print the files the run would write (types, estimated sizes) and what would "
                                      "block it; write nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    card: bool = typer.Option(False, "--card", help="Then write OUTDIR's model card and ollama Modelfile "
                                                    "(`imp-gguf card OUTDIR`)."),
    revision: Optional[str] = typer.Option(None, "--revision",
                                           help="With a hub id: branch, tag or commit to download (default main)."),
    model_name: Optional[str] = typer.Option(None, "--model-name",
                                             help="Name for files and general.name (default: from CKPT)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Load pytorch_model.bin with torch.load(weights_only=True) if no "
                                           "safetensors exist."),
    chat_template: Optional[str] = typer.Option(
        None, "--chat-template", metavar="NAME|FILE",
        help="Conversation template stored in the GGUF: imp_phi3 (default for the 4B, with a system turn, as "
             "Imp's code has it since 2024-08) or imp_phi3_nosys (the 4B's template before that, when its "
             "weights were published), or a .jinja file. The other models have one template each."),
) -> None:
    from imp_gguf.quant.recipes import resolve_convert_options

    quiet = STATE["quiet"]  # -q/--quiet (a root option): only the output paths
    ckpt = _with_revision(ckpt, revision)
    if json_out or quiet:  # read by huggingface_hub when it is first imported (hub ids only)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    opts = resolve_convert_options(outtype=outtype, quant=quant, keep_intermediate=keep_intermediate)
    if opts.recipe is not None:
        from imp_gguf.quant.quantize import convert_and_quantize

        with progress(enabled=not (json_out or dry_run)) as prog:
            qresult = convert_and_quantize(ckpt, outdir, opts.recipe, force=force, keep_intermediate=keep_intermediate,
                                           model_name=model_name, allow_pickle=allow_pickle, dry_run=dry_run,
                                           chat_template=chat_template, verbose=STATE["verbose"],
                                           progress=prog.advance, phase=prog.phase)
        if not (dry_run or json_out or quiet) and qresult.recipe.mmproj_reused:
            info(f"reused {qresult.mmproj} (same checkpoint, same {opts.recipe.mmproj_encoding} mmproj)")
        _show(qresult, _card(outdir, card and not dry_run, json_out, quiet), json_out, quiet)
        _refuse_if_blocked(qresult)
        return
    plan = plan_conversion(ckpt, outdir, outtype=opts.outtype, force=force or dry_run, model_name=model_name,
                           allow_pickle=allow_pickle, metadata_only=dry_run, chat_template=chat_template)
    if dry_run:
        result = dry_run_result(plan, force=force)
        _show(result, None, json_out, quiet)
        _refuse_if_blocked(result)
        return
    if not json_out:
        _describe(plan.facts(), dry=False)
    with progress(enabled=not json_out) as prog:
        prog.phase(f"writing {plan.outtype.upper()}", plan.lm_bytes + plan.mmproj_bytes)
        result = run_conversion(plan, force=force, progress=prog.advance)
    _show(result, _card(outdir, card, json_out, quiet), json_out, quiet)


def _describe(facts: CheckpointFacts, *, dry: bool, recipe: str | None = None) -> None:
    """What the run is about to write, on stderr: the variant and every value taken from a default."""
    info(f"{'dry run: ' if dry else ''}{facts.variant_description}, {facts.image_size} px, "
         f"{facts.image_tokens} image tokens, {facts.vision_blocks_run} vision blocks, "
         f"{facts.lm_tensors} + {facts.mmproj_tensors} tensors" + (f", recipe {recipe}" if recipe else ""))
    for key, d in facts.defaults.items():  # config.json left them out
        info(f"  default: {key} = {d.value} (not in config.json; from {d.source})")
    for note in facts.notes:
        info(f"  note: {note}")


def _card(outdir: Path, wanted: bool, json_out: bool, quiet: bool) -> dict[str, object] | None:
    """--card: the folder's card and Modelfile, once the GGUFs they describe exist (their paths printed,
    or under "card" in the JSON)."""
    if not wanted:
        return None
    return write_and_show(outdir, json_out=json_out, quiet=quiet).to_dict()


def _with_revision(ckpt: str, revision: str | None) -> str:
    """CKPT with --revision folded in as @REVISION (a folder cannot take one)."""
    if revision is None:
        return ckpt
    if Path(ckpt).expanduser().exists() or not HUB_ID.match(ckpt):
        raise BadInput(f"--revision applies to a hub repo id, and {ckpt} is not one")
    repo, rev = split_spec(ckpt, revision)
    return f"{repo}@{rev}"


def _show(result: Result, card: dict[str, object] | None, json_out: bool, quiet: bool) -> None:
    """The result on stdout: JSON (with --card's result under "card"), the bare paths (--quiet), or one
    line per file; notes on stderr."""
    from imp_gguf.quant.quantize import QuantizedConversion, fallback_summary

    if json_out:
        print_json(result.to_dict() | ({"card": card} if card is not None else {}))
        return
    dry = result.dry_run
    if quiet:
        for o in result.outputs:
            echo(str(o.path))
        return
    if dry:
        _describe(result.facts, dry=True,
                  recipe=result.recipe.recipe if isinstance(result, QuantizedConversion) else None)
    fallbacks = result.recipe.fallbacks if isinstance(result, QuantizedConversion) else ()
    if fallbacks:  # llama.cpp's shape fallbacks: shown, never silent; once, unless --verbose
        info(f"  note: {fallback_summary(fallbacks)}" + ("" if STATE["verbose"] else " (--verbose lists them)"))
        if STATE["verbose"]:
            for fb in fallbacks:
                info(f"    {_fallback_text(fb)}")
    verbs = {"write": "would write" if dry else "wrote", "overwrite": "would overwrite" if dry else "overwrote",
             "reuse": "would reuse" if dry else "reused", "blocked": "exists, blocked:"}
    for o in result.outputs:
        size = f"{o.bytes / 1e6:.1f} MB" if o.bytes is not None else "?"
        echo(f"{verbs[o.action]} {o.path}  ({o.type}, {'~' if dry else ''}{size})")


def _refuse_if_blocked(result: Result) -> None:
    """A dry run that found what would stop the real run exits 2 as the real run would, after its plan."""
    if result.blocked:
        raise OutputExists(f"{result.blocked[0]} (dry run)")


def _fallback_text(fb: FallbackRow) -> str:
    return (f"{fb.tensor}: {fb.wanted} needs rows divisible by its block, "
            f"{fb.ne0} are not: written as {fb.type} (+{fb.extra_bytes / 1e6:.2f} MB)")


def register(app: typer.Typer) -> None:
    app.command("convert", help=HELP)(convert_cmd)
