"""The mmproj side: Imp's SigLIP tower (last block already dropped) and its mlp2x_gelu projector.

Written as llama.cpp's `clip` arch with projector type `mlp`. clip.cpp's llava graph runs
`block_count - 1` blocks unless `clip.vision.feature_layer` is set, so we store exactly the blocks
Imp runs and name that count as the feature layer: the n-1 rule then cannot drop another block.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gguf import VISION_PROJECTOR_TYPE, VISION_PROJECTOR_TYPE_NAMES

from imp_gguf.converters.base import T, gguf_name
from imp_gguf.errors import BadInput
from imp_gguf.images import ASPECT_KEY, PAD_COLOR

# google/siglip-so400m-patch14-384's own vision config: what Imp loads when the checkpoint carries no
# vision_tower_config (Imp-v1.5-2B-Qwen1.5), and what a config that omits a key means.
SO400M: dict[str, Any] = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                          "num_hidden_layers": 27, "patch_size": 14, "layer_norm_eps": 1e-6, "image_size": 384}
VISION = "vision_tower.vision_tower.vision_model."
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# clip.cpp reads this key (the blocks to run), but the pinned gguf-py has no name for it.
FEATURE_LAYER_KEY = "clip.vision.feature_layer"
# How to fit an image to the encoder, in clip.cpp's own three hyper-parameters. Stock clip.cpp ignores
# these keys; imp-gguf's builds read them (runtime/patches/0001-*.patch, docs/clip-preprocessing-keys.md).
RESIZE_PAD_KEY = "clip.vision.image_resize_pad"
RESIZE_ALGO_KEY = "clip.vision.image_resize_algo"
PAD_COLOR_KEY = "clip.vision.image_pad_color"
# Imp's "square": stretch (PAD_NONE). Imp's "pad": a centred grey square first, then stretch: the
# patch's PAD_SQUARE. clip.cpp's own fit-then-pad styles blend the image's edge rows differently, and
# the tiny 4B fixture's tokens there drop to cosine 0.96 against Imp.
RESIZE_PAD = {"square": "none", "pad": "square"}

_BLOCK = {
    "layer_norm1": T.V_ENC_INPUT_NORM, "layer_norm2": T.V_ENC_POST_ATTN_NORM,
    "self_attn.q_proj": T.V_ENC_ATTN_Q, "self_attn.k_proj": T.V_ENC_ATTN_K, "self_attn.v_proj": T.V_ENC_ATTN_V,
    "self_attn.out_proj": T.V_ENC_ATTN_O, "mlp.fc1": T.V_ENC_FFN_UP, "mlp.fc2": T.V_ENC_FFN_DOWN,
}


@dataclass
class VisionHparams:
    n_embd: int
    n_ff: int
    n_head: int
    patch_size: int
    image_size: int
    n_patches: int
    eps: float
    original_blocks: int
    stored_blocks: int
    run_blocks: int
    projection_dim: int  # LLM width the projector maps to
    aspect: str = "square"  # Imp's image_aspect_ratio: "pad" (to a centred grey square) or "square" (squash)
    notes: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)  # taken from SigLIP-SO400M's config

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def vision_hparams(config: dict[str, Any], tensors: dict[str, Any], prefix: str, lm_width: int) -> VisionHparams:
    vp = prefix + VISION
    vtc = config.get("vision_tower_config") or {}
    if isinstance(vtc, dict) and "vision_config" in vtc:  # a full SiglipConfig was nested
        vtc = vtc["vision_config"] or {}
    notes: list[str] = []
    pe = tensors.get(vp + "embeddings.patch_embedding.weight")
    pos = tensors.get(vp + "embeddings.position_embedding.weight")
    if pe is None or pos is None:
        raise BadInput(f"missing vision tower tensors under {vp} (patch or position embedding)")
    if len(pe.shape) != 4 or pe.shape[1] != 3 or pe.shape[2] != pe.shape[3]:
        raise BadInput(f"{vp}embeddings.patch_embedding.weight has shape {list(pe.shape)}, expected [D, 3, p, p]")
    n_embd, patch = int(pe.shape[0]), int(pe.shape[2])
    n_patches = int(pos.shape[0])
    grid = math.isqrt(n_patches)
    if grid * grid != n_patches or tuple(pos.shape) != (n_patches, n_embd):
        raise BadInput(f"position embedding shape {list(pos.shape)} is not a square grid of width {n_embd}")
    defaults: dict[str, Any] = {}

    def get(key: str) -> Any:
        if vtc.get(key) is not None:  # null means absent, as transformers reads it
            return vtc[key]
        if n_embd != SO400M["hidden_size"] and key in ("num_attention_heads", "num_hidden_layers", "image_size"):
            return None  # not SO400M: its defaults say nothing
        defaults["vision." + key] = SO400M[key]
        return SO400M[key]

    if vtc.get("image_size") is not None:
        image_size = _image_size(vtc["image_size"], patch, grid, n_patches)
    elif n_embd == SO400M["hidden_size"] and SO400M["image_size"] // patch == grid:
        image_size = defaults["vision.image_size"] = SO400M["image_size"]
    else:
        image_size = grid * patch
        notes.append(f"image size not in the config: assuming {image_size} px ({grid}x{grid} patches of {patch} px)")
    aspect = config.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square"):
        notes.append(f"image_aspect_ratio {aspect!r}: Imp squashes every image that is not 'pad'")
        aspect = "square"

    stored = _stored_blocks(tensors, vp)
    fc1 = tensors.get(vp + "encoder.layers.0.mlp.fc1.weight")
    n_ff = int(fc1.shape[0]) if fc1 is not None else int(get("intermediate_size"))
    n_head = get("num_attention_heads")
    if n_head is None:
        if n_embd % 72:
            raise BadInput("cannot infer the vision head count: add vision_tower_config.num_attention_heads")
        n_head = n_embd // 72
    original = get("num_hidden_layers")
    if original is None:
        original = stored + 1
        notes.append(f"no vision_tower_config: assuming the tower had {original} blocks before Imp dropped one")
    select = int(config.get("mm_vision_select_layer", -2))
    run = int(original) + select + 1 if select < 0 else select
    if run <= 0:
        raise BadInput(f"mm_vision_select_layer {select} leaves no vision blocks to run")
    if stored < run:
        raise BadInput(f"vision tower stores {stored} blocks but Imp runs {run} "
                       f"({original} original blocks, mm_vision_select_layer {select})")
    if stored > run:
        notes.append(f"ignoring stored vision blocks {run}..{stored - 1}: Imp runs {run}")
    proj2 = tensors.get(prefix + "mm_projector.2.weight")
    if proj2 is not None and int(proj2.shape[0]) != lm_width:
        raise BadInput(f"projector output width {proj2.shape[0]} does not match the language model width {lm_width}")
    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise BadInput(f"unsupported mm_projector_type {config.get('mm_projector_type')!r} (Imp uses mlp2x_gelu)")
    for extra in ("post_layernorm.weight", "head.probe"):
        if vp + extra in tensors:
            notes.append(f"ignoring {extra.split('.')[0]} (Imp takes features before it)")
    return VisionHparams(n_embd=n_embd, n_ff=n_ff, n_head=int(n_head), patch_size=patch, image_size=image_size,
                         n_patches=n_patches, eps=float(get("layer_norm_eps")), original_blocks=int(original),
                         stored_blocks=stored, run_blocks=run, projection_dim=lm_width, aspect=aspect, notes=notes,
                         defaults=defaults)


def _image_size(configured: Any, patch: int, grid: int, n_patches: int) -> int:
    """The size Imp resizes images to. The stride-`patch` conv reads only the first grid*patch pixels
    (27 x 14 = 378 of 384), so the weights alone cannot tell 384 from 378: the config (or SigLIP's
    default) names it, and the grid checks it."""
    size = int(configured)
    if size // patch != grid:
        raise BadInput(f"vision_tower_config: image_size {size} makes a {size // patch}x{size // patch} grid of "
                       f"{patch}-px patches, but the weights hold {n_patches} position embeddings ({grid}x{grid})")
    return size


def _stored_blocks(tensors: dict[str, Any], vp: str) -> int:
    pat = re.compile(re.escape(vp) + r"encoder\.layers\.(\d+)\.")
    ids = {int(m.group(1)) for n in tensors if (m := pat.match(n))}
    if ids and ids != set(range(max(ids) + 1)):
        missing = sorted(set(range(max(ids) + 1)) - ids)
        raise BadInput(f"vision tower block {missing[0]} is missing")
    return len(ids)


def plan(vh: VisionHparams, tensors: dict[str, Any], prefix: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(source, gguf, shape) for every mmproj tensor, validated; extra blocks, post-LN and head skipped."""
    vp = prefix + VISION
    D, F, p = vh.n_embd, vh.n_ff, vh.patch_size
    want: list[tuple[str, str, tuple[int, ...]]] = [
        (vp + "embeddings.patch_embedding.weight", gguf_name(T.V_ENC_EMBD_PATCH), (D, 3, p, p)),
        (vp + "embeddings.patch_embedding.bias", gguf_name(T.V_ENC_EMBD_PATCH, "bias"), (D,)),
        (vp + "embeddings.position_embedding.weight", gguf_name(T.V_ENC_EMBD_POS), (vh.n_patches, D)),
    ]
    shapes = {T.V_ENC_INPUT_NORM: (D,), T.V_ENC_POST_ATTN_NORM: (D,), T.V_ENC_ATTN_Q: (D, D), T.V_ENC_ATTN_K: (D, D),
              T.V_ENC_ATTN_V: (D, D), T.V_ENC_ATTN_O: (D, D), T.V_ENC_FFN_UP: (F, D), T.V_ENC_FFN_DOWN: (D, F)}
    for b in range(vh.run_blocks):
        for src, dst in _BLOCK.items():
            for kind in ("weight", "bias"):
                shape = shapes[dst] if kind == "weight" else (shapes[dst][0],)
                want.append((f"{vp}encoder.layers.{b}.{src}.{kind}", gguf_name(dst, kind).format(bid=b), shape))
    H = vh.projection_dim
    want += [(f"{prefix}mm_projector.{i}.{kind}", gguf_name(T.V_MMPROJ, kind).format(bid=i),
              ((H, D) if i == 0 else (H, H)) if kind == "weight" else (H,))
             for i in (0, 2) for kind in ("weight", "bias")]
    for src, _dst, shape in want:
        ref = tensors.get(src)
        if ref is None:
            raise BadInput(f"missing tensor {src!r}")
        if tuple(ref.shape) != shape:
            raise BadInput(f"tensor {src!r} has shape {list(ref.shape)}, expected {list(shape)}")
    known = {w[0] for w in want}
    ignorable = re.compile(re.escape(vp) + r"(post_layernorm\.|head\.|encoder\.layers\.\d+\.|embeddings\.position_ids)")
    for name in tensors:
        if name.startswith(prefix + "vision_tower.") or name.startswith(prefix + "mm_projector."):
            if name not in known and not ignorable.match(name):
                raise BadInput(f"unexpected tensor {name!r} in the vision tower or projector")
    return want


