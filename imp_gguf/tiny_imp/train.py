"""Train the tiny Imp on CPU in a few minutes and save it as an Imp checkpoint (layout A).

    python -m imp_gguf.tiny_imp.train --out DIR [--seed 0] [--steps N]

Each training sequence is exactly Imp's prompt `S USER: <image>\\n{q} ASSISTANT:` followed by
` {answer}</s>`, with the P image vectors in place of `<image>`; the loss covers the answer tokens
and `</s>` only. Seeded and reproducible: torch.manual_seed, string-keyed data streams, one torch
thread by default (a different thread count sums in a different order and gives other weights).
Trained in float32, saved as bf16 sharded safetensors after checking the bf16 weights still answer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from imp_gguf.tiny_imp.evaluate import heldout_set, model_accuracy, pytorch_accuracy

# Idle OpenMP workers must sleep, not spin: on a shared 2-core machine spinning made each step
# 30x slower. Only effective when torch's OpenMP runtime starts after this line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402

    from imp_gguf.synthetic_checkpoints.tiny import padded_rows  # noqa: E402
    from imp_gguf.tiny_imp import data as D  # noqa: E402
    from imp_gguf.tiny_imp.model import (TextCodec, TinySpec, build, n_params, pixels, save_checkpoint,
                                         write_tokenizer)
except ModuleNotFoundError as exc:  # torch/transformers: the reference extra, not a base dependency
    if __name__ != "__main__":
        raise
    print(f"error: training needs {exc.name}: pip install 'imp-gguf[reference]'", file=sys.stderr)
    raise SystemExit(2) from None

# The committed checkpoint is these defaults with seed 0: about 13 min on one idle core.
DEFAULTS: dict[str, Any] = {"vision_steps": 800, "vision_lr": 3e-3, "vision_lr_scale": 0.1, "steps": 4000,
                             "images_per_step": 10, "lr": 1e-3, "warmup": 60, "weight_decay": 0.01}


def _batch(codec: TextCodec, groups: list[list[D.Example]], size: int) -> tuple[torch.Tensor, ...]:
    """(prefix ids [Lp], pixels [n_img, 3, R, R], suffix ids [n_img * k, Ls], labels [n_img * k, Ls]);
    the suffix is `\n{q} ASSISTANT: {answer}</s>`, labelled on the answer and `</s>` only."""
    before, _ = codec.prompt("x")
    suffixes, labels = [], []
    for group in groups:
        for ex in group:
            _, after = codec.prompt(ex.question)
            ans = codec.answer(ex.answer)
            suffixes.append(after + ans)
            labels.append([-100] * len(after) + ans)
    width = max(map(len, suffixes))
    pad = codec.stop_id
    suf = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes])
    lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    return torch.tensor(before), pixels([g[0].image for g in groups], size), suf, lab


def loss_fn(model: Any, pre: torch.Tensor, pix: torch.Tensor, suf: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    h = model.hidden_shared(pre, pix, suf[:, :-1])  # position t predicts suffix token t + 1
    mask = lab[:, 1:] != -100
    return F.cross_entropy(model.lm.lm_head(h[mask]), lab[:, 1:][mask])


def warm_up_vision(model: Any, seed: int, steps: int, n_images: int = 32, lr: float = DEFAULTS["vision_lr"],
                   log: Any = print, log_every: int = 50) -> list[float]:
    """Stage 1, a tiny stand-in for SigLIP's own pre-training: train the vision tower alone, through
    throw-away linear heads, to name for every patch the shape in it and its colour (or the
    background's), and, from the mean of the patch tokens, the whole scene (background, count, each
    shape's colour and place). Image tokens whose plain average describes the scene let the
    randomly initialised LLM use them before its attention learns to pick out single patches. Stage 2 then trains the
    whole model on the VQA data (the heads are dropped)."""
    from torch import nn

    width = model.vision.config.hidden_size
    local = nn.ModuleList([nn.Linear(width, len(D.SHAPES) + 1), nn.Linear(width, len(D.COLOURS))])
    scene = nn.ModuleList([nn.Linear(width, n) for n in D.SCENE_CLASSES])
    params = list(model.vision.parameters()) + list(local.parameters()) + list(scene.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    size = model.vision.config.image_size
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, max(1, steps // 10))
        batch = D.vision_batch(seed, step, n_images)
        pix = pixels([im for im, _ in batch], size)
        targets = [D.patch_targets(sc) for _, sc in batch]
        shape_t = torch.tensor([t[0] for t in targets]).flatten()
        colour_t = torch.tensor([t[1] for t in targets]).flatten()
        h = model.vision.embeddings(pix)
        for layer in model.vision.encoder.layers:
            h = layer(h, None)
        scene_t = torch.tensor([D.scene_targets(sc) for _, sc in batch])
        pooled = h.mean(dim=1)
        h = h.reshape(-1, width)
        loss = F.cross_entropy(local[0](h), shape_t) + F.cross_entropy(local[1](h), colour_t)
        parts = [F.cross_entropy(head(pooled), scene_t[:, i]) for i, head in enumerate(scene)]
        loss = loss + sum(parts) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            log(f"vision {step:4d}  loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.4f}  "
                f"{time.perf_counter() - t0:6.1f}s")
    return losses


@torch.no_grad()
def whiten_projector(model: Any, seed: int, n_images: int = 128, eps: float = 1e-3) -> None:
    """Data-dependent init of the projector's first Linear (still a plain Linear, GELU, Linear):
    rotate and whiten the warmed-up vision features (PCA over a batch of scenes), so the LLM starts
    from image tokens in which every direction -- colour, shape, place -- is equally loud. Without
    it the loud colour directions are learnt first and the faint shape ones much later."""
    size = model.vision.config.image_size
    feats = []
    for k in range(0, n_images, 32):
        batch = D.vision_batch(seed + 7919, k, 32)
        h = model.vision.embeddings(pixels([im for im, _ in batch], size))
        for layer in model.vision.encoder.layers:
            h = layer(h, None)
        feats.append(h.reshape(-1, h.shape[-1]))
    f = torch.cat(feats).double()
    mu = f.mean(0)
    lam, vecs = torch.linalg.eigh(torch.cov((f - mu).T))
    white = (vecs / lam.clamp_min(eps * lam.max()).sqrt()).T  # rows: whitened directions
    lin0 = model.projector[0]
    gen = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(lin0.weight.shape[0], white.shape[0], generator=gen, dtype=torch.float64))
    w = rot @ white
    lin0.weight.copy_(w.float())
    lin0.bias.copy_((-(w @ mu)).float())


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.enable_grad()  # whatever the caller's grad mode
def train(out: str | Path | None, *, seed: int = 0, steps: int = DEFAULTS["steps"],
          images_per_step: int = DEFAULTS["images_per_step"], lr: float = DEFAULTS["lr"], warmup: int = DEFAULTS["warmup"],
          weight_decay: float = DEFAULTS["weight_decay"], vision_steps: int = DEFAULTS["vision_steps"],
          vision_lr_scale: float = DEFAULTS["vision_lr_scale"], whiten: bool = True, eval_n: int = 250, log_every: int = 50, eval_every: int = 0,
          threads: int = 1, spec: TinySpec = TinySpec(), log: Any = print) -> dict[str, Any]:
    """Train; if out is given, write the checkpoint folder there (replacing it). Returns a report
    with the per-step losses, timings and held-out accuracies (float32 and the saved bf16)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    work = Path(out).with_name(Path(out).name + ".tmp") if out else None
    if work is None:
        import tempfile

        tmpdir = tempfile.TemporaryDirectory(prefix="tiny-imp-")
        work = Path(tmpdir.name) / spec.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n_tok, ids = write_tokenizer(work, spec.dims.bpe_vocab)
    n_rows = padded_rows(n_tok)
    torch.manual_seed(seed)
    model, lm_cfg, vcfg = build(spec, n_rows, ids)
    codec = TextCodec(work)
    log(f"tiny imp: {n_params(model) / 1e6:.2f} M params ({n_params(model.lm) / 1e6:.2f} M LLM), vocab {n_tok} "
        f"-> {n_rows} rows, {spec.n_image_tokens} image tokens, prompt {len(codec.prompt('x')[0])} tokens before the image")
    t_train = time.perf_counter()
    vision_losses = warm_up_vision(model, seed, vision_steps, log=log, log_every=log_every) if vision_steps else []
    if whiten and vision_steps:
        whiten_projector(model, seed)
    groups: dict[tuple[float, float], list[Any]] = {}
    for n, p in model.named_parameters():
        scale = vision_lr_scale if n.startswith("vision.") else 1.0
        if scale == 0.0:
            p.requires_grad_(False)
            continue
        wd = weight_decay if p.ndim >= 2 and "embed" not in n else 0.0
        groups.setdefault((scale, wd), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr_scale": sc} for (sc, wd), ps in groups.items()],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)
    losses: list[float] = []
    probe = heldout_set(50, seed=2000 + seed) if eval_every else []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup) * g["lr_scale"]
        batch = _batch(codec, D.train_batch(seed, step, images_per_step), spec.image_size)
        loss = loss_fn(model, *batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            recent = losses[-log_every:]
            log(f"step {step:5d}  loss {sum(recent) / len(recent):.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{time.perf_counter() - t_train:6.1f}s")
        if eval_every and step % eval_every == eval_every - 1:
            model.eval()
            log(f"step {step:5d}  held-out accuracy (n=50): {model_accuracy(model, codec, probe, spec.image_size):.2f}")
            model.train()
    train_seconds = time.perf_counter() - t_train
    model.eval()
    report: dict[str, Any] = {"seed": seed, "steps": steps, "images_per_step": images_per_step, "lr": lr,
                              "train_seconds": round(train_seconds, 1), "final_loss": losses[-1] if losses else None,
                              "losses": losses, "vision_losses": vision_losses, "params": n_params(model)}
    items = heldout_set(eval_n, seed=1000 + seed) if eval_n else []
    if items:
        report["heldout_f32"] = model_accuracy(model, codec, items, spec.image_size)
        log(f"held-out accuracy (float32, n={len(items)}): {report['heldout_f32']:.3f}")
    if out is not None:
        extra = {"trained_by": "python -m imp_gguf.tiny_imp.train", "seed": seed, "threads": threads, "vision_steps": vision_steps,
                 "steps": steps,
                 "images_per_step": images_per_step, "lr": lr, "train_seconds": round(train_seconds, 1),
                 "final_loss": round(losses[-1], 5) if losses else None}
        save_checkpoint(model, spec, lm_cfg, vcfg, ids, work, dtype=torch.bfloat16, extra=extra)
        dest = Path(out)
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
        report["checkpoint"] = str(dest)
        report["checkpoint_bytes"] = sum(f.stat().st_size for f in dest.iterdir())
        if items:
            report["heldout_bf16"] = pytorch_accuracy(dest, items)
            log(f"held-out accuracy (saved bf16 checkpoint, n={len(items)}): {report['heldout_bf16']:.3f}")
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"trained in {train_seconds:.0f}s ({report['total_seconds']:.0f}s in all)")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imp_gguf.tiny_imp.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder to write (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-steps", type=int, default=DEFAULTS["vision_steps"], help="stage 1 (vision tower alone)")
    ap.add_argument("--vision-lr-scale", type=float, default=DEFAULTS["vision_lr_scale"],
                    help="stage 2 learning rate of the vision tower, relative (0: frozen)")
    ap.add_argument("--no-whiten", action="store_true", help="keep the projector's random init")
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="stage 2 (the whole model on VQA)")
    ap.add_argument("--images-per-step", type=int, default=DEFAULTS["images_per_step"],
                    help=f"scenes per step, each asked all {len(D.KINDS)} question kinds")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--eval-n", type=int, default=250, help="held-out questions to score at the end (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it; 1 is fastest here)")
    ap.add_argument("--layers", type=int, default=TinySpec().dims.n_layer, help="LLM blocks (2-4)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=0, help="score 50 held-out questions every N steps")
    ap.add_argument("--report", help="also write the report (without per-step losses) as JSON here")
    a = ap.parse_args(argv)
    spec = TinySpec()
    if a.layers != spec.dims.n_layer:
        spec = replace(spec, dims=replace(spec.dims, n_layer=a.layers))
    rep = train(a.out, seed=a.seed, steps=a.steps, vision_steps=a.vision_steps, vision_lr_scale=a.vision_lr_scale, whiten=not a.no_whiten, images_per_step=a.images_per_step, lr=a.lr, eval_n=a.eval_n,
                threads=a.threads, log_every=a.log_every, eval_every=a.eval_every, spec=spec, log=lambda s: print(s, flush=True))
    if a.report:
        Path(a.report).write_text(json.dumps({k: v for k, v in rep.items() if not k.endswith("losses")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
