"""What every language-model family declares: a tensor table, hyper-parameters, tokenizer kind.

A family is data first: a list of TensorRule rows (source name -> GGUF name, expected shape) plus
a few small hooks. Adding Imp-on-a-new-LLM means a new file in this package, not edits elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from imp_gguf.errors import BadInput


@dataclass(frozen=True)
class LMHparams:
    arch: str
    n_vocab: int  # embedding rows (may exceed the tokenizer: padded)
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    rope_dims: int
    rope_theta: float
    norm_eps: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


ShapeFn = Callable[[LMHparams], tuple[int, ...]]


@dataclass(frozen=True)
class TensorRule:
    """One row of a family table: `{bid}` in both names stands for the block index."""

    src: str
    dst: str
    shape: ShapeFn
    optional: bool = False

    def expand(self, hp: LMHparams) -> list[tuple[str, str, tuple[int, ...]]]:
        if "{bid}" not in self.src:
            return [(self.src, self.dst, self.shape(hp))]
        return [(self.src.format(bid=b), self.dst.format(bid=b), self.shape(hp)) for b in range(hp.n_layer)]


def find(config: dict[str, Any], keys: tuple[str, ...], default: Any = None, *, what: str | None = None) -> Any:
    """The first present key among aliases (phi-msft and transformers name the same thing differently)."""
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    if default is not None:
        return default
    raise BadInput(f"config.json: missing {what or keys[0]} (looked for {', '.join(keys)})")


def rope_param(config: dict[str, Any], key: str, default: Any) -> Any:
    """A RoPE setting, top-level (older configs) or under rope_parameters/rope_scaling (transformers 5)."""
    if config.get(key) is not None:
        return config[key]
    for nest in ("rope_parameters", "rope_scaling"):
        sub = config.get(nest)
        if isinstance(sub, dict) and sub.get(key) is not None:
            return sub[key]
    return default


class LMFamily:
    """Base class; subclasses are registered by name in imp_gguf.families."""

    name: ClassVar[str]
    arch: ClassVar[str]  # GGUF architecture
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values that may carry this family
    hf_architecture: ClassVar[str]  # the transformers class of the LLM alone (for staging and reference)
    description: ClassVar[str]
    prefix: ClassVar[str]  # prefix of the vision tower and projector: "transformer." or "model."
    marker: ClassVar[str]  # a tensor name that identifies this layout
    tokenizer_kind: ClassVar[str]  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokenizer_pre: ClassVar[str]  # llama.cpp pre-tokenizer: the family decides, no hash lottery
    chat_template: ClassVar[str]  # key in imp_gguf.chat_templates
    add_bos: ClassVar[bool] = False
    stop_token: ClassVar[str]  # Imp's conversation separator that ends an answer
    rules: ClassVar[list[TensorRule]]
    ignored: ClassVar[tuple[str, ...]] = (r".*\.rotary_emb\.inv_freq$",)

    @classmethod
    def detect(cls, names: set[str]) -> bool:
        return cls.marker in names

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        raise NotImplementedError

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        """Write `{arch}.*` keys, the way llama.cpp's own converter does; families add their extras."""
        writer.add_block_count(hp.n_layer)
        writer.add_context_length(hp.n_ctx)
        writer.add_embedding_length(hp.n_embd)
        writer.add_feed_forward_length(hp.n_ff)
        writer.add_head_count(hp.n_head)
        writer.add_head_count_kv(hp.n_head_kv)

    @classmethod
    def reference_config(cls, hp: LMHparams) -> dict[str, Any]:
        """A plain transformers config for the LLM alone (used to stage upstream-converter checks)."""
        raise NotImplementedError

    @classmethod
    def is_vision_or_projector(cls, name: str) -> bool:
        return name.startswith(cls.prefix + "vision_tower.") or name.startswith(cls.prefix + "mm_projector.")

    @classmethod
    def plan(cls, hp: LMHparams, tensors: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
        """(source, gguf, shape) for every LLM tensor, validated against the checkpoint.

        Raises BadInput naming the first missing, unexpected or mis-shaped tensor.
        """
        out: list[tuple[str, str, tuple[int, ...]]] = []
        known: set[str] = set()
        for rule in cls.rules:
            for src, dst, shape in rule.expand(hp):
                known.add(src)
                ref = tensors.get(src)
                if ref is None:
                    if rule.optional:
                        continue
                    raise BadInput(f"missing tensor {src!r} ({cls.description})")
                if tuple(ref.shape) != tuple(shape):
                    raise BadInput(f"tensor {src!r} has shape {list(ref.shape)}, config says {list(shape)}")
                out.append((src, dst, shape))
        ignored = [re.compile(p) for p in cls.ignored]
        for name in tensors:
            if name in known or cls.is_vision_or_projector(name) or any(p.match(name) for p in ignored):
                continue
            raise BadInput(f"unexpected tensor {name!r} for {cls.description}")
        return out


def vec(h: LMHparams) -> tuple[int, ...]:
    return (h.n_embd,)


def square(h: LMHparams) -> tuple[int, ...]:
    return (h.n_embd, h.n_embd)


def embd(h: LMHparams) -> tuple[int, ...]:
    return (h.n_vocab, h.n_embd)


def ffn_up(h: LMHparams) -> tuple[int, ...]:
    return (h.n_ff, h.n_embd)


def ffn_down(h: LMHparams) -> tuple[int, ...]:
    return (h.n_embd, h.n_ff)
