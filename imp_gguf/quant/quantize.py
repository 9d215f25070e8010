"""Apply a recipe: F16 GGUFs -> quantized language model + mmproj, through llama.cpp's own quantizer
(in process, via the pinned llama-cpp-python: byte-identical to `llama-quantize`, overrides included).

Every written file is checked tensor by tensor against rules.expected_types before it is renamed
into place, so the result is exactly what the recipe says, shape fallbacks included and reported.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from gguf import Keys, LlamaFileType

from imp_gguf import __version__
from imp_gguf.errors import BadInput, InternalError, OutputExists
from imp_gguf.gguf_info import MMPROJ_ARCH, read_gguf_meta, summary, tensor_table
from imp_gguf.gguf_naming import SOURCE_KEY, VERSION_KEY, ModelIdentity
from imp_gguf.native_log import quiet_native_stderr
from imp_gguf.quant.recipes import QuantSpec, Recipe, ftype_id, ggml_type_id, load_recipe
from imp_gguf.quant.rules import TypeChoice, estimated_bytes, expected_types, fallbacks
from imp_gguf.writer import atomic_outputs
from imp_gguf.convert import convert, plan_conversion, run_conversion, source_sha256_or_none

RECIPE_KEY = "imp_gguf.recipe"  # written by the quantizer only: the converter's copy lacks it


def quantize_file(src: Path, dst: Path, spec: QuantSpec, *, provenance: dict[str, str] | None = None,
                  nthread: int = 0, verbose: bool = False) -> None:
    """One llama_model_quantize call (language model or mmproj) writing `dst`; verbose: llama.cpp's log too."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(verbose)  # llama.cpp logs every tensor; the fallbacks are reported by us

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
    with quiet_native_stderr(not verbose):  # its shape-fallback warnings bypass the log callback
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise InternalError(f"llama.cpp could not quantize {src.name} to {spec.ftype} (code {rc}; rerun with --verbose for its log)")


def identity_from_gguf(meta: dict[str, Any], fallback_name: str) -> ModelIdentity:
    """The naming identity written by the converter (general.*), so quantized names match the F16 ones."""
    return ModelIdentity.from_id(meta.get(Keys.General.NAME) or fallback_name,
                                 size=meta.get(Keys.General.SIZE_LABEL), organization=meta.get(Keys.General.ORGANIZATION))


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
    key = Keys.LLM.BLOCK_COUNT.format(arch=meta.get(Keys.General.ARCHITECTURE))
    if not isinstance(n := meta.get(key), int):
        raise BadInput(f"language model has no {key}")
    return n


def plan_recipe(recipe: Recipe | str | Path, f16_model: str | Path, f16_mmproj: str | Path) -> dict[str, Any]:
    """Predicted types of both files (no writing): {"lm": [TypeChoice], "mmproj": [TypeChoice]}."""
    recipe = load_recipe(recipe)
    lm_meta, mm_meta = read_gguf_meta(f16_model), read_gguf_meta(f16_mmproj)
    if lm_meta.get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH:
        raise BadInput(f"{Path(f16_model).name} is an mmproj, not a language model")
    if mm_meta.get(Keys.General.ARCHITECTURE) != MMPROJ_ARCH:
        raise BadInput(f"{Path(f16_mmproj).name} is not an mmproj (arch {mm_meta.get(Keys.General.ARCHITECTURE)})")
    lm_t, mm_t = tensor_table(f16_model), tensor_table(f16_mmproj)
    return {"lm": expected_types(recipe, lm_t, _block_count(lm_meta), part="lm"),
            "mmproj": expected_types(recipe, mm_t, 0, part="mmproj"),
            "lm_tensors": lm_t, "mm_tensors": mm_t, "lm_meta": lm_meta, "mm_meta": mm_meta}


def _produce(src: Path, tmp: Path, spec: QuantSpec, provenance: dict[str, str], verbose: bool) -> None:
    if spec.is_copy:
        try:  # a hard link costs nothing and leaves the input intact until the outputs are in place
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        quantize_file(src, tmp, spec, provenance=provenance, verbose=verbose)


