"""Full-size stand-ins for the five released Imp checkpoints, in their published form.

Real weights cannot be downloaded here, so each release is rebuilt from what is known of its files
(docs/architecture.md, "Released checkpoints"): its `config.json` as published (verbatim for
imp-v1-3b, the 2B and the 4B, shipped in imp_gguf/data/published/; the 3B-Phi2 and 3B-196 configs
have the same form: no LM sizes), the tensor names of its layout, the shapes of the real model, its
dtype and shard count, and its tokenizer file set with the real vocabulary sizes and special ids.

Names and shapes come from transformers' own classes built on the meta device (Phi / Qwen2 / Phi3 /
SigLIP at the real sizes), renamed into Imp's nesting as the tiny fixtures are: no tensor table is
typed by hand here, so the fixtures are not the converter's idea of a checkpoint.

Data: "zeros" writes sparse files (the header, then a hole): a 6 GB checkpoint costs seconds and no
disk. "random" writes seeded noise scaled so logits are not flat (1/sqrt(fan_in)), in bounded chunks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imp_gguf.errors import BadInput
from imp_gguf.writer import staging_folder

# Phi-2's sizes (microsoft/phi-2 config.json), which the Imp-3B configs leave to ImpConfig's defaults.
PHI2_SIZES = {"vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
              "num_attention_heads": 32, "partial_rotary_factor": 0.4, "max_position_embeddings": 2048,
              "layer_norm_eps": 1e-5, "hidden_act": "gelu_new"}
SO400M_VISION = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                 "patch_size": 14, "image_size": 384, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                 "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


@dataclass(frozen=True)
class Release:
    name: str
    config_file: str  # in imp_gguf/data/published
    family: str  # the tensor layout on the published main revision
    dtype: str  # "F16" or "BF16"
    shards: int
    tokenizer: str  # "phi2", "phi2+json" (imp-v1-3b also ships tokenizer.json), "qwen2", "phi3"
    config_edits: tuple[tuple[str, Any], ...] = ()  # for the two whose config was not readable: same form


RELEASES: dict[str, Release] = {r.name: r for r in [
    Release("imp-v1-3b", "imp-v1-3b.config.json", "phi2", "F16", 7, "phi2+json"),
    Release("Imp-v1.5-3B-Phi2", "imp-v1-3b.config.json", "phi2", "F16", 7, "phi2",
            (("_name_or_path", "MILVLG/Imp-v1.5-3B-Phi2"),)),
    Release("Imp-v1.5-3B-196", "imp-v1-3b.config.json", "phi2_msft", "F16", 7, "phi2",
            (("_name_or_path", "MILVLG/Imp-v1.5-3B-196"), ("vision_tower_config.image_size", 196))),
    Release("Imp-v1.5-2B-Qwen1.5", "Imp-v1.5-2B-Qwen1.5.config.json", "qwen2", "F16", 5, "qwen2"),
    Release("Imp-v1.5-4B-Phi3", "Imp-v1.5-4B-Phi3.config.json", "phi3", "BF16", 9, "phi3"),
]}


def published_config(release: Release) -> dict[str, Any]:
    text = resources.files("imp_gguf.data.published").joinpath(release.config_file).read_text()
    cfg = json.loads(text)
    for dotted, value in release.config_edits:
        *parents, key = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[key] = value
    return cfg


def _image_size(cfg: dict[str, Any]) -> int:
    return int((cfg.get("vision_tower_config") or {}).get("image_size") or SO400M_VISION["image_size"])


def tensor_table(release: Release) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor the release stores, in state-dict order."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from imp_gguf.reference.layouts import lm_to_checkpoint, projector_prefix, vision_prefix

    cfg = published_config(release)
    if release.family in ("phi2", "phi2_msft"):
        lm_cfg = AutoConfig.for_model("phi", **PHI2_SIZES)
    else:
        model_type = {"qwen2": "qwen2", "phi3": "phi3"}[release.family]
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings")
        lm_cfg = AutoConfig.for_model(model_type, **{k: cfg[k] for k in keys if k in cfg})
    vcfg = SiglipVisionConfig(**(SO400M_VISION | {"image_size": _image_size(cfg)}))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(lm_cfg)
        vision = SiglipVisionModel(vcfg)
    state = lm_to_checkpoint(release.family, {k: t for k, t in lm.state_dict().items() if "rotary_emb" not in k})
    rows = [(k, tuple(t.shape)) for k, t in state.items()]
    vp = vision_prefix(release.family)
    kept = vcfg.num_hidden_layers - 1  # Imp deletes SigLIP's last block; post-LN and head become Identity
    for k, t in vision.state_dict().items():
        k = k.removeprefix("vision_model.")
        if (k.startswith("encoder.layers.") and int(k.split(".")[2]) >= kept) or k.startswith(("post_layernorm.", "head.")):
            continue
        if not k.endswith("position_ids"):
            rows.append((vp + k, tuple(t.shape)))
    H, D = lm_cfg.hidden_size, vcfg.hidden_size
    pp = projector_prefix(release.family)
    rows += [(pp + "0.weight", (H, D)), (pp + "0.bias", (H,)), (pp + "2.weight", (H, H)), (pp + "2.bias", (H,))]
    return rows


def _kind(name: str, shape: tuple[int, ...]) -> str:
    if name.endswith("bias"):
        return "bias"
    return "norm" if len(shape) == 1 else "w"


def _split(rows: list[tuple[str, tuple[int, ...]]], n: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Exactly n shards (fewer only for fewer tensors), cut by bytes in order, like HF's sharding."""
    sizes = [math.prod(s) for _, s in rows]
    total, done = sum(sizes), 0
    shards: list[list] = [[] for _ in range(n)]
    for row, size in zip(rows, sizes):
        shards[min(n - 1, done * n // total)].append(row)
        done += size
    return [s for s in shards if s]


def write_shards(dest: Path, rows: list[tuple[str, tuple[int, ...]]], *, n_shards: int, dtype: str, data: str,
                 seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> None:
    """Sharded safetensors + index. data "zeros": sparse files; "random": seeded noise."""
    from imp_gguf.bench.fullsize import _chunks, _header

    if data not in ("zeros", "random"):
        raise BadInput(f"data must be zeros or random, not {data!r}")
    rng = np.random.default_rng(seed)
    shards = _split(rows, n_shards)
    total = 2 * sum(math.prod(s) for _, s in rows)
    weight_map: dict[str, str] = {}
    done = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        kinds = [(name, shape, _kind(name, shape)) for name, shape in shard]
        with open(dest / fname, "wb") as fh:
            header = _header(kinds, dtype)
            fh.write(header)
            for name, shape, kind in kinds:
                if data == "random":
                    for chunk in _chunks(rng, shape, kind, dtype):
                        fh.write(chunk.tobytes())
                done += 2 * math.prod(shape)
                weight_map[name] = fname
                if progress is not None:
                    progress(name, done, total)
            if data == "zeros":
                fh.truncate(len(header) + 2 * sum(math.prod(s) for _, s in shard))
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ---------------------------------------------------------------- tokenizer files, as each repo ships them

def _fill(vocab: dict[str, int], n: int) -> dict[str, int]:
    """Pad a trained base vocabulary to the real model's size with tokens no merge produces."""
    if len(vocab) > n:
        raise BadInput(f"trained vocabulary of {len(vocab)} exceeds {n}")
    for i in range(len(vocab), n):
        vocab[f"\u0120zzfill{i}"] = i
    return vocab


def _write_bpe_files(dest: Path, tj: dict[str, Any], added: dict[str, int]) -> None:
    (dest / "vocab.json").write_text(json.dumps(tj["model"]["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (dest / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False))


def write_phi2_tokenizer(dest: Path, with_tokenizer_json: bool) -> None:
    """Phi-2's ids: 50257 base tokens (<|endoftext|> 50256), CodeGen's whitespace tokens, </s> 50295,
    <image> 50296; vocab.json + merges.txt + added_tokens.json + special_tokens_map.json."""
    from imp_gguf.bench.fullsize import write_tokenizer

    write_tokenizer(dest)  # tokenizer.json + tokenizer_config.json with Phi-2's ids
    tj = json.loads((dest / "tokenizer.json").read_text())
    tj["model"]["vocab"]["<|endoftext|>"] = 50256  # in Phi-2's vocab.json it is a base token
    added = {a["content"]: a["id"] for a in tj["added_tokens"] if a["id"] > 50256}
    _write_bpe_files(dest, tj, added)
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "</s>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    if not with_tokenizer_json:
        (dest / "tokenizer.json").unlink()


def write_qwen2_tokenizer(dest: Path) -> None:
    """Qwen1.5's ids: 151643 base tokens, then <|endoftext|> <|im_start|> <|im_end|>; no <image>."""
    from imp_gguf.reference.fixtures import _bpe_tokenizer

    tj = json.loads(_bpe_tokenizer("qwen2", 4000).to_str())
    _fill(tj["model"]["vocab"], 151643)
    added = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    _write_bpe_files(dest, tj, added)
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in added.items()}
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": decoder, "bos_token": None,
         "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
         "model_max_length": 32768, "clean_up_tokenization_spaces": False}, indent=2))


def write_phi3_tokenizer(dest: Path) -> None:
    """Phi-3-mini's SentencePiece model (32000 pieces: <unk> <s> </s>, 256 bytes, merges), its specials
    32000..32010 and Imp's <image> 32011 in added_tokens.json, and the stray Phi-2 BPE files."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from imp_gguf.reference.corpus import corpus
    from imp_gguf.reference.fixtures import _bpe_tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=1000, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2, character_coverage=1.0)
    model = pb.ModelProto()
    model.ParseFromString(buf.getvalue())
    lowest = min(p.score for p in model.pieces)
    for i in range(len(model.pieces), 32000):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581zzfill{i}", lowest - 1 - i, pb.ModelProto.SentencePiece.NORMAL
    (dest / "tokenizer.model").write_bytes(model.SerializeToString())
    added = {t: 32000 + k for k, t in enumerate(PHI3_SPECIALS)} | {"<image>": 32011}
    (dest / "added_tokens.json").write_text(json.dumps(added, indent=2))
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": t != "<|endoftext|>",
                        "single_word": False, "special": True} for t, i in added.items()}
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
         "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>", "legacy": False,
         "added_tokens_decoder": decoder, "model_max_length": 4096}, indent=2))
    _bpe_tokenizer("gpt2", 300).model.save(str(dest))  # the 4B repo's leftover Phi-2 vocab.json + merges.txt


def make_published(variant: str, dest: str | Path, *, data: str = "zeros", seed: int = 0, force: bool = False,
                   progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write the full-size published form of a release into DEST (via DEST.tmp, renamed at the end)."""
    if variant not in RELEASES:
        raise BadInput(f"unknown release {variant!r}: choose one of {', '.join(RELEASES)}")
    release = RELEASES[variant]
    dest = Path(dest)
    tmp = staging_folder(dest, force)
    try:
        cfg = published_config(release)
        write_shards(tmp, tensor_table(release), n_shards=release.shards, dtype=release.dtype, data=data, seed=seed,
                     progress=progress)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        if release.tokenizer.startswith("phi2"):
            write_phi2_tokenizer(tmp, with_tokenizer_json=release.tokenizer == "phi2+json")
        elif release.tokenizer == "qwen2":
            write_qwen2_tokenizer(tmp)
        else:
            write_phi3_tokenizer(tmp)
        (tmp / "README.md").write_text(
            f"Stand-in for MILVLG/{variant} in its published form (config, tensor names, shapes, dtype, shards, "
            f"tokenizer files), data: {data} (seed {seed}). Written by `imp-gguf fixtures published`; "
            "its outputs are not Imp's.\n")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
