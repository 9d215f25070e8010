"""Checkpoint folder -> language-model GGUF + mmproj GGUF. Plan first (validates everything,
touches no output), then stream both files to temporary names and rename them together.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from imp_gguf.checkpoint import Checkpoint, open_checkpoint
from imp_gguf.hub import HUB_ID, HubSource
from imp_gguf.errors import BadInput, InternalError
from imp_gguf.converters.registry import detect_family
from imp_gguf.converters.base import LMFamily, LMHparams
from imp_gguf.converters.siglip import VisionHparams, add_mmproj_kv, plan as plan_vision, vision_hparams
from imp_gguf.gguf_info import MMPROJ_ARCH
from imp_gguf.gguf_naming import ModelIdentity, add_general
from imp_gguf.policy import OUTTYPES, parse_outtype, tensor_type
from imp_gguf.chat_templates import resolve_template
from imp_gguf.tokenizer import Vocab, load_vocab
from imp_gguf.writer import PlannedTensor, atomic_outputs, check_output, kv_adder, write_gguf

DEFAULTS_KEY = "imp_gguf.config_defaults"  # ["Imp's ImpConfig (Phi-2 values): n_head=32, rotary_dim=32", ...]


JsonDict = dict[str, object]  # what a result's to_dict() gives the CLI's --json


@dataclass(frozen=True)
class Hparams:
    """The hyper-parameters a conversion writes ("hparams" in its JSON)."""

    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx: int
    rope_dims: int
    rope_theta: float
    norm_eps: float
    vision_n_embd: int
    vision_blocks: int
    vision_head_count: int
    patch_size: int

    def to_dict(self) -> JsonDict:
        return dict(asdict(self))


@dataclass(frozen=True)
class TakenDefault:
    """A value config.json left out, and the config class whose default it is."""

    value: object
    source: str  # "from" in the JSON

    def to_dict(self) -> JsonDict:
        return {"value": self.value, "from": self.source}


@dataclass(frozen=True)
class CheckpointFacts:
    """What a conversion found in the checkpoint: the part of every conversion result (plain or
    `--quant`, dry or real) that does not depend on the files written."""

    checkpoint: str
    source: HubSource | None
    variant: str
    variant_description: str
    arch: str
    image_size: int
    image_tokens: int
    image_aspect_ratio: str
    chat_template: str  # the name of the template written (or the .jinja file's name)
    vision_blocks_run: int
    lm_tensors: int
    mmproj_tensors: int
    hparams: Hparams
    defaults: dict[str, TakenDefault]  # config.json left them out
    notes: tuple[str, ...]

    def to_dict(self) -> JsonDict:
        return {
            "checkpoint": self.checkpoint,
            "source": {"repo": self.source.repo, "commit": self.source.commit} if self.source else None,
            "variant": self.variant,
            "variant_description": self.variant_description,
            "arch": self.arch,
            "image_size": self.image_size,
            "image_tokens": self.image_tokens,
            "image_aspect_ratio": self.image_aspect_ratio,
            "chat_template": self.chat_template,
            "vision_blocks_run": self.vision_blocks_run,
            "lm_tensors": self.lm_tensors,
            "mmproj_tensors": self.mmproj_tensors,
            "hparams": self.hparams.to_dict(),
            "defaults": {k: d.to_dict() for k, d in self.defaults.items()},
            "notes": list(self.notes),
        }


Action = Literal["write", "overwrite", "reuse", "blocked"]


@dataclass(frozen=True)
class OutputRow:
    """One file a run writes, overwrites or reuses, or that blocks it ("outputs" in the JSON). Made by
    plan_output (before the run, or for a dry run) and OutputRow.done (after it) only."""

    role: str  # "model", "mmproj", "intermediate model", "intermediate mmproj"
    path: Path
    type: str  # the file-name encoding: F16, Q4_K_M, ...
    bytes: int | None  # estimated before the run, measured after it
    exists: bool
    action: Action
    blocked_by: str | None = None  # why, when action is "blocked" (the "blocked" list of the JSON)

    def done(self, nbytes: int, role: str | None = None) -> OutputRow:
        """The row once the run has put the file in place: as planned (written, overwritten, reused),
        now with its measured size."""
        if self.action == "blocked":
            raise InternalError(f"{self.path} was written although {self.blocked_by}")
        return replace(self, role=role or self.role, bytes=nbytes, exists=True)

    def to_dict(self) -> JsonDict:
        return {"role": self.role, "path": str(self.path), "type": self.type, "bytes": self.bytes,
                "exists": self.exists, "action": self.action}


def plan_output(role: str, path: Path, type_: str, nbytes: int | None, *, force: bool,
                reusable: Callable[[Path], bool] | None = None) -> OutputRow:
    """The one decision about an output file before a run (a dry run shows it, a real run acts on it):
    write it (absent), overwrite it (force), reuse it (`reusable` says the file there already is this
    output: an identical mmproj), or be blocked by it."""
    exists = path.exists()
    if not exists:
        return OutputRow(role, path, type_, nbytes, False, "write")
    if force:
        return OutputRow(role, path, type_, nbytes, True, "overwrite")
    if reusable is not None and reusable(path):
        return OutputRow(role, path, type_, nbytes, True, "reuse")
    other = f"; it is another {role} (other checkpoint, type or imp-gguf version)" if reusable is not None else ""
    return OutputRow(role, path, type_, nbytes, True, "blocked", f"{path} exists{other}; pass --force to overwrite it")


def blocked_by(rows: Sequence[OutputRow]) -> tuple[str, ...]:
    """What stops a run: each blocked row's reason."""
    return tuple(r.blocked_by for r in rows if r.blocked_by)


