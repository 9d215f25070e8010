"""Tiny Imp checkpoints with the real names, nesting, configs, fused layouts and tokenizer files.

Built with transformers' own model classes (seeded random weights, scaled so logits are not flat),
saved in bf16 as sharded safetensors with an index, in the layout of each released variant, with the
file sets and config forms of the published repos (docs/architecture.md, "Released checkpoints"):
the Phi-2 configs omit every LM size and default (only the head count stays: Phi-2's 32 heads cannot
fit a 256-wide model), imp-v1-3b is transformers-Phi under `model.` with a 50-px image (a 3 x 3 grid
of 14-px patches that never reads the last 8 px, as 384 px never reads 6), the 2B has no `<image>`
token and no tokenizer.json, the 4B ships stray Phi-2 BPE files next to its SentencePiece model.
The tiny towers keep a vision_tower_config: SigLIP-SO400M's defaults do not fit them.
Widths keep llama.cpp's edge cases: LLM rows of 256 (K-quants apply), Qwen's FFN not a multiple of
256 (like 5504), a SigLIP FFN not divisible by 32 (like 4304), vision FFN != vision width.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imp_gguf.reference.corpus import corpus
from imp_gguf.reference.layouts import lm_to_checkpoint, projector_prefix, vision_prefix


@dataclass(frozen=True)
class Dims:
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_ff_phi2: int = 1024
    n_ff_qwen2: int = 352
    n_ff_phi3: int = 512
    rotary_dim: int = 32
    bpe_vocab: int = 1000
    spm_vocab: int = 600
    v_embd: int = 192
    v_ff: int = 344
    v_head: int = 4
    v_layers_original: int = 3
    patch: int = 14


@dataclass(frozen=True)
class Variant:
    name: str  # the released checkpoint this one mirrors
    family: str
    image_size: int
    model_type: str
    keep_post_ln_and_head: bool = False  # robustness: tensors Imp never runs are present
    keep_last_block: bool = False  # robustness: the 27th SigLIP block is present
    image_aspect_ratio: str = "pad"
    published_form: bool = False  # config.json as the Phi-2 repos publish it: no LM sizes or defaults
    # "json": tokenizer.json; "vocab": vocab.json + merges.txt + added_tokens.json only; "both": all of
    # them; "spm": tokenizer.model + tokenizer.json + stray Phi-2 vocab.json/merges.txt (the 4B)
    tokenizer_files: str = "json"
    image_token: bool = True


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("imp-v1-3b", "phi2", 50, "imp", keep_post_ln_and_head=True, image_aspect_ratio="square",
            published_form=True, tokenizer_files="both"),
    Variant("Imp-v1.5-3B-196", "phi2_msft", 56, "imp", published_form=True),
    Variant("Imp-v1.5-3B-Phi2", "phi2", 112, "imp", published_form=True, tokenizer_files="vocab"),
    Variant("Imp-v1.5-2B-Qwen1.5", "qwen2", 112, "imp_qwen2", keep_last_block=True, image_aspect_ratio="square",
            tokenizer_files="vocab", image_token=False),
    Variant("Imp-v1.5-4B-Phi3", "phi3", 112, "imp_phi3", tokenizer_files="spm"),
]}

SYSTEM_TOKENS_PHI3 = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                      "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


# ---------------------------------------------------------------- tokenizers

def _bpe_tokenizer(kind: str, vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
        pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:  # GPT-2 / CodeGen (Phi-2)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def _write_bpe(dest: Path, kind: str, dims: Dims, files: str = "json",
               image_token: bool = True) -> tuple[int, dict[str, int]]:
    """Returns (tokenizer size, special token ids)."""
    from tokenizers import AddedToken

    tok = _bpe_tokenizer(kind, dims.bpe_vocab)
    if kind == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:  # Phi-2 ends its base vocab with <|endoftext|>; Imp's training adds </s> then <image>
        specials = ["<|endoftext|>", "</s>"]
    specials += ["<image>"] if image_token else []
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    ids = {s: tok.token_to_id(s) for s in specials}
    if files in ("json", "both"):
        tok.save(str(dest / "tokenizer.json"))
    if files in ("vocab", "both"):  # the slow-tokenizer files the Phi-2 and Qwen repos ship
        tok.model.save(str(dest))
        (dest / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    decoder = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for s, i in ids.items()}
    if kind == "qwen2":
        cfg = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "errors": "replace"}
    else:
        cfg = {"tokenizer_class": "CodeGenTokenizer", "bos_token": "<|endoftext|>", "eos_token": "</s>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False}
    cfg.update({"added_tokens_decoder": decoder, "model_max_length": 3072, "padding_side": "right",
                "clean_up_tokenization_spaces": False})
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return tok.get_vocab_size(), ids


def _write_spm(dest: Path, dims: Dims) -> tuple[int, dict[str, int]]:
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=dims.spm_vocab, model_type="bpe",
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    (dest / "tokenizer.model").write_bytes(buf.getvalue())
    tok = LlamaTokenizer.from_pretrained(str(dest), legacy=False, add_bos_token=True, add_eos_token=False)
    from tokenizers import AddedToken

    tok.add_special_tokens({"additional_special_tokens": [AddedToken(s, special=True, normalized=False,
                                                                     rstrip=s != "<|endoftext|>")
                                                          for s in SYSTEM_TOKENS_PHI3 + ["<image>"]]})
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    tok.save_pretrained(str(dest))
    # Phi-3-mini's own tokenizer.json is Llama-2 style: "▁" prepended to every text segment (also
    # after special tokens) by the normalizer, no pre-tokenizer. transformers 5 would write a
    # Metaspace(prepend_scheme="first") instead; keep the real model's behaviour.
    tj_path = dest / "tokenizer.json"
    tj = json.loads(tj_path.read_text())
    tj["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    tj["pre_tokenizer"] = None
    tj["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2))
    # The 4B repo still carries Phi-2's vocab.json and merges.txt, which do not belong to its model.
    _bpe_tokenizer("gpt2", 300).model.save(str(dest))
    ids = {s: tok.convert_tokens_to_ids(s) for s in SYSTEM_TOKENS_PHI3 + ["<image>", "<s>", "</s>", "<unk>"]}
    added = {s: ids[s] for s in SYSTEM_TOKENS_PHI3 + ["<image>"]}
    (dest / "added_tokens.json").write_text(json.dumps(added, indent=2))  # as the 4B repo ships it
    return len(tok), ids


# ---------------------------------------------------------------- models

def _init_(module: nn.Module, gen: torch.Generator) -> None:
    """Re-initialise so activations and logits have spread (default 0.02 init gives flat logits)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(fan_in)))
            elif name.endswith("weight"):  # norms
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def lm_config(family: str, dims: Dims, n_rows: int, ids: dict[str, int]) -> Any:
    from transformers import Phi3Config, PhiConfig, Qwen2Config

    head_dim = dims.n_embd // dims.n_head
    if family in ("phi2", "phi2_msft"):
        return PhiConfig(vocab_size=n_rows, hidden_size=dims.n_embd, intermediate_size=dims.n_ff_phi2,
                         num_hidden_layers=dims.n_layer, num_attention_heads=dims.n_head,
                         partial_rotary_factor=dims.rotary_dim / head_dim, max_position_embeddings=3072,
                         layer_norm_eps=1e-5, hidden_act="gelu_new", tie_word_embeddings=False,
                         resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    if family == "qwen2":
        return Qwen2Config(vocab_size=n_rows, hidden_size=dims.n_embd, intermediate_size=dims.n_ff_qwen2,
                           num_hidden_layers=dims.n_layer, num_attention_heads=dims.n_head,
                           num_key_value_heads=dims.n_head, max_position_embeddings=32768, rope_theta=1e6,
                           rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)
    if family == "phi3":
        return Phi3Config(vocab_size=n_rows, hidden_size=dims.n_embd, intermediate_size=dims.n_ff_phi3,
                          num_hidden_layers=dims.n_layer, num_attention_heads=dims.n_head,
                          num_key_value_heads=dims.n_head, max_position_embeddings=4096,
                          original_max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                          sliding_window=2047, tie_word_embeddings=False, bos_token_id=ids["<s>"],
                          eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    raise KeyError(family)


def vision_config(v: Variant, dims: Dims) -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=dims.v_embd, intermediate_size=dims.v_ff, num_attention_heads=dims.v_head,
                              num_hidden_layers=dims.v_layers_original, image_size=v.image_size,
                              patch_size=dims.patch, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def _imp_config(v: Variant, dims: Dims, lm_cfg: Any, vcfg: Any, ids: dict[str, int]) -> dict[str, Any]:
    cfg = lm_cfg.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        cfg.pop(k, None)
    if v.family == "phi2_msft":  # phi-msft keys (imp-v1-3b era)
        head_dim = dims.n_embd // dims.n_head
        cfg = {"n_embd": dims.n_embd, "n_layer": dims.n_layer, "n_head": dims.n_head,
               "n_inner": None if dims.n_ff_phi2 == 4 * dims.n_embd else dims.n_ff_phi2,
               "n_positions": 3072, "rotary_dim": dims.rotary_dim, "layer_norm_epsilon": 1e-5,
               "vocab_size": lm_cfg.vocab_size, "activation_function": "gelu_new", "flash_attn": False,
               "resid_pdrop": 0.0, "embd_pdrop": 0.0, "tie_word_embeddings": False}
        assert dims.rotary_dim < head_dim
    if v.published_form:  # as the hub's ImpConfig wrote it: every value equal to its default left out
        theta = (getattr(lm_cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(lm_cfg, "rope_theta", None))
        assert (dims.rotary_dim, lm_cfg.layer_norm_eps, theta) == (32, 1e-5, 10000.0), "ImpConfig's defaults must fit"
        cfg = {"activation_function": "gelu_new", "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.1,
               "img_processor": None, "tie_word_embeddings": False, "use_cache": True,
               "eos_token_id": ids["</s>"], "pad_token_id": ids["<|endoftext|>"],
               # kept: ImpConfig's 32 heads cannot fit a 256-wide tiny model
               ("n_head" if v.family == "phi2_msft" else "num_attention_heads"): dims.n_head}
    arch = {"phi2_msft": "ImpForCausalLM", "phi2": "ImpForCausalLM", "qwen2": "ImpQwen2ForCausalLM",
            "phi3": "ImpPhi3ForCausalLM"}[v.family]
    module = {"phi2_msft": "modeling_imp", "phi2": "modeling_imp", "qwen2": "modeling_imp_qwen2",
              "phi3": "modeling_imp_phi3"}[v.family]
    vdict = {k: val for k, val in vcfg.to_dict().items() if k not in ("transformers_version", "dtype", "torch_dtype")}
    cfg.update({
        "_name_or_path": f"MILVLG/{v.name}",
        "architectures": [arch],
        # Real checkpoints ship remote code; imp-gguf must never import it.
        "auto_map": {"AutoConfig": f"configuration_imp.{arch.replace('ForCausalLM', 'Config')}",
                     "AutoModelForCausalLM": f"{module}.{arch}"},
        "model_type": v.model_type,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": dims.v_embd,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "use_mm_proj": True,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": v.image_aspect_ratio,
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        "image_token": "<image>",
        "image_token_index": ids.get("<image>", max(ids.values()) + 1),  # the 2B's tokenizer lacks it
        "vision_tower_config": vdict,
        "torch_dtype": "bfloat16",
    })
    return cfg


def save_sharded(state: dict[str, torch.Tensor], dest: Path, n_shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    per = math.ceil(len(names) / n_shards)
    weight_map = {}
    total = 0
    for i in range(n_shards):
        chunk = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: state[n].contiguous() for n in chunk}, str(dest / fname), metadata={"format": "pt"})
        for n in chunk:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def build_state(v: Variant, dims: Dims, lm_cfg: Any, vcfg: Any, seed: int) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, in Imp's names and nesting, as float32."""
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    gen = torch.Generator().manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(lm_cfg)
    _init_(lm, gen)
    vision = SiglipVisionModel(vcfg)
    _init_(vision, gen)
    proj = nn.Sequential(nn.Linear(dims.v_embd, dims.n_embd), nn.GELU(), nn.Linear(dims.n_embd, dims.n_embd))
    _init_(proj, gen)
    state = lm_to_checkpoint(v.family, {k: t for k, t in lm.state_dict().items() if "rotary_emb" not in k})
    vp, pp = vision_prefix(v.family), projector_prefix(v.family)
    kept = dims.v_layers_original - (0 if v.keep_last_block else 1)  # Imp deletes SigLIP's last block
    for k, t in vision.state_dict().items():
        k = k.removeprefix("vision_model.")
        if k.startswith("encoder.layers.") and int(k.split(".")[2]) >= kept:
            continue
        if (k.startswith("post_layernorm.") or k.startswith("head.")) and not v.keep_post_ln_and_head:
            continue
        if k.endswith("position_ids"):
            continue
        state[vp + k] = t
    for k, t in proj.state_dict().items():
        state[pp + k] = t
    return state


def make_checkpoint(variant: str, dest: str | Path, *, dims: Dims = Dims(), seed: int = 0, n_shards: int = 2,
                    dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Write one tiny Imp checkpoint folder and return its path."""
    v = VARIANTS[variant]
    dest = Path(dest)
    if dest.exists():
        if not overwrite:
            return dest
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    if v.family == "phi3":
        n_tok, ids = _write_spm(tmp, dims)
    else:
        n_tok, ids = _write_bpe(tmp, "qwen2" if v.family == "qwen2" else "gpt2", dims, v.tokenizer_files,
                                v.image_token)
    n_rows = _round_up(n_tok, 64)  # embeddings padded past the tokenizer, as in the real models
    lm_cfg = lm_config(v.family, dims, n_rows, ids)
    vcfg = vision_config(v, dims)
    state = build_state(v, dims, lm_cfg, vcfg, seed)
    save_sharded({k: t.to(dtype) for k, t in state.items()}, tmp, n_shards)
    (tmp / "config.json").write_text(json.dumps(_imp_config(v, dims, lm_cfg, vcfg, ids), indent=2))
    gen_cfg = {"eos_token_id": ids.get("</s>") if v.family.startswith("phi2") else ids.get("<|im_end|>", ids.get("<|end|>"))}
    (tmp / "generation_config.json").write_text(json.dumps(gen_cfg))
    tmp.rename(dest)
    return dest


def make_all(root: str | Path, **kw: Any) -> dict[str, Path]:
    root = Path(root)
    return {name: make_checkpoint(name, root / name, **kw) for name in VARIANTS}


def dims_with(**kw: Any) -> Dims:
    return replace(Dims(), **kw)
