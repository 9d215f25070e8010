"""Quantization recipes: the registry (recipes.py, reading quant_recipes/*.toml), llama.cpp's per-tensor
rules (rules.py), applying a recipe through llama.cpp's quantizer (quantize.py), the catalog of measured
recipes (catalog.py, released.py), and comparing recipes side by side (compare.py, evalset.py, plot.py)."""
