"""`imp-gguf convert`: checkpoint -> language-model GGUF + mmproj GGUF (optionally quantized)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from imp_gguf.cli._common import err_console, print_json
from imp_gguf.convert import plan_conversion, run_conversion

HELP = """Convert an Imp checkpoint into two GGUF files that llama.cpp runs unchanged.

CKPT is a local checkpoint folder (config.json, safetensors single or sharded, tokenizer files) or a
hub repo id (MILVLG/Imp-v1.5-3B-196[@revision], needs huggingface_hub and network).

Writes <Base>-<Size>-<ENC>.gguf (arch phi2/qwen2/phi3, tokenizer, Imp's chat template) and
mmproj-<Base>-<Size>-<ENC>.gguf (SigLIP + projector, arch clip). Nothing is overwritten without --force;
outputs appear only when complete.

Examples:

  imp-gguf convert ./Imp-v1.5-3B-196 --outdir out

  imp-gguf convert ./Imp-v1.5-3B-196 --outdir out --quant q4_k

  imp-gguf convert ./Imp-v1.5-2B-Qwen1.5 --dry-run --json
"""


def convert_cmd(
    ckpt: str = typer.Argument(..., help="Checkpoint folder or hub repo id."),
    outdir: Path = typer.Option(Path("."), "--outdir", "-o", help="Folder for the two GGUF files."),
    outtype: str = typer.Option("f16", "--outtype", help="Conversion type: f32, f16, bf16 or q8_0."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q",
                                        help="Quant recipe name (see `imp-gguf recipes list`) or a recipe .toml; "
                                             "converts to F16 first, then runs llama.cpp's quantizer."),
    keep_intermediate: bool = typer.Option(False, "--keep-intermediate", help="With --quant: keep the F16 files."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (variant, tensors, names, sizes); write nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON result on stdout."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name for files and general.name (default: from CKPT)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Load pytorch_model.bin with torch.load(weights_only=True) if no safetensors exist."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the output paths."),
) -> None:
    if quant is not None:
        from imp_gguf.quant import convert_and_quantize, load_recipe

        recipe = load_recipe(quant)
        if dry_run:
            plan = plan_conversion(ckpt, outdir, outtype="f16", force=True, model_name=model_name,
                                   allow_pickle=allow_pickle)
            summary = plan.summary() | {"recipe": recipe.name}
            _show_plan(summary, json_out)
            return
        result = convert_and_quantize(ckpt, outdir, recipe, force=force, keep_intermediate=keep_intermediate,
                                      model_name=model_name, allow_pickle=allow_pickle)
        _show_result(result, json_out, quiet)
        return
    plan = plan_conversion(ckpt, outdir, outtype=outtype, force=force or dry_run, model_name=model_name,
                           allow_pickle=allow_pickle)
    if dry_run:
        _show_plan(plan.summary(), json_out)
        return
    if not (json_out or quiet):
        err_console.print(f"[bold]{plan.family.description}[/]: {plan.vh.image_size} px, "
                          f"{plan.vh.n_patches} image tokens, {plan.vh.run_blocks} vision blocks")
        for note in plan.notes:
            err_console.print(f"  note: {note}", markup=False)
    total = plan.lm_bytes + plan.mmproj_bytes
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err_console, disable=json_out or quiet, transient=True) as bar:
        task = bar.add_task("writing", total=total)
        result = run_conversion(plan, force=force, progress=lambda n: bar.advance(task, n))
    _show_result(result, json_out, quiet)


def _show_plan(summary: dict, json_out: bool) -> None:
    if json_out:
        print_json(summary | {"dry_run": True})
        return
    err_console.print(f"[dry-run] {summary['variant_description']}", markup=False)
    for key in ("arch", "image_size", "image_tokens", "vision_blocks_run", "lm_tensors", "mmproj_tensors"):
        err_console.print(f"  {key}: {summary[key]}", markup=False)
    err_console.print(f"  would write {summary['model']} (~{summary['model_bytes_estimate'] / 1e6:.1f} MB)", markup=False)
    err_console.print(f"  would write {summary['mmproj']} (~{summary['mmproj_bytes_estimate'] / 1e6:.1f} MB)", markup=False)
    for note in summary["notes"]:
        err_console.print(f"  note: {note}", markup=False)


def _show_result(result: dict, json_out: bool, quiet: bool) -> None:
    if json_out:
        print_json(result)
    elif quiet:
        print(result["model"])
        print(result["mmproj"])
    else:
        for fb in result.get("fallbacks") or []:  # llama.cpp's shape fallbacks: shown, never silent
            err_console.print(f"  note: {fb if isinstance(fb, str) else _fallback_text(fb)}", markup=False, soft_wrap=True)
        err_console.print(f"wrote {result['model']}", markup=False)
        err_console.print(f"wrote {result['mmproj']}", markup=False)


def _fallback_text(fb: dict) -> str:
    return (f"{fb.get('tensor')}: {fb.get('wanted')} needs rows divisible by its block, "
            f"{fb.get('ne0')} are not: written as {fb.get('type')}")


def register(app: typer.Typer) -> None:
    app.command("convert", help=HELP)(convert_cmd)
