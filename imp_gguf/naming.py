"""Output file names (GGUF naming convention, with the mmproj sidecar prefix) and general.* metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gguf.metadata import Metadata
from gguf.utility import naming_convention, size_label

from imp_gguf import __version__
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION

ENCODINGS = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
VERSION_KEY, SOURCE_KEY = "imp_gguf.version", "imp_gguf.source_sha256"  # provenance, read back by pair and quant


@dataclass
class ModelIdentity:
    model_id: str  # "MILVLG/Imp-v1.5-3B-196" or a folder name
    name: str
    basename: str
    organization: str | None
    finetune: str | None
    version: str | None
    size_label: str

    @classmethod
    def from_id(cls, model_id: str, n_params: int) -> "ModelIdentity":
        full, org, base, finetune, version, size = Metadata.get_model_id_components(model_id)
        return cls(model_id=model_id, name=full or model_id, basename=_clean(base or full or "model"),
                   organization=org, finetune=finetune, version=version,
                   size_label=size or size_label(n_params, 0, 0, 0))

    def stem(self, encoding: str) -> str:
        """`<Base>-<Size>[-<FineTune>][-<Version>]-<ENC>` per the GGUF naming convention."""
        return naming_convention(self.name, self.basename, self.finetune, self.version, self.size_label, encoding)

    def lm_filename(self, encoding: str) -> str:
        return self.stem(encoding) + ".gguf"

    def mmproj_filename(self, encoding: str) -> str:
        return "mmproj-" + self.stem(encoding) + ".gguf"


def _clean(s: str) -> str:
    return re.sub(r"[^\w.+-]", "-", s).strip("-") or "model"


def add_general(writer: Any, ident: ModelIdentity, *, file_type: int, kind: str, variant: str,
                source_sha256: str, description: str) -> None:
    """general.* keys the way llama.cpp's converter writes them, plus imp-gguf provenance keys."""
    writer.add_type(kind)  # "model" or "mmproj"
    writer.add_name(ident.name)
    writer.add_basename(ident.basename)
    writer.add_size_label(ident.size_label)
    if ident.finetune:
        writer.add_finetune(ident.finetune)
    if ident.version:
        writer.add_version(ident.version)
    if ident.organization:
        writer.add_organization(ident.organization)
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, ident.name)
        writer.add_base_model_organization(0, ident.organization)
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{ident.model_id}")
        writer.add_source_repo_url(f"https://huggingface.co/{ident.model_id}")
    writer.add_description(description)
    writer.add_quantized_by(f"imp-gguf {__version__}")
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(2)
    # Reproducibility: what made this file, from what.
    writer.add_string(VERSION_KEY, __version__)
    writer.add_string("imp_gguf.variant", variant)
    writer.add_string(SOURCE_KEY, source_sha256)
    writer.add_string("imp_gguf.llama_cpp", f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} ({LLAMA_CPP_COMMIT})")
