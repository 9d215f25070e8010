"""What every language-model converter declares: a tensor table, hyper-parameters, tokenizer kind.

A converter is data first: a list of TensorRule rows (source name -> gguf-py tensor, expected shape)
plus a few small hooks, and every other per-family fact as class data (tokenizer, chat template, stop
token, checkpoint layout). Adding Imp-on-a-new-LLM is mostly a new file in this package; the few other
places it touches (the FAMILIES line, a chat template, the fixtures) are listed in docs/architecture.md,
"Adding a language-model family".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

# T is gguf-py's tensor kind (MODEL_TENSOR) in every module that uses it; GGML types are spelled GGMLQuantizationType.
from gguf import MODEL_TENSOR as T, TENSOR_NAMES

from imp_gguf.errors import BadInput


def gguf_name(tensor: T, kind: str = "weight") -> str:
    """The GGUF name of a tensor kind as gguf-py spells it, e.g. 'blk.{bid}.attn_qkv.weight'."""
    return f"{TENSOR_NAMES[tensor]}.{kind}"


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
    # hyper-parameter -> value taken from the model type's config-class defaults (config.json omitted it)
    defaults: dict[str, Any] = field(default_factory=dict)
    defaults_from: str = ""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


ShapeFn = Callable[[LMHparams], tuple[int, ...]]


@dataclass(frozen=True)
class TensorRule:
    """One row of a converter table: `{bid}` in the source name stands for the block index; the GGUF
    tensor is gguf-py's kind, with the source's `.weight`/`.bias` suffix."""

    src: str
    tensor: T
    shape: ShapeFn
    optional: bool = False

    @property
    def dst(self) -> str:
        return gguf_name(self.tensor, self.src.rsplit(".", 1)[1])

    def expand(self, hp: LMHparams) -> list[tuple[str, str, tuple[int, ...]]]:
        if "{bid}" not in self.src:
            return [(self.src, self.dst, self.shape(hp))]
        dst = self.dst
        return [(self.src.format(bid=b), dst.format(bid=b), self.shape(hp)) for b in range(hp.n_layer)]


def rope_param(config: dict[str, Any], key: str, default: Any) -> Any:
    """A RoPE setting, top-level (older configs) or under rope_parameters/rope_scaling (transformers 5)."""
    if config.get(key) is not None:
        return config[key]
    for nest in ("rope_parameters", "rope_scaling"):
        sub = config.get(nest)
        if isinstance(sub, dict) and sub.get(key) is not None:
            return sub[key]
    return default


@dataclass(frozen=True)
class ConfigDefaults:
    """The defaults of the config class that wrote a model type's config.json.

    transformers saves only the keys that differ from the class defaults (`to_diff_dict`), so a
    missing key means "the class default": these values, never one guessed from a checkpoint.
    """

    source: str  # the class, for reports: "transformers Qwen2Config", ...
    values: dict[str, Any]


class HparamReader:
    """Reads hyper-parameters: sizes from tensor shapes (checked against the config when it names
    them), the rest from the config, else from the model type's class defaults (recorded)."""

    def __init__(self, config: dict[str, Any], defaults: ConfigDefaults):
        self.config = config
        self.defaults = defaults
        self.used: dict[str, Any] = {}

    def size(self, what: str, from_weights: int, keys: tuple[str, ...]) -> int:
        for k in keys:
            if self.config.get(k) is not None and int(self.config[k]) != from_weights:
                raise BadInput(f"config.json: {k} is {self.config[k]} but the weights have {from_weights} {what}")
        return from_weights

    def value(self, param: str, keys: tuple[str, ...] = (), *, rope: bool = False) -> Any:
        """The first present key, top-level or (rope=True) under rope_parameters/rope_scaling;
        else the class default, remembered in `used`."""
        for k in keys:
            v = rope_param(self.config, k, None) if rope else self.config.get(k)
            if v is not None:
                return v
        if param not in self.defaults.values:
            raise BadInput(f"config.json: missing {param} (looked for {', '.join(keys)}) and "
                           f"{self.defaults.source} has no default for it")
        self.used[param] = self.defaults.values[param]
        return self.defaults.values[param]

    def present(self, *keys: str, rope: bool = False) -> bool:
        return any((rope_param(self.config, k, None) if rope else self.config.get(k)) is not None for k in keys)


def tensor_shape(tensors: dict[str, Any], name: str, ndim: int, what: str) -> tuple[int, ...]:
    ref = tensors.get(name)
    if ref is None:
        raise BadInput(f"missing tensor {name!r} ({what})")
    if len(ref.shape) != ndim:
        raise BadInput(f"tensor {name!r} has shape {list(ref.shape)}, expected {ndim} dimensions")
    return tuple(int(d) for d in ref.shape)


