"""Full-size random-weight Imp checkpoints in the exact shape of a released variant, without torch.

For speed figures only: every tensor has the real name, shape and dtype (bf16), the checkpoint is sharded
with an index and carries a GPT-2-style byte-level BPE tokenizer whose ids match Phi-2/Imp
(`<|endoftext|>` 50256, CodeGen's 38 whitespace tokens 50257..50294, `</s>` 50295, `<image>` 50296).
Weights are seeded, scaled Gaussian noise (1/sqrt(fan_in)), streamed tensor by tensor (in row chunks)
straight into the safetensors files, so memory stays at a few hundred MB for a ~6 GB checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imp_gguf.errors import BadInput
from imp_gguf.writer import staging_folder

VISION = "transformer.vision_tower.vision_tower.vision_model."
PROJ = "transformer.mm_projector."
CHUNK_ELEMENTS = 16 * 1024 * 1024  # 64 MB of float32 per generated chunk
SHARD_BYTES = 2 * 1024**3  # like HF's default max_shard_size="2GB" (bf16 checkpoints of Imp use ~2 GB shards)


@dataclass(frozen=True)
class FullSpec:
    """Phi-2 (phi-msft names, layout A) + SigLIP-SO400M/14 with 26 stored blocks + mlp2x_gelu."""

    name: str
    image_size: int
    n_embd: int = 2560
    n_layer: int = 32
    n_head: int = 32
    n_ff: int = 10240
    n_vocab: int = 51200
    n_ctx: int = 2048
    rotary_dim: int = 32
    v_embd: int = 1152
    v_ff: int = 4304
    v_head: int = 16
    v_layers_original: int = 27
    patch: int = 14
    image_aspect_ratio: str = "pad"

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


# Only layout-A variants: Imp-v1.5-3B-196 (196 px, 196 positions) and imp-v1-3b (384 px, 729 positions).
FULL_VARIANTS: dict[str, FullSpec] = {
    "Imp-v1.5-3B-196": FullSpec("Imp-v1.5-3B-196", 196),
    "imp-v1-3b": FullSpec("imp-v1-3b", 384, image_aspect_ratio="square"),
}

# ids of the real Phi-2 / Imp tokenizer
ENDOFTEXT_ID = 50256
EOS_ID = 50295  # "</s>", added by Imp's training
IMAGE_ID = 50296  # "<image>"
# CodeGen's added whitespace tokens (ids 50257..50294): 31..2 spaces, then 9..2 tabs.
WHITESPACE_TOKENS = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]


def tensor_table(spec: FullSpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) for every tensor; kind: 'w' (matrix), 'norm' (LayerNorm weight), 'bias'."""
    H, F, V = spec.n_embd, spec.n_ff, spec.n_vocab
    rows: list[tuple[str, tuple[int, ...], str]] = [("transformer.embd.wte.weight", (V, H), "w")]
    for i in range(spec.n_layer):
        p = f"transformer.h.{i}."
        rows += [
            (p + "ln.weight", (H,), "norm"), (p + "ln.bias", (H,), "bias"),
            (p + "mixer.Wqkv.weight", (3 * H, H), "w"), (p + "mixer.Wqkv.bias", (3 * H,), "bias"),
            (p + "mixer.out_proj.weight", (H, H), "w"), (p + "mixer.out_proj.bias", (H,), "bias"),
            (p + "mlp.fc1.weight", (F, H), "w"), (p + "mlp.fc1.bias", (F,), "bias"),
            (p + "mlp.fc2.weight", (H, F), "w"), (p + "mlp.fc2.bias", (H,), "bias"),
        ]
    rows += [("lm_head.ln.weight", (H,), "norm"), ("lm_head.ln.bias", (H,), "bias"),
             ("lm_head.linear.weight", (V, H), "w"), ("lm_head.linear.bias", (V,), "bias")]
    D, Fv = spec.v_embd, spec.v_ff
    rows += [(VISION + "embeddings.patch_embedding.weight", (D, 3, spec.patch, spec.patch), "w"),
             (VISION + "embeddings.patch_embedding.bias", (D,), "bias"),
             (VISION + "embeddings.position_embedding.weight", (spec.n_patches, D), "w")]
    for i in range(spec.v_layers_original - 1):  # Imp deletes SigLIP's last block
        p = f"{VISION}encoder.layers.{i}."
        rows += [(p + "layer_norm1.weight", (D,), "norm"), (p + "layer_norm1.bias", (D,), "bias")]
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rows += [(p + f"self_attn.{n}.weight", (D, D), "w"), (p + f"self_attn.{n}.bias", (D,), "bias")]
        rows += [(p + "layer_norm2.weight", (D,), "norm"), (p + "layer_norm2.bias", (D,), "bias"),
                 (p + "mlp.fc1.weight", (Fv, D), "w"), (p + "mlp.fc1.bias", (Fv,), "bias"),
                 (p + "mlp.fc2.weight", (D, Fv), "w"), (p + "mlp.fc2.bias", (D,), "bias")]
    rows += [(PROJ + "0.weight", (H, D), "w"), (PROJ + "0.bias", (H,), "bias"),
             (PROJ + "2.weight", (H, H), "w"), (PROJ + "2.bias", (H,), "bias")]
    return rows


