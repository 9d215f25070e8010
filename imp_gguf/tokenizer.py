"""HF tokenizer files -> GGUF vocabulary, special tokens and Imp's chat template.

The family decides the tokenizer model and llama.cpp pre-tokenizer (phi-2, qwen2, SentencePiece),
so there is no hash lottery. Reads tokenizer.json (or vocab.json + merges.txt) for byte-level BPE,
tokenizer.model for SentencePiece; never runs tokenizer code from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gguf import TokenType

from imp_gguf.chat_templates import TEMPLATES
from imp_gguf.checkpoint import Checkpoint
from imp_gguf.errors import BadInput


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/eot/unk/pad -> id
    add_bos: bool = False
    chat_template: str = ""
    n_real: int = 0  # tokens the tokenizer defines (the rest is padding to the embedding rows)

    def add_to(self, writer: Any) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
                   "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
        for key, tid in self.special.items():
            setters[key](tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        writer.add_chat_template(self.chat_template)


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<s>", "</s>", "<unk>", "<pad>")


def load_vocab(ckpt: Checkpoint, family: Any, n_rows: int, chat_template: str | None = None) -> Vocab:
    """The GGUF vocabulary; chat_template: Jinja text replacing the family's default template."""
    if family.tokenizer_kind == "gpt2":
        vocab = _bpe_vocab(ckpt, n_rows)
    elif family.tokenizer_kind == "llama":
        vocab = _spm_vocab(ckpt, n_rows)
    else:  # pragma: no cover - the converters are ours
        raise ValueError(family.tokenizer_kind)
    vocab.pre = family.tokenizer_pre
    vocab.add_bos = family.add_bos
    vocab.chat_template = chat_template or TEMPLATES[family.chat_template]
    _set_special_ids(ckpt, vocab, family)
    return vocab


def _pad(tokens: dict[int, tuple[str, int]], n_real: int, n_rows: int) -> tuple[list[str], list[int]]:
    if n_real > n_rows:
        raise BadInput(f"tokenizer has {n_real} tokens but the embedding has only {n_rows} rows")
    out_t, out_ty = [], []
    for i in range(n_rows):
        text, ty = tokens.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        out_t.append(text)
        out_ty.append(ty)
    return out_t, out_ty


def _token_id(v: Any, what: str) -> int:
    if isinstance(v, str) and v.isdigit():  # added_tokens_decoder is keyed by the id as a string
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BadInput(f"{what}: bad token id {json.dumps(v)[:40]}")
    return v


def _added_tokens(ckpt: Checkpoint, sources: tuple[str, ...],
                  loaded: dict[str, Any] | None = None) -> list[tuple[int, str, bool]]:
    """(id, text, special) for every added token the named files declare, in order, type-checked.

    `loaded` holds files the caller already parsed (tokenizer.json can be large).
    """
    out: list[tuple[int, str, bool]] = []

    def entry(tid: Any, text: Any, special: Any, what: str) -> None:
        if not isinstance(text, str):
            raise BadInput(f"{what}: malformed added token (no text)")
        out.append((_token_id(tid, what), text, bool(special)))

    for src in sources:
        data = (loaded[src] if loaded and src in loaded else ckpt.read_json(src)) or {}
        if src == "added_tokens.json":
            for text, tid in data.items():
                entry(tid, text, _looks_special(text), src)
        elif src == "tokenizer.json":
            items = data.get("added_tokens") or []
            if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
                raise BadInput("tokenizer.json: added_tokens must be a list of objects")
            for a in items:
                entry(a.get("id"), a.get("content"), a.get("special"), src)
        else:  # tokenizer_config.json
            decoder = data.get("added_tokens_decoder") or {}
            if not isinstance(decoder, dict) or not all(isinstance(d, dict) for d in decoder.values()):
                raise BadInput("tokenizer_config.json: added_tokens_decoder must map ids to objects")
            for sid, d in decoder.items():
                entry(sid, d.get("content"), d.get("special"), src)
    return out


