"""Quantization recipes: the registry (quant_recipes/*.toml), llama.cpp's per-tensor rules, applying
a recipe through llama.cpp's quantizer, and comparing recipes side by side."""

from __future__ import annotations

from imp_gguf.quant.compare import compare_recipes
from imp_gguf.quant.quantize import apply_recipe, convert_and_quantize, plan_recipe, quantize_file
from imp_gguf.quant.recipes import QuantSpec, Recipe, list_recipes, load_recipe
from imp_gguf.quant.rules import TypeChoice, expected_types

__all__ = ["QuantSpec", "Recipe", "TypeChoice", "apply_recipe", "compare_recipes", "convert_and_quantize",
           "expected_types", "list_recipes", "load_recipe", "plan_recipe", "quantize_file"]
