"""The converters, one file per source layout (phi2_msft, phi2, qwen2, phi3 for the language model;
siglip for the mmproj), listed by name, and layout detection for a checkpoint.

Detection trusts tensor names first (the two Phi-2 layouts share one model_type) and then checks
that config.json's model_type agrees.
"""

from __future__ import annotations

from typing import Any

from imp_gguf.converters.base import LMFamily
from imp_gguf.converters.phi2 import Phi2
from imp_gguf.converters.phi2_msft import Phi2Msft
from imp_gguf.converters.phi3 import Phi3
from imp_gguf.converters.qwen2 import Qwen2
from imp_gguf.errors import BadInput

FAMILIES: dict[str, type[LMFamily]] = {f.name: f for f in (Phi2Msft, Phi2, Phi3, Qwen2)}


def detect_family(config: dict[str, Any], names: set[str]) -> type[LMFamily]:
    model_type = config.get("model_type")
    if not model_type:
        raise BadInput("config.json has no model_type")
    known_types = sorted({t for f in FAMILIES.values() for t in f.model_types})
    if model_type not in known_types:
        raise BadInput(f"unknown model_type {model_type!r} (supported: {', '.join(known_types)})")
    matches = [f for f in FAMILIES.values() if f.detect(names)]
    if not matches:
        raise BadInput(f"no supported Imp tensor layout found for model_type {model_type!r} "
                       "(expected e.g. transformer.embd.wte.weight or model.layers.0.*)")
    if len(matches) > 1:
        raise BadInput(f"ambiguous tensor layout: matches {', '.join(m.name for m in matches)}")
    fam = matches[0]
    if model_type not in fam.model_types:
        raise BadInput(f"model_type {model_type!r} does not match the tensors, which are {fam.description}")
    return fam

