"""Output file names (GGUF naming convention, with the mmproj sidecar prefix) and general.* metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gguf.metadata import Metadata
from gguf.utility import naming_convention, size_label

from imp_gguf import __version__
from imp_gguf.hub import HUB_URL, HubSource
from imp_gguf.pins import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION

VERSION_KEY, SOURCE_KEY = "imp_gguf.version", "imp_gguf.source_sha256"  # provenance, read back by pair and quant
# The hub repo and commit the checkpoint was downloaded at (general.source.url links the same commit).
SOURCE_REPO_KEY, SOURCE_COMMIT_KEY = "imp_gguf.source_repo", "imp_gguf.source_commit"


@dataclass
class ModelIdentity:
    model_id: str  # "MILVLG/Imp-v1.5-3B-196" or a folder name
    name: str
    basename: str
    organization: str | None
    finetune: str | None
    version: str | None
    size_label: str
    file_stem: str  # file names: gguf's own convention over the repo name ("Imp-v1.5-3B-196")

    @classmethod
    def from_id(cls, model_id: str, n_params: int = 0, *, size: str | None = None,
                organization: str | None = None) -> "ModelIdentity":
        full, org, base, finetune, version, found_size = Metadata.get_model_id_components(model_id)
        size = size or found_size or size_label(n_params, 0, 0, 0)
        basename = _clean(base or full or "model")
        file_stem = naming_convention(full or model_id, basename, finetune, version, size, None)
        # gguf's heuristics keep "-v1.5" in the base name and read a trailing number (Imp-v1.5-3B-196's
        # image size) as the version: for general.*, the version is the -vN of the name, the rest a variant.
        named = re.fullmatch(r"(.+?)-(v\d+(?:\.\d+)*)", basename)
        if named:
            basename, finetune, version = named[1], "-".join(x for x in (finetune, version) if x) or None, named[2]
        return cls(model_id=model_id, name=full or model_id, basename=basename, organization=org or organization,
                   finetune=finetune, version=version, size_label=size, file_stem=file_stem)

    def stem(self, encoding: str) -> str:
        """`<Base>-<Size>[-<FineTune>][-<Version>]-<ENC>` per the GGUF naming convention."""
        return f"{self.file_stem}-{encoding.upper()}"

    def lm_filename(self, encoding: str) -> str:
        return self.stem(encoding) + ".gguf"

    def mmproj_filename(self, encoding: str) -> str:
        return "mmproj-" + self.stem(encoding) + ".gguf"


def _clean(s: str) -> str:
    return re.sub(r"[^\w.+-]", "-", s).strip("-") or "model"


def add_general(writer: Any, ident: ModelIdentity, *, file_type: int, kind: str, variant: str,
                source_sha256: str, description: str, hub: HubSource | None = None,
                license: str | None = None) -> None:
    """general.* keys the way llama.cpp's converter writes them, plus imp-gguf provenance keys; `hub`:
    the repo and commit the checkpoint was downloaded at; `license`: as the source's model card states it."""
    writer.add_type(kind)  # "model" or "mmproj"
    writer.add_name(ident.name)
    writer.add_basename(ident.basename)
    writer.add_size_label(ident.size_label)
    if ident.finetune:
        writer.add_finetune(ident.finetune)
    if ident.version:
        writer.add_version(ident.version)
    base_repo = hub.repo if hub else ident.model_id if ident.organization else None
    if ident.organization:
        writer.add_organization(ident.organization)
    if base_repo:
        org, _, name = base_repo.partition("/")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, name)
        writer.add_base_model_organization(0, org)
        writer.add_base_model_repo_url(0, f"{HUB_URL}/{base_repo}")
        writer.add_source_repo_url(f"{HUB_URL}/{base_repo}")
        writer.add_string(SOURCE_REPO_KEY, base_repo)
    if hub:
        writer.add_source_url(hub.commit_url)
        writer.add_string(SOURCE_COMMIT_KEY, hub.commit)
    if license:
        writer.add_license(license)
    writer.add_description(description)
    writer.add_quantized_by(f"imp-gguf {__version__}")
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(2)
    # Reproducibility: what made this file, from what.
    writer.add_string(VERSION_KEY, __version__)
    writer.add_string("imp_gguf.variant", variant)
    writer.add_string(SOURCE_KEY, source_sha256)
    writer.add_string("imp_gguf.llama_cpp", f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} ({LLAMA_CPP_COMMIT})")
