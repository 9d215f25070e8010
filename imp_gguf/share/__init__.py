"""Sharing a converted folder: model card, ollama Modelfile, LM Studio layout (`imp-gguf card`)."""
