"""The pinned llama.cpp runtime: source (source.py), per-target builds (build.py), runners (runner.py),
device bundles (bundle.py)."""
