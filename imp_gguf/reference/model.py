"""The one PyTorch Imp: transformers' own SigLIP / Phi / Qwen2 / Phi3 modules, run the way Imp runs
them (the SigLIP blocks Imp keeps, features before the post-LN, exact-GELU projector, image embeddings
spliced at the image position). Parity checks load any Imp checkpoint into it (`from_checkpoint`); the
tiny Imp is built from it, trained and saved in Imp's layout (`checkpoint_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imp_gguf.checkpoint import open_checkpoint
from imp_gguf.converters.base import LMFamily, LMHparams
from imp_gguf.converters.registry import detect_family
from imp_gguf.converters.siglip import VisionHparams, vision_hparams
from imp_gguf.reference.layouts import lm_from_checkpoint, projector_prefix, to_checkpoint, vision_prefix
from imp_gguf.reference.preprocess import imp_image_size, imp_pixel_values

# Phi-2's gelu_new is the tanh GELU; torch's fused kernel computes the same function much faster.
FAST_GELU_NEW = "gelu_pytorch_tanh"


class ImpModel(nn.Module):
    def __init__(self, lm_cfg: Any, vcfg: Any, run_blocks: int):
        from transformers import AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

        super().__init__()
        vdict = {k: v for k, v in vcfg.to_dict().items()
                 if k not in ("transformers_version", "model_type", "dtype", "torch_dtype")}
        vdict.update(num_hidden_layers=run_blocks, vision_use_head=False)
        self.vision = SiglipVisionModel(SiglipVisionConfig(**vdict))
        # Imp takes features before it; never saved. (transformers types the slot as LayerNorm only.)
        self.vision.post_layernorm = nn.Identity()  # type: ignore[assignment]
        v, h = vcfg.hidden_size, lm_cfg.hidden_size
        self.projector = nn.Sequential(nn.Linear(v, h), nn.GELU(), nn.Linear(h, h))  # exact GELU
        self.lm = AutoModelForCausalLM.from_config(lm_cfg)
        # Once loaded from a checkpoint: its config.json (for its preprocessing), layout and sizes as the converters read them.
        self.config: dict[str, Any] = {}
        self.family: type[LMFamily]  # these three: set by from_checkpoint
        self.hp: LMHparams
        self.vh: VisionHparams

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, *, fast: bool = False) -> ImpModel:
        """Any Imp checkpoint, sizes as the converters read them, in float32. `fast`: torch's sdpa
        attention and fused tanh GELU (the same functions; for the tiny Imp's accuracy runs)."""
        from transformers import AutoConfig, SiglipVisionConfig

        ckpt = open_checkpoint(ckpt_dir)
        family = detect_family(ckpt.config, set(ckpt.tensors))
        hp = family.hparams(ckpt.config, ckpt.tensors)
        vh = vision_hparams(ckpt.config, ckpt.tensors, family.prefix, hp.n_embd)
        cfg_dict = family.reference_config(hp)
        if fast and cfg_dict.get("hidden_act") == "gelu_new":
            cfg_dict["hidden_act"] = FAST_GELU_NEW
        cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
        cfg._attn_implementation = "sdpa" if fast else "eager"
        vcfg = SiglipVisionConfig(hidden_size=vh.n_embd, intermediate_size=vh.n_ff, num_attention_heads=vh.n_head,
                                  image_size=imp_image_size(ckpt.config), patch_size=vh.patch_size,
                                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=vh.eps)
        model = cls(cfg, vcfg, vh.run_blocks).float().eval()
        model.config, model.family, model.hp, model.vh = ckpt.config, family, hp, vh
        model._load(ckpt, family.name, hp.n_embd)
        model.requires_grad_(False)  # inference only: no autograd graph, without touching the global grad mode
        return model

    def _load(self, ckpt: Any, family: str, n_embd: int) -> None:
        """Copy the checkpoint in one tensor at a time: peak memory is the model plus one tensor (a
        full-size 3B in float32 is 13 GB; a second copy as a state dict would not fit)."""
        vp, pp = vision_prefix(family), projector_prefix(family)
        params = self.state_dict()
        loaded: set[str] = set()
        with torch.no_grad():
            for name, ref in ckpt.tensors.items():
                if name.startswith((vp, pp)):
                    key = "vision." + name[len(vp):] if name.startswith(vp) else "projector." + name[len(pp):]
                    if key not in params:
                        continue  # blocks, post-LN and head Imp does not run
                    parts = {key: torch.from_numpy(ref.load())}
                else:  # Imp's names -> transformers' (layout A also splits Wqkv)
                    parts = {"lm." + k: t for k, t in
                             lm_from_checkpoint(family, {name: torch.from_numpy(ref.load())}, n_embd).items()}
                for key, t in parts.items():
                    if key not in params:
                        raise RuntimeError(f"reference has no parameter {key} (from {name})")
                    params[key].copy_(t)
                    loaded.add(key)
        missing = [k for k in params if k not in loaded and "rotary" not in k and "position_ids" not in k]
        if missing:
            raise RuntimeError(f"reference load mismatch: missing={missing[:5]}")

    def checkpoint_state(self, family: str) -> dict[str, torch.Tensor]:
        """The weights in Imp's names for `family` (what a checkpoint of this model stores)."""
        return to_checkpoint(family, self.lm.state_dict(), self.vision.state_dict(), self.projector.state_dict())

    # ------------------------------------------------------------ the forward pass, as Imp runs it

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] -> [B, P, H]: the SigLIP blocks Imp runs (no post-LN), then the projector."""
        h = self.vision.embeddings(pixels)
        for layer in self.vision.encoder.layers:
            h = layer(h, None)
        return self.projector(h)

    def hidden(self, before: torch.Tensor, images: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """LLaVA splice: text before `<image>`, the P image vectors, text after; right padding only."""
        emb = self.lm.get_input_embeddings()
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
        emb = self.lm.get_input_embeddings()
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
        from transformers import DynamicCache

        emb = self.lm.get_input_embeddings()
        x = torch.cat([emb(torch.tensor([before])), self.encode_images(pixels[None]),
                       emb(torch.tensor([after]))], dim=1)
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

    # ------------------------------------------------------------ parity: numpy in, numpy out

    def pixel_values(self, image: str | Path) -> torch.Tensor:
        """What Imp's own preprocessing makes of the image (not the converter's idea of it)."""
        return torch.from_numpy(imp_pixel_values(image, self.config))[None]

    def image_features(self, image: str | Path) -> np.ndarray:
        """[P, H]: SigLIP's last kept block (no post-LN) through Linear, GELU, Linear."""
        return self.encode_images(self.pixel_values(image))[0].numpy()

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.lm(input_ids=torch.tensor([ids])).logits[0].numpy()

    def logits_with_image(self, ids_before: list[int], features: np.ndarray, ids_after: list[int]) -> np.ndarray:
        """Last-position logits with the image features spliced between two token runs."""
        emb = self.lm.get_input_embeddings()
        parts = [emb(torch.tensor(ids_before)), torch.from_numpy(features), emb(torch.tensor(ids_after))]
        return self.lm(inputs_embeds=torch.cat(parts)[None]).logits[0, -1].numpy()


def hf_tokenizer(ckpt_dir: str | Path):
    """The checkpoint's own HF tokenizer: tokenizer.json when it has one, else the transformers class its
    tokenizer_config.json names, from vocab.json + merges.txt + added_tokens.json (never remote code)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from transformers.utils import logging as hf_logging

    tj = Path(ckpt_dir) / "tokenizer.json"
    if tj.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(tj))
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that model_type "imp" is not a transformers model
    try:
        return AutoTokenizer.from_pretrained(str(ckpt_dir), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(level)