def n_params(spec: FullSpec) -> int:
    return sum(math.prod(s) for _, s, _ in tensor_table(spec))


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _chunks(rng: np.random.Generator, shape: tuple[int, ...], kind: str, dtype: str = "BF16") -> Iterator[np.ndarray]:
    """Seeded noise for one tensor, in bounded chunks, as BF16 bits or F16."""
    n = math.prod(shape)
    if kind == "w":
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale, offset = 1.0 / math.sqrt(fan_in), 0.0
    elif kind == "norm":
        scale, offset = 0.1, 1.0
    else:
        scale, offset = 0.02, 0.0
    done = 0
    while done < n:
        m = min(CHUNK_ELEMENTS, n - done)
        x = rng.standard_normal(m, dtype=np.float32)
        x *= np.float32(scale)
        if offset:
            x += np.float32(offset)
        yield to_bf16(x) if dtype == "BF16" else x.astype(np.float16)
        done += m


def _shards(table: list[tuple[str, tuple[int, ...], str]], max_bytes: int) -> list[list[tuple[str, tuple[int, ...], str]]]:
    shards: list[list] = [[]]
    size = 0
    for row in table:
        nb = 2 * math.prod(row[1])
        if shards[-1] and size + nb > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(row)
        size += nb
    return shards


def _header(rows: list[tuple[str, tuple[int, ...], str]], dtype: str = "BF16") -> bytes:
    meta: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in rows:
        nb = 2 * math.prod(shape)
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def imp_config(spec: FullSpec) -> dict:
    """config.json with phi-msft keys plus Imp's LLaVA keys, as for the released layout-A variants."""
    return {
        "_name_or_path": f"MILVLG/{spec.name}",
        "architectures": ["ImpForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_imp.ImpConfig", "AutoModelForCausalLM": "modeling_imp.ImpForCausalLM"},
        "model_type": "imp",
        "n_embd": spec.n_embd, "n_layer": spec.n_layer, "n_head": spec.n_head, "n_inner": None,
        "n_positions": spec.n_ctx, "rotary_dim": spec.rotary_dim, "layer_norm_epsilon": 1e-5,
        "vocab_size": spec.n_vocab, "activation_function": "gelu_new", "flash_attn": False,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "tie_word_embeddings": False,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": spec.v_embd,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "use_mm_proj": True,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": spec.image_aspect_ratio,
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        "image_token": "<image>",
        "image_token_index": IMAGE_ID,
        "vision_tower_config": {
            "model_type": "siglip_vision_model", "hidden_size": spec.v_embd, "intermediate_size": spec.v_ff,
            "num_attention_heads": spec.v_head, "num_hidden_layers": spec.v_layers_original,
            "image_size": spec.image_size, "patch_size": spec.patch, "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "attention_dropout": 0.0,
        },
        "torch_dtype": "bfloat16",
    }