@dataclass(frozen=True)
class ConversionResult:
    """A conversion's outcome (run_conversion) or, with dry_run, what it would be (dry_run_result):
    the same fields, sizes estimated, "seconds" None and what would block the run under "blocked"."""

    facts: CheckpointFacts
    outtype: str
    model: Path
    mmproj: Path
    model_bytes_estimate: int
    mmproj_bytes_estimate: int
    model_bytes: int
    mmproj_bytes: int
    seconds: float | None
    peak_rss_mb: float | None
    source_sha256: str | None
    outputs: tuple[OutputRow, ...]
    blocked: tuple[str, ...]
    dry_run: bool = False

    def to_dict(self) -> JsonDict:
        return self.facts.to_dict() | {
            "outtype": self.outtype,
            "model": str(self.model),
            "mmproj": str(self.mmproj),
            "model_bytes_estimate": self.model_bytes_estimate,
            "mmproj_bytes_estimate": self.mmproj_bytes_estimate,
            "model_bytes": self.model_bytes,
            "mmproj_bytes": self.mmproj_bytes,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "source_sha256": self.source_sha256,
            "outputs": [o.to_dict() for o in self.outputs],
            "blocked": list(self.blocked),
        } | ({"dry_run": True} if self.dry_run else {})


@dataclass
class ConversionPlan:
    ckpt: Checkpoint
    family: type[LMFamily]
    hp: LMHparams
    vh: VisionHparams
    vocab: Vocab
    identity: ModelIdentity
    outtype: str
    lm_tensors: list[PlannedTensor]
    mm_tensors: list[PlannedTensor]
    lm_path: Path
    mmproj_path: Path
    notes: list[str] = field(default_factory=list)
    chat_template: str = ""  # the name of the template written (or the .jinja file's name)

    @property
    def lm_bytes(self) -> int:
        return sum(t.nbytes for t in self.lm_tensors)

    @property
    def mmproj_bytes(self) -> int:
        return sum(t.nbytes for t in self.mm_tensors)

    @property
    def encoding(self) -> str:
        """The file-name tag of both files (F16, ...)."""
        return OUTTYPES[self.outtype].encoding

    def facts(self) -> CheckpointFacts:
        hp, vh = self.hp, self.vh
        return CheckpointFacts(
            checkpoint=str(self.ckpt.root), source=self.ckpt.hub, variant=self.family.name,
            variant_description=self.family.description, arch=self.family.arch, image_size=vh.image_size,
            image_tokens=vh.n_patches, image_aspect_ratio=vh.aspect, chat_template=self.chat_template,
            vision_blocks_run=vh.run_blocks, lm_tensors=len(self.lm_tensors), mmproj_tensors=len(self.mm_tensors),
            hparams=Hparams(n_embd=hp.n_embd, n_layer=hp.n_layer, n_ff=hp.n_ff, n_head=hp.n_head,
                            n_head_kv=hp.n_head_kv, n_vocab=hp.n_vocab, n_ctx=hp.n_ctx, rope_dims=hp.rope_dims,
                            rope_theta=hp.rope_theta, norm_eps=hp.norm_eps, vision_n_embd=vh.n_embd,
                            vision_blocks=vh.run_blocks, vision_head_count=vh.n_head, patch_size=vh.patch_size),
            defaults=self.defaults, notes=tuple(self.notes))

    @property
    def defaults(self) -> dict[str, TakenDefault]:
        """Values config.json left out, taken from the defaults of the class that wrote it."""
        out = {k: TakenDefault(v, self.hp.defaults_from) for k, v in self.hp.defaults.items()}
        out.update({k: TakenDefault(v, "SigLIP-SO400M/14-384 config") for k, v in self.vh.defaults.items()})
        return out


