"""The PyTorch side: tiny Imp fixtures, the reference Imp model, parity checks.

Needs the `reference` extra (torch, transformers); nothing in the conversion path imports it.
"""