def write_tokenizer(dest: Path, *, trained_vocab: int = 4000) -> dict[str, int]:
    """A GPT-2-style byte-level BPE tokenizer.json with Phi-2/Imp's ids (base vocab padded to 50256).

    Merges are trained (HF `tokenizers`, no torch) on imp-gguf's small deterministic corpus, so English
    text tokenizes into word-like pieces; the rest of the base vocab is unreachable filler.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from imp_gguf.reference.corpus import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=trained_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    # Imp's conversation template, so the template text tokenizes into word-sized pieces as with Phi-2's
    # real 50k vocab (the 41-token paper prompt is counted after the template is applied).
    from imp_gguf.chat_templates import SYSTEM

    template_lines = [f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT: It is a picture.</s>"] * 20
    tok.train_from_iterator(corpus() + template_lines, trainer=trainer)
    tj = json.loads(tok.to_str())
    vocab: dict[str, int] = tj["model"]["vocab"]
    n = len(vocab)
    if n > ENDOFTEXT_ID:
        raise BadInput("trained tokenizer is larger than Phi-2's base vocab")
    for i in range(n, ENDOFTEXT_ID):
        vocab[f"\u0120zzfill{i}"] = i  # "Ġzzfill..": never produced (no merge leads to it)
    added = [{"id": ENDOFTEXT_ID, "content": "<|endoftext|>", "special": True}]
    added += [{"id": ENDOFTEXT_ID + 1 + k, "content": ws, "special": False} for k, ws in enumerate(WHITESPACE_TOKENS)]
    added += [{"id": EOS_ID, "content": "</s>", "special": True}, {"id": IMAGE_ID, "content": "<image>", "special": True}]
    assert added[-3]["id"] == EOS_ID - 1 and len(added) == IMAGE_ID - ENDOFTEXT_ID + 1
    tj["added_tokens"] = [{"single_word": False, "lstrip": False, "rstrip": False, "normalized": not a["special"], **a}
                          for a in added]
    (dest / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    decoder = {str(a["id"]): {"content": a["content"], "lstrip": False, "normalized": not a["special"],
                              "rstrip": False, "single_word": False, "special": a["special"]} for a in added}
    cfg = {"tokenizer_class": "CodeGenTokenizer", "bos_token": "<|endoftext|>", "eos_token": "</s>",
           "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
           "added_tokens_decoder": decoder, "model_max_length": 3072, "padding_side": "right",
           "clean_up_tokenization_spaces": False}
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return {"<|endoftext|>": ENDOFTEXT_ID, "</s>": EOS_ID, "<image>": IMAGE_ID}


def make_fullsize(variant: str, dest: str | Path, *, seed: int = 0, force: bool = False,
                  shard_bytes: int = SHARD_BYTES, progress: Callable[[str, int, int], None] | None = None,
                  spec: FullSpec | None = None) -> Path:
    """Write a full-size random checkpoint folder for `variant`; returns its path.

    Written into DEST.tmp and renamed at the end, so an interrupted run leaves no DEST.
    `progress(name, bytes_done, bytes_total)` is called after each tensor.
    """
    if spec is None:
        if variant not in FULL_VARIANTS:
            raise BadInput(f"no full-size spec for {variant!r}: choose one of {', '.join(FULL_VARIANTS)}")
        spec = FULL_VARIANTS[variant]
    import tokenizers  # noqa: F401 - write_tokenizer needs it at the end: fail before writing ~6 GB
    dest = Path(dest)
    tmp = staging_folder(dest, force)
    table = tensor_table(spec)
    total = sum(2 * math.prod(s) for _, s, _ in table)
    rng = np.random.default_rng(seed)
    shards = _shards(table, shard_bytes)
    weight_map: dict[str, str] = {}
    done = 0
    for k, rows in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(tmp / fname, "wb") as fh:
            fh.write(_header(rows))
            for name, shape, kind in rows:
                for chunk in _chunks(rng, shape, kind):
                    fh.write(chunk.tobytes())
                weight_map[name] = fname
                done += 2 * math.prod(shape)
                if progress is not None:
                    progress(name, done, total)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(imp_config(spec), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS_ID}))
    write_tokenizer(tmp)
    (tmp / "README.md").write_text(
        f"Random-weight stand-in for MILVLG/{spec.name} (same names, shapes, dtype, tokenizer ids), written by "
        f"`imp-gguf fixtures full-size` (seed {seed}). For speed measurements only: its outputs are noise.\n")
    os.replace(tmp, dest)
    return dest