def add_mmproj_kv(writer: Any, vh: VisionHparams) -> None:
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(VISION_PROJECTOR_TYPE_NAMES[VISION_PROJECTOR_TYPE.MLP])
    writer.add_vision_image_size(vh.image_size)
    writer.add_vision_patch_size(vh.patch_size)
    writer.add_vision_embedding_length(vh.n_embd)
    writer.add_vision_feed_forward_length(vh.n_ff)
    writer.add_vision_block_count(vh.run_blocks)
    writer.add_vision_head_count(vh.n_head)
    writer.add_vision_attention_layernorm_eps(vh.eps)
    writer.add_vision_projection_dim(vh.projection_dim)
    writer.add_vision_image_mean(list(IMAGE_MEAN))
    writer.add_vision_image_std(list(IMAGE_STD))
    # SigLIP's gelu_pytorch_tanh; without this key clip.cpp falls back to gelu_quick.
    writer.add_vision_use_gelu(True)
    writer.add_array(FEATURE_LAYER_KEY, [vh.run_blocks])
    writer.add_string(ASPECT_KEY, vh.aspect)
    writer.add_string(RESIZE_PAD_KEY, RESIZE_PAD[vh.aspect])
    writer.add_string(RESIZE_ALGO_KEY, "bicubic")  # ImpImageProcessor: PIL bicubic
    if vh.aspect == "pad":
        writer.add_array(PAD_COLOR_KEY, list(PAD_COLOR))
