"""Apply a recipe: F16 GGUFs -> quantized language model + mmproj, through llama.cpp's own quantizer
(in process, via the pinned llama-cpp-python: byte-identical to `llama-quantize`, overrides included).

Every written file is checked tensor by tensor against rules.expected_types before it is renamed
into place, so the result is exactly what the recipe says, shape fallbacks included and reported.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from imp_gguf import __version__
from imp_gguf.errors import BadInput, InternalError
from imp_gguf.gguf_info import read_gguf_meta, summary, tensor_table
from imp_gguf.naming import ModelIdentity
from imp_gguf.native_log import quiet_native_stderr
from imp_gguf.quant.recipes import QuantSpec, Recipe, ftype_id, ggml_type_id, load_recipe
from imp_gguf.quant.rules import TypeChoice, expected_types, fallbacks
from imp_gguf.writer import atomic_outputs, check_output


def quantize_file(src: Path, dst: Path, spec: QuantSpec, *, provenance: dict[str, str] | None = None,
                  nthread: int = 0) -> None:
    """One llama_model_quantize call (language model or mmproj) writing `dst`."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    from imp_gguf.cli._common import STATE

    set_verbose(STATE["verbose"])  # llama.cpp logs every tensor; the fallbacks are reported by us

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_id(spec.ftype)
    params.nthread = nthread
    params.pure = spec.pure
    if spec.output:
        params.output_tensor_type = ggml_type_id(spec.output)
    if spec.token_embd:
        params.token_embedding_type = ggml_type_id(spec.token_embd)
    keep: list[Any] = []  # the C side reads these arrays during the call: keep them alive
    if spec.overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(spec.overrides) + 1))()  # NULL pattern ends it
        for slot, (pattern, tname) in zip(arr, spec.overrides):
            slot.pattern, slot.type = pattern.encode(), ggml_type_id(tname)
        keep.append(arr)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if provenance:
        kv = (llama_cpp.llama_model_kv_override * (len(provenance) + 1))()  # empty key ends it
        for slot, (key, value) in zip(kv, provenance.items()):
            slot.tag, slot.key, slot.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, key.encode(), value.encode()[:127]
        keep.append(kv)
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    with quiet_native_stderr(not STATE["verbose"]):  # its shape-fallback warnings bypass the log callback
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise InternalError(f"llama.cpp could not quantize {src.name} to {spec.ftype} (code {rc}; rerun with --verbose for its log)")


def identity_from_gguf(meta: dict[str, Any], fallback_name: str) -> ModelIdentity:
    """The naming identity written by the converter (general.*), so quantized names match the F16 ones."""
    name = meta.get("general.name") or fallback_name
    return ModelIdentity(model_id=name, name=name, basename=meta.get("general.basename") or name,
                         organization=meta.get("general.organization"), finetune=meta.get("general.finetune"),
                         version=meta.get("general.version"), size_label=meta.get("general.size_label") or "")


def check_types(path: Path, expected: list[TypeChoice]) -> None:
    got = {t["name"]: t["type"] for t in tensor_table(path)}
    want = {c.name: c.type for c in expected}
    if set(got) != set(want):
        extra = sorted(set(got) ^ set(want))
        raise InternalError(f"{path.name}: tensor set differs from its input ({extra[0]!r})")
    for c in expected:
        if got[c.name] != c.type:
            raise InternalError(f"{path.name}: {c.name} is {got[c.name]}, the recipe predicts {c.type} ({c.rule}); "
                                "llama.cpp's rules changed?")


def _block_count(meta: dict[str, Any]) -> int:
    arch = meta.get("general.architecture")
    n = meta.get(f"{arch}.block_count")
    if not isinstance(n, int):
        raise BadInput(f"language model has no {arch}.block_count")
    return n


def plan_recipe(recipe: Recipe | str | Path, f16_model: str | Path, f16_mmproj: str | Path) -> dict[str, Any]:
    """Predicted types of both files (no writing): {"lm": [TypeChoice], "mmproj": [TypeChoice]}."""
    recipe = load_recipe(recipe)
    lm_meta, mm_meta = read_gguf_meta(f16_model), read_gguf_meta(f16_mmproj)
    if lm_meta.get("general.architecture") == "clip":
        raise BadInput(f"{Path(f16_model).name} is an mmproj, not a language model")
    if mm_meta.get("general.architecture") != "clip":
        raise BadInput(f"{Path(f16_mmproj).name} is not an mmproj (arch {mm_meta.get('general.architecture')})")
    return {"lm": expected_types(recipe, tensor_table(f16_model), _block_count(lm_meta), part="lm"),
            "mmproj": expected_types(recipe, tensor_table(f16_mmproj), 0, part="mmproj"),
            "lm_meta": lm_meta}


def _produce(src: Path, tmp: Path, spec: QuantSpec, provenance: dict[str, str]) -> None:
    if spec.is_copy:
        try:  # a hard link costs nothing and leaves the input intact until the outputs are in place
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        quantize_file(src, tmp, spec, provenance=provenance)


