"""The one dtype policy: the converter's output types (--outtype) and which GGML type each tensor is
written as for one of them.

Mirrors llama.cpp's converter: vectors, norms and position embeddings stay F32; the patch
embedding is F16 at most (clip.cpp's conv kernels); Q8_0 needs rows divisible by 32, else F16.
K-quants are not produced here: they come from llama.cpp's quantizer (imp_gguf.quant).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, LlamaFileType

from imp_gguf.errors import BadInput
from imp_gguf.spelling import closest


@dataclass(frozen=True)
class Outtype:
    """One --outtype: its name as llama.cpp's convert_hf_to_gguf.py spells it, the GGML type its
    weights are written as, and the general.file_type it declares."""

    name: str
    ggml_type: GGMLQuantizationType
    file_type: LlamaFileType

    @property
    def encoding(self) -> str:
        """The file-name label (`<Base>-<Size>-<ENC>.gguf`): F16, Q8_0, ..."""
        return self.ggml_type.name


OUTTYPES: dict[str, Outtype] = {o.name: o for o in (
    Outtype("f32", GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    Outtype("f16", GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    Outtype("bf16", GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    Outtype("q8_0", GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
)}


def parse_outtype(spec: str) -> Outtype:
    """--outtype in any case (F16, f16); anything else is refused with the one message for it."""
    hit = OUTTYPES.get(spec.strip().lower())
    if hit is not None:
        return hit
    guess = closest(spec, OUTTYPES)
    raise BadInput(f"--outtype must be one of {', '.join(OUTTYPES)}, not {spec!r}"
                   + (f"; did you mean {guess}?" if guess else ""))


ALWAYS_F32 = (TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_POS] + ".weight",)


def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> tuple[GGMLQuantizationType, str | None]:
    """(type, note) for one tensor; the note explains a fallback from the requested type."""
    want = OUTTYPES[outtype].ggml_type
    if want == GGMLQuantizationType.F32 or len(shape) == 1 or name.endswith("norm.weight") or name in ALWAYS_F32:
        return GGMLQuantizationType.F32, None
    if name == TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight":
        return GGMLQuantizationType.F16, None
    if want == GGMLQuantizationType.Q8_0 and shape[-1] % 32:
        return GGMLQuantizationType.F16, f"{name}: rows of {shape[-1]} are not divisible by 32, written as F16"
    return want, None


# safetensors dtypes whose bytes are already the GGML type's bytes (both little-endian, same layout)
VERBATIM = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16, "BF16": GGMLQuantizationType.BF16}


def copies_verbatim(src_dtype: str, gtype: GGMLQuantizationType) -> bool:
    """True when a tensor stored as src_dtype is written as gtype byte for byte (copied, not converted)."""
    return VERBATIM.get(src_dtype) == gtype
