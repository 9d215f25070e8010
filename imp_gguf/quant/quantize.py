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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from gguf import Keys, LlamaFileType

from imp_gguf import __version__
from imp_gguf.errors import BadInput, InternalError, OutputExists
from imp_gguf.gguf_info import MMPROJ_ARCH, read_gguf_meta, summary, tensor_table
from imp_gguf.gguf_naming import SOURCE_KEY, VERSION_KEY, ModelIdentity
from imp_gguf.native_log import quiet_native_stderr
from imp_gguf.convert import CheckpointFacts, ConversionPlan, ConversionResult, JsonDict, OutputRow, blocked_by, plan_output
from imp_gguf.quant.recipes import QuantSpec, Recipe, ftype_id, ggml_type_id
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


@dataclass(frozen=True)
class RecipePlan:
    """Predicted types of both files under a recipe (no writing), with the F16 files' tensor tables and metadata."""

    lm: list[TypeChoice]
    mmproj: list[TypeChoice]
    lm_tensors: list[dict[str, Any]]
    mm_tensors: list[dict[str, Any]]
    lm_meta: dict[str, Any]
    mm_meta: dict[str, Any]


def plan_recipe(recipe: Recipe, f16_model: str | Path, f16_mmproj: str | Path) -> RecipePlan:
    """Predicted types of both files of an F16 conversion under `recipe` (no writing)."""
    lm_meta, mm_meta = read_gguf_meta(f16_model), read_gguf_meta(f16_mmproj)
    if lm_meta.get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH:
        raise BadInput(f"{Path(f16_model).name} is an mmproj, not a language model")
    if mm_meta.get(Keys.General.ARCHITECTURE) != MMPROJ_ARCH:
        raise BadInput(f"{Path(f16_mmproj).name} is not an mmproj (arch {mm_meta.get(Keys.General.ARCHITECTURE)})")
    lm_t, mm_t = tensor_table(f16_model), tensor_table(f16_mmproj)
    return RecipePlan(expected_types(recipe, lm_t, _block_count(lm_meta), part="lm"),
                      expected_types(recipe, mm_t, 0, part="mmproj"), lm_t, mm_t, lm_meta, mm_meta)


def _produce(src: Path, tmp: Path, spec: QuantSpec, provenance: dict[str, str], verbose: bool) -> None:
    if spec.is_copy:
        try:  # a hard link costs nothing and leaves the input intact until the outputs are in place
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        quantize_file(src, tmp, spec, provenance=provenance, verbose=verbose)


@dataclass(frozen=True)
class FallbackRow:
    """A tensor llama.cpp writes wider than the recipe asks (its rows do not divide into the type's blocks)."""

    part: str  # "lm" or "mmproj"
    tensor: str
    ne0: int
    wanted: str
    type: str
    rule: str
    extra_bytes: int  # over the type the recipe wanted

    def to_dict(self) -> JsonDict:
        return {"part": self.part, "tensor": self.tensor, "ne0": self.ne0, "wanted": self.wanted,
                "type": self.type, "rule": self.rule, "extra_bytes": self.extra_bytes}


def fallback_rows(part: str, choices: list[TypeChoice], tensors: list[dict[str, Any]]) -> list[FallbackRow]:
    """llama.cpp's shape fallbacks among `choices` (tensors: their tensor_table rows), each with the bytes it
    costs over the type the recipe wanted."""
    rows = []
    for c in fallbacks(choices):
        got, _ = estimated_bytes([c], tensors)
        wanted, _ = estimated_bytes([replace(c, type=c.wanted)], tensors)
        rows.append(FallbackRow(part, c.name, c.ne0, c.wanted, c.type, c.rule, got - wanted))
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


def fallback_summary(rows: Sequence[FallbackRow]) -> str | None:
    """fallback_rows as one sentence: which tensors (blocks folded: v.blk.{0-25}.ffn_down.weight), why, and
    the size they cost; None when there are none."""
    if not rows:
        return None
    groups: dict[tuple, list[int | None]] = {}
    for r in rows:
        m = re.match(r"^(.*?blk\.)(\d+)(\..*)$", r.tensor)
        name, blk = (f"{m[1]}{{}}{m[3]}", int(m[2])) if m else (r.tensor, None)
        groups.setdefault((name, r.part, r.ne0, r.wanted, r.type), []).append(blk)
    parts = []
    for (name, part, ne0, wanted, typ), blks in groups.items():
        shown = name.format("{" + _numbers([b for b in blks if b is not None]) + "}") if "{}" in name else name
        parts.append(f"{shown} ({part}, rows of {ne0}) {wanted} -> {typ}")
    extra = sum(r.extra_bytes for r in rows)
    return (f"{len(rows)} tensor{'s' if len(rows) > 1 else ''} written wider than the recipe asks, because "
            f"their rows do not divide into the type's blocks (llama.cpp's fallback): {'; '.join(parts)}; "
            f"+{extra / 1e6:.2f} MB")


