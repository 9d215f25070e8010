"""The tiny Imp in PyTorch: Imp's exact architecture at toy size, saved in Imp's checkpoint layout A.

SigLIP vision tower (transformers `SiglipVisionModel`; Imp deletes the last block, so the module
holds only the blocks Imp runs and the config says one more with `mm_vision_select_layer = -2`),
mlp2x_gelu projector (Linear, exact GELU, Linear), Phi-2 language model (transformers
`PhiForCausalLM`, partial NeoX RoPE) saved with phi-msft names under `transformer.` like
MILVLG/Imp-v1.5-3B-196, a GPT-2-style byte-level BPE with `</s>` and `<image>` added, and Imp's
config keys. The same module loads such a checkpoint back for the PyTorch side of parity checks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from imp_gguf.chat_templates import SYSTEM
from imp_gguf.reference.fixtures import Dims, Variant, _imp_config, lm_config, save_sharded, vision_config
from imp_gguf.reference.layouts import lm_from_checkpoint, lm_to_checkpoint, projector_prefix, vision_prefix
from imp_gguf.tiny_imp import data as D

FAMILY = "phi2_msft"  # checkpoint layout A, as MILVLG/Imp-v1.5-3B-196
NAME = "Tiny-Imp-v1.5-56px"
IMAGE_TOKEN = "<image>"
STOP = "</s>"
# Phi-2's gelu_new is the tanh GELU; torch's fused kernel computes the same function much faster.
FAST_GELU_NEW = "gelu_pytorch_tanh"
SPECIALS = ("<|endoftext|>", STOP, IMAGE_TOKEN)  # Phi-2's base vocab ends with <|endoftext|>; Imp adds </s>, <image>


@dataclass(frozen=True)
class TinySpec:
    name: str = NAME
    image_size: int = D.IMAGE_SIZE
    dims: Dims = field(default_factory=lambda: Dims(
        n_embd=256, n_layer=3, n_head=4, n_ff_phi2=1024, rotary_dim=32, bpe_vocab=1021,
        v_embd=192, v_ff=720, v_head=4, v_layers_original=4, patch=14))

    @property
    def variant(self) -> Variant:
        return Variant(self.name, FAMILY, self.image_size, "imp", image_aspect_ratio="square")

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.dims.patch) ** 2


# ---------------------------------------------------------------- tokenizer

def prompt_parts(question: str) -> tuple[str, str]:
    """Imp's phi2 prompt `S USER: <image>\\n{q} ASSISTANT:` split around the image token."""
    return f"{SYSTEM} USER: ", f"\n{question} ASSISTANT:"


def tokenizer_corpus() -> list[str]:
    from imp_gguf.reference.corpus import corpus

    lines: list[str] = []
    for q in D.all_questions():
        for a in D.all_answers():
            before, after = prompt_parts(q)
            lines.append(f"{before}{after} {a}")
    return lines + corpus()


