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
from imp_gguf.families import detect_family
from imp_gguf.families.siglip import vision_hparams
from imp_gguf.images import load_image, pixel_values
from imp_gguf.reference.layouts import lm_from_checkpoint, projector_prefix, vision_prefix


class ImpReference:
    def __init__(self, ckpt_dir: str | Path):
        from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

        ckpt = open_checkpoint(ckpt_dir)
        self.family = detect_family(ckpt.config, set(ckpt.tensors))
        self.hp = self.family.hparams(ckpt.config, ckpt.tensors)
        self.vh = vision_hparams(ckpt.config, ckpt.tensors, self.family.prefix, self.hp.n_embd)
        state = {k: torch.from_numpy(ref.load()) for k, ref in ckpt.tensors.items()}

        cfg_dict = self.family.reference_config(self.hp)
        model_type = cfg_dict.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
        self.lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        lm_state = lm_from_checkpoint(self.family.name, state, self.hp.n_embd)
        missing, unexpected = self.lm.load_state_dict(lm_state, strict=False)
        if unexpected or [m for m in missing if "rotary" not in m]:
            raise RuntimeError(f"reference LLM load mismatch: missing={missing} unexpected={unexpected}")

        vh = self.vh
        vcfg = SiglipVisionConfig(hidden_size=vh.n_embd, intermediate_size=vh.n_ff, num_attention_heads=vh.n_head,
                                  num_hidden_layers=vh.run_blocks, image_size=vh.image_size, patch_size=vh.patch_size,
                                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=vh.eps)
        self.vision = SiglipVisionModel(vcfg).float().eval()
        vp = vision_prefix(self.family.name)
        want = self.vision.state_dict()
        v_state = {}
        for k, t in state.items():
            if not k.startswith(vp):
                continue
            short = k[len(vp):]
            key = short if short in want else "vision_model." + short
            if key in want:
                v_state[key] = t
        missing, _ = self.vision.load_state_dict(v_state, strict=False)
        if [m for m in missing if not m.startswith(("post_layernorm.", "head.")) and "position_ids" not in m]:
            raise RuntimeError(f"reference vision load mismatch: missing={missing}")

        pp = projector_prefix(self.family.name)
        self.projector = nn.Sequential(nn.Linear(vh.n_embd, self.hp.n_embd), nn.GELU(), nn.Linear(self.hp.n_embd, self.hp.n_embd))
        self.projector.load_state_dict({k[len(pp):]: t for k, t in state.items() if k.startswith(pp)})
        self.projector.float().eval()
        # Inference only: frozen parameters build no autograd graph (without touching torch's global grad mode).
        for module in (self.lm, self.vision, self.projector):
            module.requires_grad_(False)

    def pixel_values(self, image: str | Path) -> torch.Tensor:
        return torch.from_numpy(pixel_values(load_image(image, self.vh.image_size)))[None]

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
    """The checkpoint's own HF fast tokenizer (from tokenizer.json; no remote code)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(Path(ckpt_dir) / "tokenizer.json"))
