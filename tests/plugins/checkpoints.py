"""Fixtures giving tests tiny Imp checkpoints and their converted GGUFs."""
