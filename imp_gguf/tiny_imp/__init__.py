"""A tiny Imp that really sees: trained on synthetic shapes, shipped as imp-gguf's embedded default.

bundled.py finds the shipped checkpoint and demo images; data.py draws the scenes and questions;
model.py and train.py train it (torch); evaluate.py checks it through PyTorch and llama.cpp.
"""
