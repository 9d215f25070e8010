"""The context a job needs: its prompt (text + image tokens) and generated tokens, rounded up.

One rule for `bench`, `run` and the bundle's run.sh: a context sized to the job keeps the KV cache (F16:
about 0.33 MB per cell for Phi-2) from costing more memory than the model needs; llama.cpp pads the
cache to 256 cells in any case.
"""

from __future__ import annotations

from pathlib import Path

from gguf import Keys

from imp_gguf.gguf_info import read_gguf_meta

CTX_ROUND = 256
TEXT_BUDGET = 256  # question + chat template tokens, where the question is not known in advance (run.sh)
GEN_BUDGET = 256  # generated tokens, where no limit is given (run.sh)
# A conversation whose questions are not known in advance (run's interactive mode, chat.sh, serve.sh) is
# sized for CHAT_TURNS turns of a typed question (CHAT_TEXT_BUDGET tokens with the template's) and an answer.
CHAT_TURNS = 4
CHAT_TEXT_BUDGET = 64


def job_context(n_prompt: int, n_gen: int, round_to: int = CTX_ROUND) -> int:
    """Cells for n_prompt prompt tokens (text + image) then n_gen generated ones, rounded up."""
    need = max(1, int(n_prompt) + int(n_gen))
    return -(-need // round_to) * round_to


def kv_cell_bytes(model_meta: dict, bytes_per_value: int = 2) -> int:
    """Bytes one context cell takes in the KV cache (F16 by default): keys and values of every layer."""
    arch = model_meta.get(Keys.General.ARCHITECTURE)

    def n(key: str) -> int:
        return int(model_meta.get(key.format(arch=arch)) or 0)

    n_layer, n_embd = n(Keys.LLM.BLOCK_COUNT), n(Keys.LLM.EMBEDDING_LENGTH)
    n_head = n(Keys.Attention.HEAD_COUNT) or 1
    n_head_kv = n(Keys.Attention.HEAD_COUNT_KV) or n_head
    head_k = n(Keys.Attention.KEY_LENGTH) or n_embd // n_head
    head_v = n(Keys.Attention.VALUE_LENGTH) or n_embd // n_head
    return n_layer * n_head_kv * (head_k + head_v) * bytes_per_value


def text_tokens_bound(question: str, template_tokens: int = 64) -> int:
    """An upper bound of the text tokens of a question wrapped in a chat template, without a tokenizer:
    byte-level BPE and SentencePiece never emit more tokens than UTF-8 bytes (plus the template's)."""
    return len(question.encode("utf-8")) + template_tokens


def image_tokens(mmproj_meta: dict) -> int:
    """Image tokens an mmproj gives one image: (image size // patch size) squared (one slice)."""
    size = int(mmproj_meta.get(Keys.ClipVision.IMAGE_SIZE) or 0)
    patch = int(mmproj_meta.get(Keys.ClipVision.PATCH_SIZE) or 14)
    return (size // patch) ** 2


def chat_context(n_image: int, n_gen: int = GEN_BUDGET, turns: int = CHAT_TURNS) -> int:
    """Cells for a conversation about one image of `turns` typed questions, each answered in n_gen tokens."""
    return job_context(n_image + turns * CHAT_TEXT_BUDGET, turns * n_gen)


def run_context(mmproj: str | Path, questions: str | list[str] | None, max_tokens: int) -> int:
    """The context `imp-gguf run` gives questions about one image, asked in turn (each answered in
    max_tokens); None: questions typed one by one (chat_context)."""
    n_image = image_tokens(read_gguf_meta(mmproj))
    if questions is None:
        return chat_context(n_image, max_tokens)
    qs = [questions] if isinstance(questions, str) else questions
    return job_context(n_image + sum(text_tokens_bound(q) for q in qs), len(qs) * max_tokens)