@dataclass(frozen=True)
class RecipeResult:
    """What a recipe made of an F16 conversion (apply_recipe), or would make (plan_convert_and_quantize):
    its two files, their sizes, types and llama.cpp's shape fallbacks."""

    recipe: str
    description: str
    encoding: str
    model: Path
    mmproj: Path
    lm_bytes: int
    mmproj_bytes: int
    bpw: float
    mmproj_bpw: float
    tensor_types: dict[str, int]
    mmproj_tensor_types: dict[str, int]
    fallbacks: tuple[FallbackRow, ...]
    overridden: tuple[str, ...]  # language-model tensors a recipe override typed
    mmproj_reused: bool  # an identical mmproj was already there

    def to_dict(self) -> JsonDict:
        return {
            "recipe": self.recipe,
            "description": self.description,
            "encoding": self.encoding,
            "model": str(self.model),
            "mmproj": str(self.mmproj),
            "lm_bytes": self.lm_bytes,
            "mmproj_bytes": self.mmproj_bytes,
            "bpw": self.bpw,
            "mmproj_bpw": self.mmproj_bpw,
            "tensor_types": dict(self.tensor_types),
            "mmproj_tensor_types": dict(self.mmproj_tensor_types),
            "fallbacks": [f.to_dict() for f in self.fallbacks],
            "overridden": list(self.overridden),
            "mmproj_reused": self.mmproj_reused,
        }


def recipe_outputs(recipe: Recipe, identity: ModelIdentity, outdir: Path, sizes: tuple[int | None, int | None], *,
                   force: bool, source_sha256: str | None) -> tuple[OutputRow, OutputRow]:
    """The recipe's two files in `outdir` (named by its encodings), each with what the run does about it
    (plan_output); the mmproj may be reused when an identical one is there."""
    def same_mmproj(path: Path) -> bool:
        return mmproj_reuse(path, source_sha256, recipe.mmproj) == "reuse"

    return (plan_output("model", outdir / identity.lm_filename(recipe.encoding), recipe.encoding, sizes[0],
                        force=force),
            plan_output("mmproj", outdir / identity.mmproj_filename(recipe.mmproj_encoding), recipe.mmproj_encoding,
                        sizes[1], force=force, reusable=same_mmproj))