def fallback_rows(part: str, choices: list[TypeChoice], tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """llama.cpp's shape fallbacks among `choices` (tensors: their tensor_table rows), each with the bytes it
    costs over the type the recipe wanted."""
    rows = []
    for c in fallbacks(choices):
        got, _ = estimated_bytes([c], tensors)
        wanted, _ = estimated_bytes([replace(c, type=c.wanted)], tensors)
        rows.append({"part": part, "tensor": c.name, "ne0": c.ne0, "wanted": c.wanted, "type": c.type,
                     "rule": c.rule, "extra_bytes": got - wanted})
    return rows


def _numbers(ns: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for n in sorted(set(ns)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def fallback_summary(rows: list[dict[str, Any]]) -> str | None:
    """fallback_rows as one sentence: which tensors (blocks folded: v.blk.{0-25}.ffn_down.weight), why, and
    the size they cost; None when there are none."""
    if not rows:
        return None
    groups: dict[tuple, list[int | None]] = {}
    for r in rows:
        m = re.match(r"^(.*?blk\.)(\d+)(\..*)$", r["tensor"])
        name, blk = (f"{m[1]}{{}}{m[3]}", int(m[2])) if m else (r["tensor"], None)
        groups.setdefault((name, r["part"], r["ne0"], r["wanted"], r["type"]), []).append(blk)
    parts = []
    for (name, part, ne0, wanted, typ), blks in groups.items():
        shown = name.format("{" + _numbers([b for b in blks if b is not None]) + "}") if "{}" in name else name
        parts.append(f"{shown} ({part}, rows of {ne0}) {wanted} -> {typ}")
    extra = sum(r.get("extra_bytes", 0) for r in rows)
    return (f"{len(rows)} tensor{'s' if len(rows) > 1 else ''} written wider than the recipe asks, because "
            f"their rows do not divide into the type's blocks (llama.cpp's fallback): {'; '.join(parts)}; "
            f"+{extra / 1e6:.2f} MB")


def apply_recipe(recipe: Recipe | str | Path, f16_model: str | Path, f16_mmproj: str | Path, outdir: str | Path, *,
                 force: bool = False, keep_intermediate: bool = True,
                 identity: ModelIdentity | None = None, verbose: bool = False) -> dict[str, Any]:
    """Quantize an F16 language model + mmproj by `recipe` into `outdir`, named with the recipe's encoding.

    keep_intermediate=False deletes the F16 inputs once both outputs are in place (a file that is
    itself an output, as with the f16 recipe, is never deleted). Without force, an mmproj already in
    `outdir` that this recipe would write identically (mmproj_reuse) is kept and reported, not an error:
    recipes differ in the language model, most share the Q8_0 mmproj.
    """
    recipe = load_recipe(recipe)
    f16_model, f16_mmproj, out = Path(f16_model), Path(f16_mmproj), Path(outdir)
    plan = plan_recipe(recipe, f16_model, f16_mmproj)
    ident = identity or identity_from_gguf(plan["lm_meta"], f16_model.stem)
    out.mkdir(parents=True, exist_ok=True)
    lm_out = out / ident.lm_filename(recipe.encoding)
    mm_out = out / ident.mmproj_filename(recipe.mmproj_encoding)
    provenance = {RECIPE_KEY: recipe.name, "imp_gguf.recipe_sha256": recipe.digest,
                  "imp_gguf.quantized_by": f"imp-gguf {__version__}"}
    reused = not force and mmproj_reuse(mm_out, plan["mm_meta"].get(SOURCE_KEY), recipe.mmproj) == "reuse"
    jobs = [(src, dst, spec, exp) for src, dst, spec, exp in
            ((f16_model, lm_out, recipe.lm, plan["lm"]), (f16_mmproj, mm_out, recipe.mmproj, plan["mmproj"]))
            if not (dst.exists() and dst.resolve() == src.resolve())  # f16 recipe in place: nothing to do
            and not (reused and dst == mm_out)]
    with atomic_outputs([dst for _, dst, _, _ in jobs], force) as tmps:
        for (src, _, spec, exp), tmp in zip(jobs, tmps):
            _produce(src, tmp, spec, provenance, verbose)
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
        "fallbacks": fallback_rows("lm", plan["lm"], plan["lm_tensors"])
                     + fallback_rows("mmproj", plan["mmproj"], plan["mm_tensors"]),
        "overridden": [c.name for c in plan["lm"] if c.rule.startswith("override")],
        "mmproj_reused": reused,
    }


Scorer = Callable[[Recipe, dict[str, Any], dict[str, Any]], dict[str, Any]]
"""(recipe, its apply_recipe result, the F16 conversion result) -> fields added to the recipe's row."""


def run_recipes(source: str | Path, workdir: str | Path, recipes: Sequence[Recipe | str | Path], *,
                scorers: Sequence[Scorer] = (), log: Callable[[str], None] | None = None, verbose: bool = False,
                keep_files: bool = True) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The one recipe runner: convert `source` once to F16 (workdir/f16), apply each recipe to it
    (workdir/<recipe>) and score each result with every scorer in turn (fidelity, speed, accuracy: the
    caller's). Returns the conversion result and, per recipe, apply_recipe's result and the scorers'
    fields. keep_files=False deletes a recipe's files once scored (the f16 recipe's are the
    conversion itself and stay)."""
    say = log or (lambda _msg: None)
    chosen = [load_recipe(r) for r in recipes]  # unknown names fail before any work
    work = Path(workdir)
    say(f"converting {source} to F16")
    f16 = convert(source, work / "f16", outtype="f16", force=True)
    rows = []
    for recipe in chosen:
        say(f"{recipe.name}: quantizing ({recipe.encoding}, mmproj {recipe.mmproj_encoding})")
        result = apply_recipe(recipe, f16["model"], f16["mmproj"], work / recipe.name, force=True, verbose=verbose)
        scores: dict[str, Any] = {}
        for scorer in scorers:
            scores.update(scorer(recipe, result, f16))
        rows.append((result, scores))
        if not keep_files and recipe.name != "f16":
            for key in ("model", "mmproj"):
                Path(result[key]).unlink(missing_ok=True)
    return f16, rows


def mmproj_reuse(path: Path, source_sha256: str | None, spec: QuantSpec) -> str:
    """What to do about an mmproj file already at `path` that this run would write with `spec`:
    "absent" (write it), "reuse" (the same file: same checkpoint by imp_gguf.source_sha256, same file
    type, made the same way by this imp-gguf version) or "different" (another file under that name)."""
    if not path.exists():
        return "absent"
    try:
        meta = read_gguf_meta(path)
    except BadInput:
        return "different"
    want_type = int(LlamaFileType.MOSTLY_F16) if spec.is_copy else ftype_id(spec.ftype)
    same = (source_sha256 is not None and meta.get(SOURCE_KEY) == source_sha256
            and meta.get(Keys.General.FILE_TYPE) == want_type and meta.get(VERSION_KEY) == __version__
            and meta.get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH
            and (RECIPE_KEY in meta) == (not spec.is_copy))  # quantizer output vs converter copy
    return "reuse" if same else "different"


def _estimate(choices: list[TypeChoice], tensors: list[dict[str, Any]]) -> tuple[int, int, dict[str, int]]:
    """(bytes, parameters, type histogram) of a file whose tensors get `choices`."""
    nbytes, n_params = estimated_bytes(choices, tensors)
    return nbytes, n_params, dict(sorted(Counter(c.type for c in choices).items()))


def _f16_tables(conv_plan: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """tensor_table-style rows (ggml order) of the F16 files a conversion plan would write."""
    def rows(tensors: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.dst, "type": t.gtype.name, "shape": list(reversed(t.shape))} for t in tensors]
    return rows(conv_plan.lm_tensors), rows(conv_plan.mm_tensors)


CONVERSION_KEYS_DROPPED = ("model", "mmproj", "model_bytes_estimate", "mmproj_bytes_estimate", "outtype",
                           "model_bytes", "peak_rss_mb", "seconds", "outputs", "blocked")


def plan_convert_and_quantize(conv_plan: Any, recipe: Recipe | str | Path, outdir: str | Path, *,
                              force: bool = False, keep_intermediate: bool = False,
                              source_sha256: str | None = None) -> dict[str, Any]:
    """`convert --quant` before any work: the final files with their predicted types and sizes, and
    what would block the run. The keys are those of convert_and_quantize's result (values estimated,
    seconds None), so a dry run and a real run read the same."""
    recipe = load_recipe(recipe)
    out = Path(outdir)
    ident = conv_plan.identity
    lm_t, mm_t = _f16_tables(conv_plan)
    lm_c = expected_types(recipe, lm_t, conv_plan.hp.n_layer, part="lm")
    mm_c = expected_types(recipe, mm_t, 0, part="mmproj")
    lm_bytes, lm_n, lm_types = _estimate(lm_c, lm_t)
    mm_bytes, mm_n, mm_types = _estimate(mm_c, mm_t)
    lm_out, mm_out = out / ident.lm_filename(recipe.encoding), out / ident.mmproj_filename(recipe.mmproj_encoding)
    outputs: list[dict[str, Any]] = [
        {"role": "model", "path": str(lm_out), "type": recipe.encoding, "bytes": lm_bytes},
        {"role": "mmproj", "path": str(mm_out), "type": recipe.mmproj_encoding, "bytes": mm_bytes}]
    copy = recipe.lm.is_copy and recipe.mmproj.is_copy
    if keep_intermediate and not copy:
        outputs += [{"role": f"intermediate {role}", "path": str(out / p.name), "type": "F16", "bytes": b}
                    for role, p, b in (("model", conv_plan.lm_path, conv_plan.lm_bytes),
                                       ("mmproj", conv_plan.mmproj_path, conv_plan.mmproj_bytes))]
    blocked = []
    for o in outputs:
        p = Path(o["path"])
        o["exists"] = p.exists()
        if not p.exists():
            o["action"] = "write"
        elif force:
            o["action"] = "overwrite"
        elif o["role"] == "mmproj" and mmproj_reuse(p, source_sha256, recipe.mmproj) == "reuse":
            o["action"] = "reuse"
        else:
            o["action"] = "blocked"
            blocked.append(f"{p} exists" + ("; it is another mmproj (other checkpoint, type or imp-gguf version)"
                                            if o["role"] == "mmproj" else "") + "; pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        blocked.insert(0, f"--outdir {out} is a file, not a folder")
    conv = {k: v for k, v in conv_plan.summary().items() if k not in CONVERSION_KEYS_DROPPED}
    return conv | {
        "recipe": recipe.name,
        "description": recipe.description,
        "encoding": recipe.encoding,
        "model": str(lm_out),
        "mmproj": str(mm_out),
        "lm_bytes": lm_bytes,
        "mmproj_bytes": mm_bytes,
        "bpw": round(8.0 * lm_bytes / lm_n, 4) if lm_n else 0.0,
        "mmproj_bpw": round(8.0 * mm_bytes / mm_n, 4) if mm_n else 0.0,
        "tensor_types": lm_types,
        "mmproj_tensor_types": mm_types,
        "fallbacks": fallback_rows("lm", lm_c, lm_t) + fallback_rows("mmproj", mm_c, mm_t),
        "overridden": [c.name for c in lm_c if c.rule.startswith("override")],
        "mmproj_reused": outputs[1]["action"] == "reuse",
        "intermediate": ({"model": str(conv_plan.lm_path), "mmproj": str(conv_plan.mmproj_path)}
                         if keep_intermediate and not copy else None),
        "source_sha256": source_sha256,
        "seconds": None,
        "outputs": outputs,
        "blocked": blocked,
    }


def convert_and_quantize(source: str | Path, outdir: str | Path, recipe: Recipe | str | Path, *, force: bool = False,
                         keep_intermediate: bool = False, progress: Callable[[int], None] | None = None,
                         model_name: str | None = None, allow_pickle: bool = False,
                         dry_run: bool = False, chat_template: str | None = None,
                         verbose: bool = False, phase: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Checkpoint -> F16 (in a temporary folder inside outdir unless keep_intermediate) -> recipe outputs.

    Returns the final files only (plan_convert_and_quantize's keys, measured): the converter's summary,
    the recipe's result, "intermediate" (the kept F16 paths, or None) and "outputs" (each final file with
    its type, size and whether it was written, overwritten or reused). With dry_run, the same keys,
    estimated, plus "dry_run": True, and nothing is written. `phase(what, total_bytes)` is called as each
    step starts (the conversion's bytes then go to `progress`).
    """
    t0 = time.perf_counter()
    recipe = load_recipe(recipe)
    out = Path(outdir)
    direct = keep_intermediate or recipe.lm.is_copy and recipe.mmproj.is_copy  # F16 files written in outdir
    if dry_run:
        plan = plan_conversion(source, out, outtype="f16", force=True, model_name=model_name,
                               allow_pickle=allow_pickle, metadata_only=True, chat_template=chat_template)
        return plan_convert_and_quantize(plan, recipe, out, force=force, keep_intermediate=keep_intermediate,
                                         source_sha256=source_sha256_or_none(plan)) | {"dry_run": True}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".imp-gguf-f16-") as tmp:
        work = out if direct else Path(tmp)
        plan = plan_conversion(source, work, outtype="f16", force=force, model_name=model_name,
                               allow_pickle=allow_pickle, chat_template=chat_template)
        # Refuse existing final outputs before the (long) conversion starts; an identical mmproj is reused.
        final = plan_convert_and_quantize(plan, recipe, out, force=force, keep_intermediate=False,
                                          source_sha256=plan.ckpt.source_sha256())
        for o in final["outputs"]:
            if o["action"] == "blocked" and not (direct and Path(o["path"]) in (plan.lm_path, plan.mmproj_path)):
                raise OutputExists(final["blocked"][0])
        if phase:
            phase("converting to F16", plan.lm_bytes + plan.mmproj_bytes)
        run_conversion(plan, force=force, progress=progress)
        if phase:
            phase(f"quantizing to {recipe.encoding} + {recipe.mmproj_encoding} mmproj", 0)
        result = apply_recipe(recipe, plan.lm_path, plan.mmproj_path, out, force=force,
                              keep_intermediate=direct, identity=plan.identity, verbose=verbose)
    actions = {o["role"]: o["action"] for o in final["outputs"]}
    outputs = [{"role": role, "path": result[role], "type": typ, "bytes": result[key], "exists": True,
                "action": "reuse" if role == "mmproj" and result["mmproj_reused"] else
                          "overwrite" if actions[role] == "overwrite" else "write"}
               for role, typ, key in (("model", recipe.encoding, "lm_bytes"),
                                      ("mmproj", recipe.mmproj_encoding, "mmproj_bytes"))]
    kept = keep_intermediate and not (recipe.lm.is_copy and recipe.mmproj.is_copy)
    if kept:
        outputs += [{"role": f"intermediate {role}", "path": str(p), "type": "F16", "bytes": p.stat().st_size,
                     "exists": True, "action": "write"} for role, p in (("model", plan.lm_path),
                                                                      ("mmproj", plan.mmproj_path))]
    conv = {k: v for k, v in final.items() if k not in result}
    return conv | result | {
        "intermediate": {"model": str(plan.lm_path), "mmproj": str(plan.mmproj_path)} if kept else None,
        "seconds": round(time.perf_counter() - t0, 3),
        "outputs": outputs,
        "blocked": [],
    }

