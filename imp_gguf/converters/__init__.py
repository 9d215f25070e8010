"""The converters, one file per source layout (phi2_msft, phi2, qwen2, phi3 for the language model;
siglip for the mmproj); registry.py lists them by name and detects a checkpoint's layout."""