def apply_recipe(recipe: Recipe, f16_model: str | Path, f16_mmproj: str | Path, outdir: str | Path, *,
                 force: bool = False, keep_intermediate: bool = True,
                 identity: ModelIdentity | None = None, verbose: bool = False) -> RecipeResult:
    """Quantize an F16 language model + mmproj by `recipe` into `outdir`, named with the recipe's encoding.

    keep_intermediate=False deletes the F16 inputs once both outputs are in place (a file that is
    itself an output, as with the f16 recipe, is never deleted). Without force, an mmproj already in
    `outdir` that this recipe would write identically (mmproj_reuse) is kept and reported, not an error:
    recipes differ in the language model, most share the Q8_0 mmproj.
    """
    f16_model, f16_mmproj, out = Path(f16_model), Path(f16_mmproj), Path(outdir)
    plan = plan_recipe(recipe, f16_model, f16_mmproj)
    ident = identity or identity_from_gguf(plan.lm_meta, f16_model.stem)
    out.mkdir(parents=True, exist_ok=True)
    lm_row, mm_row = recipe_outputs(recipe, ident, out, (None, None), force=force,
                                    source_sha256=plan.mm_meta.get(SOURCE_KEY))
    lm_out, mm_out = lm_row.path, mm_row.path
    provenance = {RECIPE_KEY: recipe.name, "imp_gguf.recipe_sha256": recipe.digest,
                  "imp_gguf.quantized_by": f"imp-gguf {__version__}"}
    reused = mm_row.action == "reuse"
    jobs = [(src, dst, spec, exp) for src, dst, spec, exp in
            ((f16_model, lm_out, recipe.lm, plan.lm), (f16_mmproj, mm_out, recipe.mmproj, plan.mmproj))
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
    return RecipeResult(
        recipe=recipe.name, description=recipe.description, encoding=recipe.encoding, model=lm_out, mmproj=mm_out,
        lm_bytes=lm_sum["file_bytes"], mmproj_bytes=mm_sum["file_bytes"], bpw=lm_sum["bpw"],
        mmproj_bpw=mm_sum["bpw"], tensor_types=lm_sum["tensor_types"], mmproj_tensor_types=mm_sum["tensor_types"],
        fallbacks=tuple(fallback_rows("lm", plan.lm, plan.lm_tensors)
                        + fallback_rows("mmproj", plan.mmproj, plan.mm_tensors)),
        overridden=tuple(c.name for c in plan.lm if c.rule.startswith("override")),
        mmproj_reused=reused)


Scores = dict[str, Any]
"""A scorer's columns of a recipe's row in the comparison report (kl_mean, decode_tps, accuracy, ...)."""
Scorer = Callable[[Recipe, RecipeResult, ConversionResult], Scores]
"""(recipe, its apply_recipe result, the F16 conversion result) -> fields added to the recipe's row."""


def run_recipes(source: str | Path, workdir: str | Path, recipes: Sequence[Recipe], *,
                scorers: Sequence[Scorer] = (), log: Callable[[str], None] | None = None, verbose: bool = False,
                keep_files: bool = True) -> tuple[ConversionResult, list[tuple[RecipeResult, Scores]]]:
    """The one recipe runner: convert `source` once to F16 (workdir/f16), apply each recipe to it
    (workdir/<recipe>) and score each result with every scorer in turn (fidelity, speed, accuracy: the
    caller's). Returns the conversion result and, per recipe, apply_recipe's result and the scorers'
    fields. keep_files=False deletes a recipe's files once scored (the f16 recipe's are the
    conversion itself and stay)."""
    say = log or (lambda _msg: None)
    work = Path(workdir)
    say(f"converting {source} to F16")
    f16 = convert(source, work / "f16", outtype="f16", force=True)
    rows = []
    for recipe in recipes:
        say(f"{recipe.name}: quantizing ({recipe.encoding}, mmproj {recipe.mmproj_encoding})")
        result = apply_recipe(recipe, f16.model, f16.mmproj, work / recipe.name, force=True, verbose=verbose)
        scores: Scores = {}
        for scorer in scorers:
            scores.update(scorer(recipe, result, f16))
        rows.append((result, scores))
        if not keep_files and recipe.name != "f16":
            result.model.unlink(missing_ok=True)
            result.mmproj.unlink(missing_ok=True)
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


def _f16_tables(conv_plan: ConversionPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """tensor_table-style rows (ggml order) of the F16 files a conversion plan would write."""
    def rows(tensors: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.dst, "type": t.gtype.name, "shape": list(reversed(t.shape))} for t in tensors]
    return rows(conv_plan.lm_tensors), rows(conv_plan.mm_tensors)


@dataclass(frozen=True)
class QuantizedConversion:
    """`convert --quant`'s result (convert_and_quantize) or, with dry_run, what it would be
    (plan_convert_and_quantize): the same fields, sizes estimated, "seconds" None and what would block
    the run under "blocked". The F16 conversion's own files are not in it: only kept ones, as
    "intermediate" (and as outputs)."""

    facts: CheckpointFacts
    recipe: RecipeResult
    intermediate: tuple[Path, Path] | None  # the kept F16 model and mmproj
    source_sha256: str | None
    seconds: float | None
    outputs: tuple[OutputRow, ...]
    blocked: tuple[str, ...]
    dry_run: bool = False

    @property
    def model(self) -> Path:
        return self.recipe.model

    @property
    def mmproj(self) -> Path:
        return self.recipe.mmproj

    def to_dict(self) -> JsonDict:
        return self.facts.to_dict() | self.recipe.to_dict() | {
            "intermediate": ({"model": str(self.intermediate[0]), "mmproj": str(self.intermediate[1])}
                             if self.intermediate else None),
            "source_sha256": self.source_sha256,
            "seconds": self.seconds,
            "outputs": [o.to_dict() for o in self.outputs],
            "blocked": list(self.blocked),
        } | ({"dry_run": True} if self.dry_run else {})


def _keeps_f16(recipe: Recipe, keep_intermediate: bool) -> bool:
    """Whether the F16 files are kept as intermediates (the f16 recipe's F16 files are its outputs)."""
    return keep_intermediate and not (recipe.lm.is_copy and recipe.mmproj.is_copy)


def plan_convert_and_quantize(conv_plan: ConversionPlan, recipe: Recipe, outdir: str | Path, *,
                              force: bool = False, keep_intermediate: bool = False,
                              source_sha256: str | None = None) -> QuantizedConversion:
    """`convert --quant` before any work: the final files with their predicted types and sizes, and
    what would block the run, as convert_and_quantize's result (values estimated, seconds None), so a
    dry run and a real run read the same."""
    out = Path(outdir)
    lm_t, mm_t = _f16_tables(conv_plan)
    lm_c = expected_types(recipe, lm_t, conv_plan.hp.n_layer, part="lm")
    mm_c = expected_types(recipe, mm_t, 0, part="mmproj")
    lm_bytes, lm_n, lm_types = _estimate(lm_c, lm_t)
    mm_bytes, mm_n, mm_types = _estimate(mm_c, mm_t)
    outputs = list(recipe_outputs(recipe, conv_plan.identity, out, (lm_bytes, mm_bytes), force=force,
                                  source_sha256=source_sha256))
    kept = _keeps_f16(recipe, keep_intermediate)
    if kept:
        outputs += [plan_output(f"intermediate {role}", out / p.name, "F16", b, force=force)
                    for role, p, b in (("model", conv_plan.lm_path, conv_plan.lm_bytes),
                                       ("mmproj", conv_plan.mmproj_path, conv_plan.mmproj_bytes))]
    blocked = blocked_by(outputs)
    if out.exists() and not out.is_dir():
        blocked = (f"--outdir {out} is a file, not a folder", *blocked)
    planned = RecipeResult(
        recipe=recipe.name, description=recipe.description, encoding=recipe.encoding, model=outputs[0].path,
        mmproj=outputs[1].path, lm_bytes=lm_bytes, mmproj_bytes=mm_bytes,
        bpw=round(8.0 * lm_bytes / lm_n, 4) if lm_n else 0.0, mmproj_bpw=round(8.0 * mm_bytes / mm_n, 4) if mm_n else 0.0,
        tensor_types=lm_types, mmproj_tensor_types=mm_types,
        fallbacks=tuple(fallback_rows("lm", lm_c, lm_t) + fallback_rows("mmproj", mm_c, mm_t)),
        overridden=tuple(c.name for c in lm_c if c.rule.startswith("override")),
        mmproj_reused=outputs[1].action == "reuse")
    return QuantizedConversion(conv_plan.facts(), planned,
                               (out / conv_plan.lm_path.name, out / conv_plan.mmproj_path.name) if kept else None,
                               source_sha256, None, tuple(outputs), blocked)


def convert_and_quantize(source: str | Path, outdir: str | Path, recipe: Recipe, *, force: bool = False,
                         keep_intermediate: bool = False, progress: Callable[[int], None] | None = None,
                         model_name: str | None = None, allow_pickle: bool = False,
                         dry_run: bool = False, chat_template: str | None = None,
                         verbose: bool = False, phase: Callable[[str, int], None] | None = None) -> QuantizedConversion:
    """Checkpoint -> F16 (in a temporary folder inside outdir unless keep_intermediate) -> recipe outputs.

    Returns the final files only: the checkpoint's facts, the recipe's result, "intermediate" (the kept
    F16 paths, or None) and "outputs" (each final file with its type, size and whether it was written,
    overwritten or reused). With dry_run, plan_convert_and_quantize's estimate, and nothing is written.
    `phase(what, total_bytes)` is called as each step starts (the conversion's bytes then go to `progress`).
    """
    t0 = time.perf_counter()
    out = Path(outdir)
    direct = keep_intermediate or recipe.lm.is_copy and recipe.mmproj.is_copy  # F16 files written in outdir
    if dry_run:
        plan = plan_conversion(source, out, outtype="f16", force=True, model_name=model_name,
                               allow_pickle=allow_pickle, metadata_only=True, chat_template=chat_template)
        return replace(plan_convert_and_quantize(plan, recipe, out, force=force, keep_intermediate=keep_intermediate,
                                                 source_sha256=source_sha256_or_none(plan)), dry_run=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".imp-gguf-f16-") as tmp:
        work = out if direct else Path(tmp)
        plan = plan_conversion(source, work, outtype="f16", force=force, model_name=model_name,
                               allow_pickle=allow_pickle, chat_template=chat_template)
        # Refuse existing final outputs before the (long) conversion starts; an identical mmproj is reused.
        sha = plan.ckpt.source_sha256()
        final = plan_convert_and_quantize(plan, recipe, out, force=force, keep_intermediate=False, source_sha256=sha)
        for o in final.outputs:
            if o.action == "blocked" and not (direct and o.path in (plan.lm_path, plan.mmproj_path)):
                raise OutputExists(o.blocked_by or f"{o.path} exists")
        if phase:
            phase("converting to F16", plan.lm_bytes + plan.mmproj_bytes)
        f16 = run_conversion(plan, force=force, progress=progress)
        if phase:
            phase(f"quantizing to {recipe.encoding} + {recipe.mmproj_encoding} mmproj", 0)
        result = apply_recipe(recipe, plan.lm_path, plan.mmproj_path, out, force=force,
                              keep_intermediate=direct, identity=plan.identity, verbose=verbose)
    outputs = [o.done(size) for o, size in zip(final.outputs, (result.lm_bytes, result.mmproj_bytes))]
    kept = _keeps_f16(recipe, keep_intermediate)
    if kept:  # the conversion's own rows: it wrote them into outdir
        outputs += [o.done(o.bytes or 0, role=f"intermediate {o.role}") for o in f16.outputs]
    return QuantizedConversion(f16.facts, result, (plan.lm_path, plan.mmproj_path) if kept else None, sha,
                               round(time.perf_counter() - t0, 3), tuple(outputs), ())