def _bpe_vocab(ckpt: Checkpoint, n_rows: int) -> Vocab:
    tj = ckpt.read_json("tokenizer.json")
    if tj is not None:
        model = tj.get("model") or {}
        if not isinstance(model, dict) or model.get("type") != "BPE":
            found = model.get("type") if isinstance(model, dict) else type(model).__name__
            raise BadInput(f"tokenizer.json: expected a BPE model, found {found!r}")
        base = model.get("vocab") or {}
        raw_merges = model.get("merges") or []
        if not isinstance(base, dict) or not isinstance(raw_merges, list):
            raise BadInput("tokenizer.json: model.vocab must be an object and model.merges a list")
        merges = []
        for m in raw_merges:
            if isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
                m = " ".join(m)
            if not isinstance(m, str):
                raise BadInput(f"tokenizer.json: malformed merge {json.dumps(m)[:40]}")
            merges.append(m)
    else:
        vj = ckpt.read_json("vocab.json")
        mf = ckpt.file("merges.txt")
        if vj is None or mf is None:
            raise BadInput("no tokenizer: expected tokenizer.json, or vocab.json and merges.txt")
        base = vj
        try:
            text = mf.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"merges.txt: cannot read as UTF-8 text ({exc.__class__.__name__})") from exc
        merges = [ln for ln in text.splitlines() if ln and not ln.startswith("#version")]
    added = _added_tokens(ckpt, ("tokenizer.json" if tj is not None else "added_tokens.json", "tokenizer_config.json"),
                          {"tokenizer.json": tj})
    table: dict[int, tuple[str, int]] = {}
    for text, tid in base.items():
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise BadInput(f"tokenizer: bad id for token {text!r}")
        table[tid] = (text, TokenType.NORMAL)
    for tid, text, special in added:
        table[tid] = (text, TokenType.CONTROL if special else TokenType.USER_DEFINED)
    n_real = max(table) + 1 if table else 0
    tokens, types = _pad(table, n_real, n_rows)
    return Vocab(model="gpt2", pre="", tokens=tokens, types=types, merges=merges, n_real=n_real)


def _spm_vocab(ckpt: Checkpoint, n_rows: int) -> Vocab:
    path = ckpt.file("tokenizer.model")
    if path is None:
        raise BadInput("no tokenizer: expected tokenizer.model (SentencePiece)")
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise BadInput(f"tokenizer.model: not a SentencePiece model ({str(exc).splitlines()[0]})") from exc
    table: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for i in range(sp.vocab_size()):
        ty = TokenType.NORMAL
        if sp.IsUnknown(i):
            ty = TokenType.UNKNOWN
        elif sp.IsControl(i):
            ty = TokenType.CONTROL
        elif sp.IsUnused(i):
            ty = TokenType.UNUSED
        elif sp.IsByte(i):
            ty = TokenType.BYTE
        table[i] = (sp.IdToPiece(i), ty)
        scores[i] = sp.GetScore(i)
    extra = _added_tokens(ckpt, ("added_tokens.json", "tokenizer_config.json", "tokenizer.json"))
    for tid, text, special in extra:
        table[tid] = (text, TokenType.CONTROL if special else TokenType.USER_DEFINED)
        scores[tid] = -1000.0
    n_real = max(table) + 1
    tokens, types = _pad(table, n_real, n_rows)
    return Vocab(model="llama", pre="", tokens=tokens, types=types,
                 scores=[scores.get(i, -10000.0) for i in range(n_rows)], n_real=n_real)


def _set_special_ids(ckpt: Checkpoint, vocab: Vocab, family: Any) -> None:
    index = {t: i for i, t in enumerate(vocab.tokens[: vocab.n_real])}
    cfg = ckpt.read_json("tokenizer_config.json") or {}
    stm = ckpt.read_json("special_tokens_map.json") or {}
    for key in ("bos", "eos", "unk", "pad"):
        text = _token_text(cfg.get(f"{key}_token")) or _token_text(stm.get(f"{key}_token"))
        if text is not None and text in index:
            vocab.special[key] = index[text]
    # Imp ends every answer with its template's separator: make it the EOS/EOT llama.cpp stops on.
    if family.stop_token in index:
        vocab.special["eos"] = index[family.stop_token]
        vocab.special["eot"] = index[family.stop_token]
    elif "eos" not in vocab.special:
        raise BadInput(f"tokenizer has no {family.stop_token!r} token, which ends Imp's answers")


