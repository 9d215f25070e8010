"""imp-gguf: MILVLG Imp checkpoints to llama.cpp GGUF, quantized, run and benchmarked."""

__version__ = "0.1.0"