def plan_conversion(source: str | Path, outdir: str | Path, *, outtype: str = "f16", force: bool = False,
                    model_name: str | None = None, allow_pickle: bool = False,
                    lm_filename: str | None = None, mmproj_filename: str | None = None,
                    metadata_only: bool = False, chat_template: str | None = None) -> ConversionPlan:
    """metadata_only: for a dry run (a hub id's weights are not downloaded; the plan cannot be run)."""
    outtype = parse_outtype(outtype).name
    ckpt = open_checkpoint(source, allow_pickle=allow_pickle, metadata_only=metadata_only)
    family = detect_family(ckpt.config, set(ckpt.tensors))
    hp = family.hparams(ckpt.config, ckpt.tensors)
    lm_rows = family.plan(hp, ckpt.tensors)
    vh = vision_hparams(ckpt.config, ckpt.tensors, family.prefix, hp.n_embd)
    mm_rows = plan_vision(vh, ckpt.tensors, family.prefix)
    template_name, template = resolve_template(chat_template, family.chat_template, family.other_chat_templates)
    vocab = load_vocab(ckpt, family, hp.n_vocab, template)
    notes = list(vh.notes)

    def planned(rows: list[tuple[str, str, tuple[int, ...]]]) -> list[PlannedTensor]:
        out = []
        for src, dst, shape in rows:
            gtype, note = tensor_type(dst, shape, outtype)
            if note:
                notes.append(note)
            ref = ckpt.tensors[src]
            out.append(PlannedTensor(src, dst, shape, gtype, ref.load, source=ref))
        return out

    lm_tensors, mm_tensors = planned(lm_rows), planned(mm_rows)
    n_params = sum(math.prod(t.shape) for t in lm_tensors)
    identity = ModelIdentity.from_id(_model_id(str(source), ckpt, model_name), n_params)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--outdir {out} is a file, not a folder")
    enc = OUTTYPES[outtype].encoding
    lm_path = out / (lm_filename or identity.lm_filename(enc))
    mm_path = out / (mmproj_filename or identity.mmproj_filename(enc))
    if out.is_dir():
        for p in (lm_path, mm_path):
            check_output(p, force)
    return ConversionPlan(ckpt, family, hp, vh, vocab, identity, outtype, lm_tensors, mm_tensors,
                          lm_path, mm_path, notes, chat_template=template_name)


def _model_id(spec: str, ckpt: Checkpoint, override: str | None) -> str:
    """--model-name, else the hub repo it was downloaded from, else the config's own hub id when it names this folder
    (it carries the organization for general.base_model.*), else the folder name."""
    if override:
        return override
    if ckpt.hub:  # a hub id, or a snapshot folder of the Hugging Face cache
        return ckpt.hub.repo
    folder = ckpt.root.resolve().name
    own = ckpt.config.get("_name_or_path")
    if isinstance(own, str) and HUB_ID.match(own) and own.split("/")[-1].lower() == folder.lower():
        return own
    return folder


