"""Checkpoint folder -> language-model GGUF + mmproj GGUF. Plan first (validates everything,
touches no output), then stream both files to temporary names and rename them together.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from imp_gguf.checkpoint import Checkpoint, open_checkpoint
from imp_gguf.hub import HUB_ID
from imp_gguf.errors import BadInput
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

    def summary(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.ckpt.root),
            "source": {"repo": self.ckpt.hub.repo, "commit": self.ckpt.hub.commit} if self.ckpt.hub else None,
            "variant": self.family.name,
            "variant_description": self.family.description,
            "arch": self.family.arch,
            "outtype": self.outtype,
            "image_size": self.vh.image_size,
            "image_tokens": self.vh.n_patches,
            "image_aspect_ratio": self.vh.aspect,
            "chat_template": self.chat_template,
            "vision_blocks_run": self.vh.run_blocks,
            "lm_tensors": len(self.lm_tensors),
            "mmproj_tensors": len(self.mm_tensors),
            "model": str(self.lm_path),
            "mmproj": str(self.mmproj_path),
            "model_bytes_estimate": self.lm_bytes,
            "mmproj_bytes_estimate": self.mmproj_bytes,
            "hparams": {"n_embd": self.hp.n_embd, "n_layer": self.hp.n_layer, "n_ff": self.hp.n_ff,
                        "n_head": self.hp.n_head, "n_head_kv": self.hp.n_head_kv, "n_vocab": self.hp.n_vocab,
                        "n_ctx": self.hp.n_ctx, "rope_dims": self.hp.rope_dims, "rope_theta": self.hp.rope_theta,
                        "norm_eps": self.hp.norm_eps, "vision_n_embd": self.vh.n_embd,
                        "vision_blocks": self.vh.run_blocks, "vision_head_count": self.vh.n_head,
                        "patch_size": self.vh.patch_size},
            "defaults": self.defaults,
            "notes": self.notes,
        }

    @property
    def defaults(self) -> dict[str, dict[str, Any]]:
        """Values config.json left out, taken from the defaults of the class that wrote it."""
        out = {k: {"value": v, "from": self.hp.defaults_from} for k, v in self.hp.defaults.items()}
        out.update({k: {"value": v, "from": "SigLIP-SO400M/14-384 config"} for k, v in self.vh.defaults.items()})
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
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write both files; returns the summary plus sizes, time and peak memory."""
    t0 = time.perf_counter()
    outputs, _ = output_rows(plan, force=force)
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
                    groups.setdefault(d["from"], []).append(f"{k}={d['value']}")
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
    result = plan.summary()
    result.update({
        "model_bytes": lm_size,
        "mmproj_bytes": mm_size,
        "seconds": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "source_sha256": sha,
        "outputs": [o | {"bytes": size, "exists": True} for o, size in zip(outputs, (lm_size, mm_size))],
        "blocked": [],
    })
    return result


def output_rows(plan: ConversionPlan, *, force: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The two files a conversion writes (role, path, type, estimated bytes, exists, action) and what
    would block writing them (an existing file without force)."""
    rows, blocked = [], []
    for role, path, nbytes in (("model", plan.lm_path, plan.lm_bytes), ("mmproj", plan.mmproj_path, plan.mmproj_bytes)):
        exists = path.exists()
        action = "write" if not exists else "overwrite" if force else "blocked"
        if action == "blocked":
            blocked.append(f"{path} exists; pass --force to overwrite it")
        rows.append({"role": role, "path": str(path), "type": OUTTYPES[plan.outtype].encoding, "bytes": nbytes,
                     "exists": exists, "action": action})
    return rows, blocked


def source_sha256_or_none(plan: ConversionPlan) -> str | None:
    """The checkpoint identity, or None when its weight files are not at hand (a hub dry run)."""
    try:
        return plan.ckpt.source_sha256() if plan.ckpt.weight_files else None
    except OSError:
        return None


def dry_run_result(plan: ConversionPlan, *, force: bool = False) -> dict[str, Any]:
    """What run_conversion would return, before any work: the same keys, sizes estimated, what would
    block the run under "blocked", and "dry_run": True."""
    outputs, blocked = output_rows(plan, force=force)
    return plan.summary() | {
        "model_bytes": plan.lm_bytes,
        "mmproj_bytes": plan.mmproj_bytes,
        "seconds": None,
        "peak_rss_mb": None,
        "source_sha256": source_sha256_or_none(plan),
        "outputs": outputs,
        "blocked": blocked,
        "dry_run": True,
    }


def convert(source: str | Path, outdir: str | Path, **kw: Any) -> dict[str, Any]:
    """Library one-call form: plan and write; returns the result dict (paths under "model"/"mmproj")."""
    force = kw.get("force", False)
    progress = kw.pop("progress", None)
    return run_conversion(plan_conversion(source, outdir, **kw), force=force, progress=progress)