def write_tokenizer(dest: Path, vocab_size: int) -> tuple[int, dict[str, int]]:
    """tokenizer.json + tokenizer_config.json like fixtures._write_bpe, trained on the task's text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2 / Phi-2
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(dest / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for s, i in ids.items()}
    cfg = {"tokenizer_class": "CodeGenTokenizer", "bos_token": "<|endoftext|>", "eos_token": STOP,
           "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
           "added_tokens_decoder": decoder, "model_max_length": 3072, "padding_side": "right",
           "clean_up_tokenization_spaces": False}
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return tok.get_vocab_size(), ids


class TextCodec:
    """The checkpoint's tokenizer (tokenizers library, no remote code) plus Imp's prompt split."""

    def __init__(self, ckpt_dir: str | Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(ckpt_dir) / "tokenizer.json"))
        self.stop_id = self.tok.token_to_id(STOP)
        self.image_id = self.tok.token_to_id(IMAGE_TOKEN)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tok.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        before, after = prompt_parts(question)
        return self.encode(before), self.encode(after)

    def answer(self, answer: str) -> list[int]:
        return self.encode(" " + answer) + [self.stop_id]


# ---------------------------------------------------------------- model

class TinyImp(nn.Module):
    def __init__(self, lm_cfg: Any, vcfg: Any, run_blocks: int):
        from transformers import PhiForCausalLM, SiglipVisionConfig, SiglipVisionModel

        super().__init__()
        vdict = vcfg.to_dict()
        vdict.update(num_hidden_layers=run_blocks, vision_use_head=False)
        for k in ("transformers_version", "model_type", "dtype", "torch_dtype"):
            vdict.pop(k, None)
        self.vision = SiglipVisionModel(SiglipVisionConfig(**vdict))
        self.vision.post_layernorm = nn.Identity()  # Imp takes features before it; never saved
        v, h = vcfg.hidden_size, lm_cfg.hidden_size
        self.projector = nn.Sequential(nn.Linear(v, h), nn.GELU(), nn.Linear(h, h))  # exact GELU
        self.lm = PhiForCausalLM(lm_cfg)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] -> [B, P, H]: SigLIP blocks Imp runs (no post-LN), then the projector."""
        h = self.vision.embeddings(pixels)
        for layer in self.vision.encoder.layers:
            h = layer(h, None)
        return self.projector(h)

    def hidden(self, before: torch.Tensor, images: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """LLaVA splice: text before `<image>`, the P image vectors, text after; right padding only."""
        emb = self.lm.model.embed_tokens
        x = torch.cat([emb(before), self.encode_images(images), emb(after)], dim=1)
        return self.lm.model(inputs_embeds=x, use_cache=False).last_hidden_state

    def hidden_shared(self, before: torch.Tensor, images: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Same maths as `hidden`, batched the cheap way for training: the prefix (Imp's system
        prompt, the same for every row) runs once; each image and its P vectors run once and are
        shared, through the KV cache, by the k = len(after) / len(images) questions asked about it
        (rows i*k .. i*k+k-1). Returns the hidden states of the `after` tokens only."""
        from transformers import DynamicCache

        n_img, k = images.shape[0], after.shape[0] // images.shape[0]
        assert n_img * k == after.shape[0]
        emb = self.lm.model.embed_tokens
        cache = DynamicCache(config=self.lm.config)
        self.lm.model(inputs_embeds=emb(before[None]), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(n_img)
        self.lm.model(inputs_embeds=self.encode_images(images), cache=cache, use_cache=True)
        if k > 1:
            cache.batch_repeat_interleave(k)
        return self.lm.model(inputs_embeds=emb(after), cache=cache, use_cache=True).last_hidden_state

    @torch.no_grad()
    def generate(self, before: list[int], pixels: torch.Tensor, after: list[int], *, stop_id: int,
                 max_tokens: int = 16) -> list[int]:
        """Greedy decoding for one image, with the KV cache."""
        emb = self.lm.model.embed_tokens
        x = torch.cat([emb(torch.tensor([before])), self.encode_images(pixels[None]),
                       emb(torch.tensor([after]))], dim=1)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        logits = self.lm(inputs_embeds=x, cache=cache, use_cache=True).logits
        toks: list[int] = []
        for _ in range(max_tokens):
            tok = int(logits[0, -1].argmax())
            if tok == stop_id:
                break
            toks.append(tok)
            logits = self.lm(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True).logits
        return toks

    # ------------------------------------------------------------ checkpoint layout A

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        lm_state = {k: t for k, t in self.lm.state_dict().items() if "rotary_emb" not in k}
        state = lm_to_checkpoint(FAMILY, lm_state)
        vp, pp = vision_prefix(FAMILY), projector_prefix(FAMILY)
        for k, t in self.vision.state_dict().items():
            if k.endswith("position_ids") or k.startswith("post_layernorm") or k.startswith("head."):
                continue
            state[vp + k] = t
        for k, t in self.projector.state_dict().items():
            state[pp + k] = t
        return state


def build(spec: TinySpec, n_rows: int, ids: dict[str, int]) -> tuple[TinyImp, Any, Any]:
    lm_cfg = lm_config(FAMILY, spec.dims, n_rows, ids)
    lm_cfg.hidden_act = FAST_GELU_NEW
    lm_cfg._attn_implementation = "sdpa"
    vcfg = vision_config(spec.variant, spec.dims)
    model = TinyImp(lm_cfg, vcfg, spec.dims.v_layers_original - 1)
    with torch.no_grad():  # SigLIP's 1/sqrt(width) init leaves "where" too faint to learn quickly
        model.vision.embeddings.position_embedding.weight.normal_(0.0, 1.0)
    return model, lm_cfg, vcfg


def save_checkpoint(model: TinyImp, spec: TinySpec, lm_cfg: Any, vcfg: Any, ids: dict[str, int], dest: Path, *,
                    dtype: torch.dtype = torch.bfloat16, n_shards: int = 2, extra: dict[str, Any] | None = None) -> None:
    """Weights (sharded safetensors + index), config.json and generation_config.json into dest
    (the tokenizer files are written there by write_tokenizer)."""
    state = {k: t.detach().to(dtype).contiguous() for k, t in model.checkpoint_state().items()}
    save_sharded(state, dest, n_shards)
    cfg = _imp_config(spec.variant, spec.dims, lm_cfg, vcfg, ids)
    cfg["_name_or_path"] = spec.name
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    if extra:
        cfg["tiny_imp"] = extra
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": ids[STOP]}) + "\n")


def read_state(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    root = Path(ckpt_dir)
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(root / f)))
    return state


def load_checkpoint(ckpt_dir: str | Path) -> TinyImp:
    """Rebuild the modules of a layout-A Imp checkpoint (phi-msft keys) and load its weights as float32."""
    from transformers import PhiConfig, SiglipVisionConfig

    root = Path(ckpt_dir)
    cfg = json.loads((root / "config.json").read_text())
    n_embd, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
    state = {k: t.float() for k, t in read_state(root).items()}
    n_rows = int(state["transformer.embd.wte.weight"].shape[0])
    lm_cfg = PhiConfig(vocab_size=n_rows, hidden_size=n_embd, intermediate_size=cfg.get("n_inner") or 4 * n_embd,
                       num_hidden_layers=int(cfg["n_layer"]), num_attention_heads=n_head,
                       partial_rotary_factor=int(cfg["rotary_dim"]) / (n_embd // n_head),
                       max_position_embeddings=int(cfg.get("n_positions", 2048)),
                       layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)), hidden_act=FAST_GELU_NEW,
                       tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    lm_cfg._attn_implementation = "sdpa"
    vtc = {k: v for k, v in cfg["vision_tower_config"].items() if k not in ("model_type",)}
    vcfg = SiglipVisionConfig(**vtc)
    select = int(cfg.get("mm_vision_select_layer", -2))
    run = vcfg.num_hidden_layers + select + 1 if select < 0 else select
    model = TinyImp(lm_cfg, vcfg, run)
    model.lm.load_state_dict(lm_from_checkpoint(FAMILY, state, n_embd), strict=False)
    missing = [k for k in model.lm.state_dict() if "rotary_emb" not in k
               and k not in lm_from_checkpoint(FAMILY, state, n_embd)]
    if missing:
        raise KeyError(f"checkpoint lacks {missing[:3]}")
    vp, pp = vision_prefix(FAMILY), projector_prefix(FAMILY)
    vstate = {k[len(vp):]: t for k, t in state.items() if k.startswith(vp)}
    res = model.vision.load_state_dict(vstate, strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise KeyError(f"vision tower mismatch: missing {res.missing_keys[:3]}, unexpected {res.unexpected_keys[:3]}")
    model.projector.load_state_dict({k[len(pp):]: t for k, t in state.items() if k.startswith(pp)})
    return model.eval()


def pixels(images: list[Any], size: int) -> torch.Tensor:
    """PIL images (any size) -> [B, 3, size, size], exactly load_image's resize + pixel_values."""
    from imp_gguf.images import pixel_values

    return torch.from_numpy(np.stack([pixel_values(D.to_model_size(im, size)) for im in images]))


def n_params(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