def fallback_rows(part: str, choices: list[TypeChoice]) -> list[dict[str, Any]]:
    return [{"part": part, "tensor": c.name, "ne0": c.ne0, "wanted": c.wanted, "type": c.type, "rule": c.rule}
            for c in fallbacks(choices)]


def apply_recipe(recipe: Recipe | str | Path, f16_model: str | Path, f16_mmproj: str | Path, outdir: str | Path, *,
                 force: bool = False, keep_intermediate: bool = True,
                 identity: ModelIdentity | None = None) -> dict[str, Any]:
    """Quantize an F16 language model + mmproj by `recipe` into `outdir`, named with the recipe's encoding.

    keep_intermediate=False deletes the F16 inputs once both outputs are in place (a file that is
    itself an output, as with the f16 recipe, is never deleted).
    """
    recipe = load_recipe(recipe)
    f16_model, f16_mmproj, out = Path(f16_model), Path(f16_mmproj), Path(outdir)
    plan = plan_recipe(recipe, f16_model, f16_mmproj)
    ident = identity or identity_from_gguf(plan["lm_meta"], f16_model.stem)
    out.mkdir(parents=True, exist_ok=True)
    lm_out = out / ident.lm_filename(recipe.encoding)
    mm_out = out / ident.mmproj_filename(recipe.mmproj_encoding)
    provenance = {"imp_gguf.recipe": recipe.name, "imp_gguf.recipe_sha256": recipe.digest,
                  "imp_gguf.quantized_by": f"imp-gguf {__version__}"}
    jobs = [(src, dst, spec, exp) for src, dst, spec, exp in
            ((f16_model, lm_out, recipe.lm, plan["lm"]), (f16_mmproj, mm_out, recipe.mmproj, plan["mmproj"]))
            if not (dst.exists() and dst.resolve() == src.resolve())]  # f16 recipe in place: nothing to do
    with atomic_outputs([dst for _, dst, _, _ in jobs], force) as tmps:
        for (src, _, spec, exp), tmp in zip(jobs, tmps):
            _produce(src, tmp, spec, provenance)
            check_types(tmp, exp)
    if not keep_intermediate:
        for src, dst in ((f16_model, lm_out), (f16_mmproj, mm_out)):
            if src.exists() and src.resolve() != dst.resolve():
                src.unlink()
    lm_sum, mm_sum = summary(lm_out), summary(mm_out)
    return {
        "recipe": recipe.name,
        "description": recipe.description,
        "encoding": recipe.encoding,
        "model": str(lm_out),
        "mmproj": str(mm_out),
        "lm_bytes": lm_sum["file_bytes"],
        "mmproj_bytes": mm_sum["file_bytes"],
        "bpw": lm_sum["bpw"],
        "mmproj_bpw": mm_sum["bpw"],
        "tensor_types": lm_sum["tensor_types"],
        "mmproj_tensor_types": mm_sum["tensor_types"],
        "fallbacks": fallback_rows("lm", plan["lm"]) + fallback_rows("mmproj", plan["mmproj"]),
        "overridden": [c.name for c in plan["lm"] if c.rule.startswith("override")],
    }


def convert_and_quantize(source: str | Path, outdir: str | Path, recipe: Recipe | str | Path, *, force: bool = False,
                         keep_intermediate: bool = False, progress: Callable[[int], None] | None = None,
                         model_name: str | None = None, allow_pickle: bool = False) -> dict[str, Any]:
    """Checkpoint -> F16 (in a temporary folder inside outdir unless keep_intermediate) -> recipe outputs.

    Returns apply_recipe's result plus "conversion" (the converter's summary) and "intermediate"
    (the kept F16 paths, or None).
    """
    from imp_gguf.convert import plan_conversion, run_conversion

    recipe = load_recipe(recipe)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    direct = keep_intermediate or recipe.lm.is_copy and recipe.mmproj.is_copy  # F16 files written in outdir
    with tempfile.TemporaryDirectory(dir=out, prefix=".imp-gguf-f16-") as tmp:
        work = out if direct else Path(tmp)
        plan = plan_conversion(source, work, outtype="f16", force=force, model_name=model_name,
                               allow_pickle=allow_pickle)
        # Refuse existing final outputs before the (long) conversion starts.
        for p in (out / plan.identity.lm_filename(recipe.encoding), out / plan.identity.mmproj_filename(recipe.mmproj_encoding)):
            if not (direct and p in (plan.lm_path, plan.mmproj_path)):
                check_output(p, force)
        conv = run_conversion(plan, force=force, progress=progress)
        result = apply_recipe(recipe, plan.lm_path, plan.mmproj_path, out, force=force,
                              keep_intermediate=direct, identity=plan.identity)
    result["conversion"] = conv
    result["intermediate"] = ({"model": str(plan.lm_path), "mmproj": str(plan.mmproj_path)}
                              if keep_intermediate and not (recipe.lm.is_copy and recipe.mmproj.is_copy) else None)
    return result
