"""The Python backend: llama.cpp through the pinned llama-cpp-python, including libmtmd.

One session holds a language model and (optionally) an mmproj. It exposes what parity checks,
the recipe comparison and `imp-gguf run` need: tokenization, per-position logits, image
embeddings, image+text prompt evaluation, greedy generation.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from gguf import Keys

from imp_gguf.chat_templates import MEDIA_MARKER, render
from imp_gguf.errors import BadInput
from imp_gguf.gguf_info import MMPROJ_ARCH, check_gguf, read_gguf_meta
from imp_gguf.images import load_image, mmproj_image_spec, open_rgb
from imp_gguf.runtime.timings import Turn, normalize


def _cpu_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _without_amx(llama_cpp: Any) -> Iterator[None]:
    """On a CPU with AMX, load the model without llama.cpp's extra weight buffers: the pinned build's AMX
    buffer segfaults in the first decode of every quantized model (seen on Xeon with amx_int8, 0.3.36).
    Llama() takes its model parameters from llama_model_default_params and has no switch for this."""
    if not _cpu_has_amx():
        yield
        return
    module = llama_cpp.llama_cpp
    default = module.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    module.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_model_default_params = default


class Session:
    def __init__(self, model: str | Path, mmproj: str | Path | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None, n_batch: int = 512, f32_kv: bool = False, verbose: bool = False,
                 prepare_images: bool = True):
        """`prepare_images=False` hands images to libmtmd as they are, to see what the wheel's stock
        clip.cpp does with them (it ignores the mmproj's preprocessing keys)."""
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self._llama_cpp, self._mtmd = llama_cpp, mtmd_cpp
        # Route libmtmd/clip logs through llama-cpp-python's level filter (quiet unless verbose).
        from llama_cpp._logger import llama_log_callback

        mtmd_cpp.mtmd_helper_log_set(llama_log_callback, ctypes.c_void_p(0))
        # A header walk (fast) instead of gguf-py's full parse, which takes seconds on a 150k vocabulary:
        # damaged files are refused before llama.cpp could abort the process on them.
        if check_gguf(model).get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH:
            raise BadInput(f"{Path(model).name} is an mmproj (arch {MMPROJ_ARCH}), not a language model")
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        # Parity checks want an F32 KV cache: the default F16 cache rounds keys and values.
        kv = 0 if f32_kv else None  # GGML_TYPE_F32; None: llama.cpp's default
        try:
            with _without_amx(llama_cpp):
                self.llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                           n_threads=self.n_threads, logits_all=True, verbose=verbose, type_k=kv,
                                           type_v=kv)
        except ValueError as exc:
            raise BadInput(f"llama.cpp cannot load {Path(model).name}: {exc}") from exc
        self.chat_template = self.llm.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE) or ""
        self.vocab = self.llm._model.vocab
        self.mtmd_ctx = None
        self.image_size, self.image_aspect = 0, "square"
        if mmproj is not None:
            try:
                self._load_mmproj(mmproj, verbose)
            except BaseException:
                self.llm.close()
                raise
        self.last_timings: dict[str, float] = {}
        self.prepare_images = prepare_images

    def _load_mmproj(self, mmproj: str | Path, verbose: bool) -> None:
        mtmd_cpp = self._mtmd
        mm_meta = read_gguf_meta(mmproj)
        if (arch := mm_meta.get(Keys.General.ARCHITECTURE)) != MMPROJ_ARCH:
            raise BadInput(f"{Path(mmproj).name} is not an mmproj (arch {arch})")
        self.image_size, self.image_aspect = mmproj_image_spec(mm_meta, Path(mmproj).name)
        width = int(mm_meta.get(Keys.ClipVision.PROJECTION_DIM, 0))
        if width and width != self.llm.n_embd():
            raise BadInput(f"mmproj output width {width} does not match the model's width {self.llm.n_embd()}")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = verbose
        params.n_threads = self.n_threads
        params.warmup = False
        self.mtmd_ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, params)
        if not self.mtmd_ctx:
            raise BadInput(f"libmtmd cannot load {Path(mmproj).name} with this model")

    def close(self) -> None:
        if self.mtmd_ctx:
            self._mtmd.mtmd_free(self.mtmd_ctx)
            self.mtmd_ctx = None
        self.llm.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ text

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def text_logits(self, tokens: list[int]) -> np.ndarray:
        """[len(tokens), n_vocab] logits, from a fresh context."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    # ------------------------------------------------------------ images

    def _bitmap(self, image: str | Path):
        if not self.mtmd_ctx:
            raise BadInput("this session has no mmproj")
        img = load_image(image, self.image_size, self.image_aspect) if self.prepare_images else open_rgb(image)
        data = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
        buf = (ctypes.c_uint8 * data.nbytes).from_buffer_copy(data.tobytes())
        bmp = self._mtmd.mtmd_bitmap_init(img.width, img.height, buf)
        if not bmp:
            raise BadInput(f"libmtmd refused image {image}")
        return bmp

    def _chunks(self, text: str, images: list[str | Path], add_special: bool = True):
        mt = self._mtmd
        bitmaps = [self._bitmap(p) for p in images]
        chunks = mt.mtmd_input_chunks_init()
        inp = mt.mtmd_input_text()
        raw = text.encode("utf-8")
        inp.text, inp.text_len = raw, len(raw)
        inp.add_special, inp.parse_special = add_special, True
        arr = (mt.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        try:
            rc = mt.mtmd_tokenize(self.mtmd_ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        finally:
            for b in bitmaps:
                mt.mtmd_bitmap_free(b)
        if rc != 0:
            mt.mtmd_input_chunks_free(chunks)
            raise BadInput(f"libmtmd could not tokenize the prompt (code {rc}; one {MEDIA_MARKER} per image?)")
        return chunks

    def image_embeddings(self, image: str | Path) -> np.ndarray:
        """[n_image_tokens, n_embd] projector output for one image."""
        mt = self._mtmd
        chunks = self._chunks(MEDIA_MARKER, [image], add_special=False)
        try:
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) != mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    continue
                n = mt.mtmd_input_chunk_get_n_tokens(chunk)
                t0 = time.perf_counter()
                if mt.mtmd_encode_chunk(self.mtmd_ctx, chunk) != 0:
                    raise BadInput("libmtmd failed to encode the image")
                self.last_timings["encode_ms"] = (time.perf_counter() - t0) * 1e3
                ptr = mt.mtmd_get_output_embd(self.mtmd_ctx)
                return np.ctypeslib.as_array(ptr, shape=(n * self.llm.n_embd(),)).reshape(n, -1).copy()
        finally:
            mt.mtmd_input_chunks_free(chunks)
        raise BadInput("prompt produced no image chunk")

    def eval_prompt(self, prompt: str, images: Sequence[str | Path] = (), *, keep: bool = False) -> np.ndarray:
        """Evaluate a formatted prompt (with one media marker per image); returns the last logits.

        keep=False starts from an empty context (BOS added as the model asks); keep=True appends to what
        the context holds (a conversation's next turn: no BOS, the earlier turns' KV reused)."""
        llama_cpp, mt, llm = self._llama_cpp, self._mtmd, self.llm
        if not keep:
            llm.reset()
            llm._ctx.kv_cache_clear()
        self.last_timings = {"encode_ms": 0.0, "prefill_ms": 0.0, "cached_tokens": llm.n_tokens}
        if not images:
            toks = self.tokenize(prompt, add_special=not keep)
            self._check_room(len(toks))
            t0 = time.perf_counter()
            llm.eval(toks)
            self.last_timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
            self.last_timings["prompt_tokens"] = len(toks)
            return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        chunks = self._chunks(prompt, list(images), add_special=not keep)
        n_tokens = 0
        try:
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    toks = [ptr[j] for j in range(n.value)]
                    self._check_room(len(toks))
                    t0 = time.perf_counter()
                    llm.eval(toks)
                    self.last_timings["prefill_ms"] += (time.perf_counter() - t0) * 1e3
                    n_tokens += len(toks)
                else:
                    n_img = mt.mtmd_input_chunk_get_n_tokens(chunk)
                    self._check_room(n_img)
                    new_past = llama_cpp.llama_pos(0)
                    t0 = time.perf_counter()
                    rc = mt.mtmd_helper_eval_chunk_single(self.mtmd_ctx, llm._ctx.ctx, chunk,
                                                          llama_cpp.llama_pos(llm.n_tokens), llama_cpp.llama_seq_id(0),
                                                          llm.n_batch, True, ctypes.byref(new_past))
                    if rc != 0:
                        raise BadInput(f"libmtmd failed to evaluate the image (code {rc})")
                    self.last_timings["encode_ms"] += (time.perf_counter() - t0) * 1e3
                    # Keep the Python-side token history in step (image positions hold no token id).
                    llm.input_ids[llm.n_tokens:new_past.value] = -1
                    llm.n_tokens = new_past.value
                    n_tokens += n_img
        finally:
            mt.mtmd_input_chunks_free(chunks)
        self.last_timings["prompt_tokens"] = n_tokens
        return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)

    def _check_room(self, n_new: int) -> None:
        if self.llm.n_tokens + n_new > self.llm.n_ctx():
            raise BadInput(f"the prompt needs {self.llm.n_tokens + n_new} tokens; the context holds {self.llm.n_ctx()}")

    def generate(self, prompt: str, images: Sequence[str | Path] = (), *, max_tokens: int = 64,
                 on_text: Callable[[str], None] | None = None, keep: bool = False) -> str:
        """Greedy decoding until an end-of-generation token; streams text pieces to on_text."""
        return self.decode(self.eval_prompt(prompt, images, keep=keep), max_tokens=max_tokens, on_text=on_text)

    def decode(self, logits: np.ndarray, *, max_tokens: int = 64, on_text: Callable[[str], None] | None = None) -> str:
        """Greedy decoding from `logits` (the prompt's last); every token but a final end-of-generation one
        is evaluated, so the context then holds the prompt and the answer. Stops early when it is full."""
        out: list[int] = []
        shown = ""
        t0 = time.perf_counter()
        for _ in range(max_tokens):
            tok = int(np.argmax(logits))
            if self.is_eog(tok) or self.llm.n_tokens >= self.llm.n_ctx():
                break
            out.append(tok)
            text = self.detokenize(out)
            if on_text and len(text) > len(shown) and not text.endswith("\ufffd"):
                on_text(text[len(shown):])
                shown = text
            self.llm.eval([tok])
            logits = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
        dt = time.perf_counter() - t0
        self.last_timings["decode_tokens"] = len(out)
        self.last_timings["decode_ms"] = dt * 1e3
        text = self.detokenize(out)
        if on_text and len(text) > len(shown):
            on_text(text[len(shown):])
        return text

    def chat_prompt(self, question: str, *, image: bool = True) -> str:
        return render(self.chat_template, [{"role": "user", "content": user_content(question, image)}])


def user_content(question: str, image: bool) -> str:
    """A user turn's content: the image's media marker before the question of the turn that shows it."""
    return f"{MEDIA_MARKER}\n{question}" if image else question


class Conversation:
    """Questions about one image as turns of one chat, in one context: the image is encoded and prefilled
    by the first turn only; each later turn evaluates just the text the chat template adds (the end of
    the previous answer, the new question, the assistant's cue) on top of the KV the earlier turns left.

    `text` is exactly what the context holds, as text: the rendered conversation so far plus the answers
    as generated. A turn renders the whole conversation again and evaluates what follows `text`."""

    def __init__(self, session: Session, image: str | Path) -> None:
        self.session, self.image = session, image
        self.messages: list[dict] = []
        self._pending: list[dict] = []
        self.text = ""

    def feed(self, question: str) -> np.ndarray:
        """Evaluate the next turn's prompt for `question`; returns the logits of the answer's first token
        (session.last_timings: this turn's prompt figures). `answer` then generates it."""
        first = not self.messages
        self._pending = [*self.messages, {"role": "user", "content": user_content(question, first)}]
        full = render(self.session.chat_template, self._pending)
        if first or not full.startswith(self.text):
            # First turn, or a template that renders earlier turns differently once more follow (then the
            # context cannot be continued): evaluate everything, image included, from an empty context.
            logits = self.session.eval_prompt(full, [self.image])
        else:
            logits = self.session.eval_prompt(full[len(self.text):], keep=True)
        self.text = full
        return logits

    def answer(self, logits: np.ndarray, *, max_tokens: int = 64,
               on_text: Callable[[str], None] | None = None) -> str:
        answer = self.session.decode(logits, max_tokens=max_tokens, on_text=on_text)
        # The assistant's content as the template will render it next turn: the template puts its own
        # separator (a space, a newline) before it.
        self.messages = [*self._pending, {"role": "assistant", "content": answer.strip()}]
        self.text += answer
        return answer

    def ask(self, question: str, *, max_tokens: int = 64, on_text: Callable[[str], None] | None = None) -> str:
        """The greedy answer to `question`; session.last_timings holds this turn's figures."""
        return self.answer(self.feed(question), max_tokens=max_tokens, on_text=on_text)

    def turn(self, question: str, *, max_tokens: int = 64, on_text: Callable[[str], None] | None = None) -> Turn:
        """`ask`, as a typed turn: the answer as printed (stripped) and this turn's timings."""
        answer = self.ask(question, max_tokens=max_tokens, on_text=on_text)
        return Turn(question=question, answer=answer.strip(), timings=normalize(self.session.last_timings))
