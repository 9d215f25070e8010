"""The one dtype policy: which GGML type each tensor is written as, for a given --outtype.

Mirrors llama.cpp's converter: vectors, norms and position embeddings stay F32; the patch
embedding is F16 at most (clip.cpp's conv kernels); Q8_0 needs rows divisible by 32, else F16.
K-quants are not produced here: they come from llama.cpp's quantizer (imp_gguf.quant).
"""

from __future__ import annotations

from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType as T, LlamaFileType

OUTTYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}
FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
              "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
ALWAYS_F32 = (TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_POS] + ".weight",)


def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> tuple[T, str | None]:
    """(type, note) for one tensor; the note explains a fallback from the requested type."""
    want = OUTTYPES[outtype]
    if want == T.F32 or len(shape) == 1 or name.endswith("norm.weight") or name in ALWAYS_F32:
        return T.F32, None
    if name == TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight":
        return T.F16, None
    if want == T.Q8_0 and shape[-1] % 32:
        return T.F16, f"{name}: rows of {shape[-1]} are not divisible by 32, written as F16"
    return want, None


# safetensors dtypes whose bytes are already the GGML type's bytes (both little-endian, same layout)
VERBATIM = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16}


def copies_verbatim(src_dtype: str, gtype: T) -> bool:
    """True when a tensor stored as src_dtype is written as gtype byte for byte (copied, not converted)."""
    return VERBATIM.get(src_dtype) == gtype