def run_conversion(plan: ConversionPlan, *, force: bool = False,
                   progress: Callable[[int], None] | None = None) -> ConversionResult:
    """Write both files; returns the plan's facts plus sizes, time and peak memory."""
    t0 = time.perf_counter()
    outputs = output_rows(plan, force=force)
    plan.lm_path.parent.mkdir(parents=True, exist_ok=True)
    sha = plan.ckpt.source_sha256()
    ftype = OUTTYPES[plan.outtype].file_type
    fam, hp, vh, ident = plan.family, plan.hp, plan.vh, plan.identity

    def lm_general(w: Any) -> None:
        add_general(w, ident, file_type=ftype, kind="model", variant=fam.name, source_sha256=sha,
                    hub=plan.ckpt.hub, license=plan.ckpt.license(), description=f"Imp language model ({fam.description}), converted by imp-gguf")

    def mm_general(w: Any) -> None:
        add_general(w, ident, file_type=ftype, kind="mmproj", variant=fam.name, source_sha256=sha,
                    hub=plan.ckpt.hub, license=plan.ckpt.license(), description=f"Imp vision tower (SigLIP, {vh.run_blocks} blocks, {vh.image_size} px) "
                                "+ mlp2x_gelu projector, converted by imp-gguf")

    def defaults_kv(kind: str) -> Callable[[Any], None]:
        """What the config left out, one "source: k=v, ..." line per config class, for `inspect`."""
        def add(w: Any) -> None:
            groups: dict[str, list[str]] = {}
            for k, d in plan.defaults.items():
                if k.startswith("vision.") == (kind == "mmproj"):
                    groups.setdefault(d.source, []).append(f"{k}={d.value}")
            if groups:
                w.add_array(DEFAULTS_KEY, [f"{src}: {', '.join(items)}" for src, items in groups.items()])
        return add

    with atomic_outputs([plan.lm_path, plan.mmproj_path], force) as (lm_tmp, mm_tmp):
        lm_size = write_gguf(lm_tmp, fam.arch, kv_adder(lm_general, lambda w: fam.add_arch_kv(w, hp),
                                                        plan.vocab.add_to, defaults_kv("model")), plan.lm_tensors,
                             progress=progress)
        mm_size = write_gguf(mm_tmp, MMPROJ_ARCH,
                             kv_adder(mm_general, lambda w: add_mmproj_kv(w, vh), defaults_kv("mmproj")),
                             plan.mm_tensors, progress=progress)
    return _result(plan, outputs=tuple(o.done(size) for o, size in zip(outputs, (lm_size, mm_size))),
                   sizes=(lm_size, mm_size), seconds=round(time.perf_counter() - t0, 3),
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   source_sha256=sha)


def _result(plan: ConversionPlan, *, outputs: tuple[OutputRow, ...], sizes: tuple[int, int], seconds: float | None,
            peak_rss_mb: float | None, source_sha256: str | None, dry_run: bool = False) -> ConversionResult:
    return ConversionResult(plan.facts(), plan.outtype, plan.lm_path, plan.mmproj_path, plan.lm_bytes,
                            plan.mmproj_bytes, sizes[0], sizes[1], seconds, peak_rss_mb, source_sha256, outputs,
                            blocked_by(outputs), dry_run)


def output_rows(plan: ConversionPlan, *, force: bool = False) -> tuple[OutputRow, OutputRow]:
    """The two files a conversion writes, each with what the run does about it (plan_output)."""
    return (plan_output("model", plan.lm_path, plan.encoding, plan.lm_bytes, force=force),
            plan_output("mmproj", plan.mmproj_path, plan.encoding, plan.mmproj_bytes, force=force))


def source_sha256_or_none(plan: ConversionPlan) -> str | None:
    """The checkpoint identity, or None when its weight files are not at hand (a hub dry run)."""
    try:
        return plan.ckpt.source_sha256() if plan.ckpt.weight_files else None
    except OSError:
        return None


def dry_run_result(plan: ConversionPlan, *, force: bool = False) -> ConversionResult:
    """What run_conversion would return, before any work: the same fields, sizes estimated, what would
    block the run under "blocked", and dry_run True."""
    return _result(plan, outputs=output_rows(plan, force=force), sizes=(plan.lm_bytes, plan.mmproj_bytes),
                   seconds=None, peak_rss_mb=None, source_sha256=source_sha256_or_none(plan), dry_run=True)


def convert(source: str | Path, outdir: str | Path, *, outtype: str = "f16", force: bool = False,
            model_name: str | None = None, allow_pickle: bool = False, lm_filename: str | None = None,
            mmproj_filename: str | None = None, chat_template: str | None = None,
            progress: Callable[[int], None] | None = None) -> ConversionResult:
    """Library one-call form: plan and write (paths: result.model, result.mmproj)."""
    plan = plan_conversion(source, outdir, outtype=outtype, force=force, model_name=model_name,
                           allow_pickle=allow_pickle, lm_filename=lm_filename, mmproj_filename=mmproj_filename,
                           chat_template=chat_template)
    return run_conversion(plan, force=force, progress=progress)
