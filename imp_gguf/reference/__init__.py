"""The PyTorch side: the one PyTorch Imp (`model.ImpModel`), Imp's own preprocessing, parity checks.

Needs the `reference` extra (torch, transformers); nothing in the conversion path imports it.
"""