def count_blocks(tensors: dict[str, Any], pattern: str) -> int:
    """Blocks in the checkpoint: distinct indices matching `pattern` (with `{bid}`), e.g.
    'model.layers.{bid}.input_layernorm.weight'. Gaps are reported by `plan` as missing tensors."""
    rx = re.compile("^" + re.escape(pattern).replace(re.escape("{bid}"), r"(\d+)") + "$")
    ids = {int(m.group(1)) for n in tensors if (m := rx.match(n))}
    if not ids:
        raise BadInput(f"no language-model blocks found (looked for {pattern.format(bid=0)})")
    return max(ids) + 1


def divide(total: int, part: int, what: str) -> int:
    if part <= 0 or total % part:
        raise BadInput(f"{what}: {total} is not a multiple of {part}")
    return total // part


class LMFamily:
    """One language model under Imp, all of its facts as class data: a subclass per checkpoint layout,
    listed once in imp_gguf.converters.registry.FAMILIES."""

    name: ClassVar[str]
    arch: ClassVar[str]  # GGUF architecture
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values that may carry this family
    hf_architecture: ClassVar[str]  # the transformers class of the LLM alone (for staging and reference)
    description: ClassVar[str]
    prefix: ClassVar[str]  # prefix of the vision tower and projector: "transformer." or "model."
    marker: ClassVar[str]  # a tensor name that identifies this layout
    block_marker: ClassVar[str]  # a per-block tensor ({bid}) whose indices count the blocks
    config_defaults: ClassVar[dict[str, ConfigDefaults]]  # model_type -> its config class's defaults
    embedding_name: ClassVar[str] = "model.embed_tokens.weight"
    width_keys: ClassVar[tuple[str, ...]] = ("hidden_size",)  # config keys that name the width / head count
    head_keys: ClassVar[tuple[str, ...]] = ("num_attention_heads",)
    tokenizer_kind: ClassVar[str]  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokenizer_pre: ClassVar[str]  # llama.cpp pre-tokenizer: the family decides, no hash lottery
    chat_template: ClassVar[str]  # its default: a key of imp_gguf.chat_templates.TEMPLATES
    other_chat_templates: ClassVar[tuple[str, ...]] = ()  # the other TEMPLATES --chat-template may choose
    add_bos: ClassVar[bool] = False
    stop_token: ClassVar[str]  # Imp's conversation separator that ends an answer
    rules: ClassVar[list[TensorRule]]
    ignored: ClassVar[tuple[str, ...]] = (r".*\.rotary_emb\.inv_freq$",)
    # How the checkpoint's LLM names differ from those of `hf_architecture` (read by imp_gguf.reference.layouts,
    # which builds fixtures and loads the reference model): (transformers prefix, checkpoint prefix) pairs,
    # `{i}` the block index; empty when the checkpoint keeps transformers' names.
    hf_renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    # The checkpoint's fused q|k|v tensor ({bid}, {kind}: weight or bias) where transformers has q/k/v_proj.
    hf_fused_qkv: ClassVar[str | None] = None

    @classmethod
    def detect(cls, names: set[str]) -> bool:
        return cls.marker in names

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        raise NotImplementedError

    @classmethod
    def reader(cls, config: dict[str, Any]) -> HparamReader:
        return HparamReader(config, cls.config_defaults[config.get("model_type") or cls.model_types[0]])

    @classmethod
    def read_widths(cls, rd: HparamReader, tensors: dict[str, Any]) -> tuple[int, int, int, int]:
        """(embedding rows, width, heads, head size): rows and width from the token embedding, checked
        against the config; the head count from the config, else its class default."""
        n_vocab, n_embd = tensor_shape(tensors, cls.embedding_name, 2, "token embedding")
        rd.size("embedding rows", n_vocab, ("vocab_size",))
        rd.size("as embedding width", n_embd, cls.width_keys)
        n_head = int(rd.value("n_head", cls.head_keys))
        return n_vocab, n_embd, n_head, divide(n_embd, n_head, f"embedding width over {n_head} heads")

    @classmethod
    def n_layer(cls, rd: HparamReader, tensors: dict[str, Any]) -> int:
        return rd.size("blocks", count_blocks(tensors, cls.block_marker), ("n_layer", "num_hidden_layers"))

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        """Write `{arch}.*` keys, the way llama.cpp's own converter does; converters add their extras."""
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
