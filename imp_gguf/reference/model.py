"""The PyTorch reference Imp: transformers' own SigLIP / Phi / Qwen2 / Phi3 modules, loaded from an
Imp checkpoint folder, run the way Imp runs them (features before post-LN, exact-GELU projector,
image embeddings spliced at the image position).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from imp_gguf.checkpoint import open_checkpoint
from imp_gguf.converters import detect_family
from imp_gguf.converters.siglip import vision_hparams
from imp_gguf.reference.layouts import lm_from_checkpoint, projector_prefix, vision_prefix
from imp_gguf.reference.preprocess import imp_image_size, imp_pixel_values


class ImpReference:
    def __init__(self, ckpt_dir: str | Path):
        from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

        ckpt = open_checkpoint(ckpt_dir)
        self.config = ckpt.config
        self.family = detect_family(ckpt.config, set(ckpt.tensors))
        self.hp = self.family.hparams(ckpt.config, ckpt.tensors)
        self.vh = vision_hparams(ckpt.config, ckpt.tensors, self.family.prefix, self.hp.n_embd)
        cfg_dict = self.family.reference_config(self.hp)
        model_type = cfg_dict.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
        self.lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        vh = self.vh
        vcfg = SiglipVisionConfig(hidden_size=vh.n_embd, intermediate_size=vh.n_ff, num_attention_heads=vh.n_head,
                                  num_hidden_layers=vh.run_blocks, image_size=imp_image_size(ckpt.config),
                                  patch_size=vh.patch_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=vh.eps)
        self.vision = SiglipVisionModel(vcfg).float().eval()
        self.projector = nn.Sequential(nn.Linear(vh.n_embd, self.hp.n_embd), nn.GELU(),
                                       nn.Linear(self.hp.n_embd, self.hp.n_embd)).float().eval()
        self._load(ckpt)
        # Inference only: frozen parameters build no autograd graph (without touching torch's global grad mode).
        for module in (self.lm, self.vision, self.projector):
            module.requires_grad_(False)

    def _load(self, ckpt) -> None:
        """Copy the checkpoint into the three modules one tensor at a time: peak memory is the model plus
        one tensor (a full-size 3B in float32 is 13 GB; a second copy as a state dict would not fit)."""
        vp, pp = vision_prefix(self.family.name), projector_prefix(self.family.name)
        lm_params, v_params, p_params = self.lm.state_dict(), self.vision.state_dict(), self.projector.state_dict()
        loaded: set[tuple[str, str]] = set()
        with torch.no_grad():
            for name, ref in ckpt.tensors.items():
                if name.startswith(vp):
                    short = name[len(vp):]
                    key = short if short in v_params else "vision_model." + short
                    if key not in v_params:
                        continue  # blocks, post-LN and head Imp does not run
                    where, params, rename = "vision", v_params, lambda t, key=key: {key: t}
                elif name.startswith(pp):
                    where, params, rename = "projector", p_params, lambda t, key=name[len(pp):]: {key: t}
                else:  # Imp's names -> transformers' (layout A also splits Wqkv)
                    where, params = "lm", lm_params
                    rename = lambda t, name=name: lm_from_checkpoint(self.family.name, {name: t}, self.hp.n_embd)
                for key, t in rename(torch.from_numpy(ref.load())).items():
                    if key not in params:
                        raise RuntimeError(f"reference {where} has no parameter {key} (from {name})")
                    params[key].copy_(t)
                    loaded.add((where, key))
        for where, params in (("lm", lm_params), ("vision", v_params), ("projector", p_params)):
            missing = [k for k in params if (where, k) not in loaded and "rotary" not in k and "position_ids" not in k
                       and not k.startswith(("post_layernorm.", "head.", "vision_model.post_layernorm.",
                                             "vision_model.head."))]
            if missing:
                raise RuntimeError(f"reference {where} load mismatch: missing={missing[:5]}")

    def pixel_values(self, image: str | Path) -> torch.Tensor:
        """What Imp's own preprocessing makes of the image (not the converter's idea of it)."""
        return torch.from_numpy(imp_pixel_values(image, self.config))[None]

    def image_features(self, image: str | Path) -> np.ndarray:
        """[P, H]: SigLIP hidden_states[-1] (no post-LN) through Linear, GELU, Linear."""
        out = self.vision(pixel_values=self.pixel_values(image), output_hidden_states=True)
        return self.projector(out.hidden_states[-1][0]).numpy()

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.lm(input_ids=torch.tensor([ids])).logits[0].numpy()

    def logits_with_image(self, ids_before: list[int], features: np.ndarray, ids_after: list[int]) -> np.ndarray:
        """Last-position logits with the image features spliced between two token runs."""
        emb = self.lm.get_input_embeddings()
        parts = [emb(torch.tensor(ids_before)), torch.from_numpy(features), emb(torch.tensor(ids_after))]
        return self.lm(inputs_embeds=torch.cat(parts)[None]).logits[0, -1].numpy()

    def generate(self, ids_before: list[int], features: np.ndarray, ids_after: list[int], eos: set[int],
                 max_tokens: int = 32) -> list[int]:
        emb = self.lm.get_input_embeddings()
        x = torch.cat([emb(torch.tensor(ids_before)), torch.from_numpy(features), emb(torch.tensor(ids_after))])
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(self.lm(inputs_embeds=x[None]).logits[0, -1].argmax())
            if tok in eos:
                break
            out.append(tok)
            x = torch.cat([x, emb(torch.tensor([tok]))])
        return out


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
