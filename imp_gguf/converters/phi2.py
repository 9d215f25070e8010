"""Phi-2 (Imp-3B), transformers-Phi names under `model.` (layout B: imp-v1-3b and Imp-v1.5-3B-Phi2
on their main revisions), and what both Phi-2 layouts share (layout A, phi-msft: phi2_msft.py).

Both come with model_type "imp": only the tensor names tell them apart. Same maths: a parallel
attention+MLP block off one LayerNorm, partial NeoX RoPE, GELU (tanh), biased lm_head.
"""

from __future__ import annotations

from typing import Any, ClassVar

from imp_gguf.converters.base import (ConfigDefaults, LMFamily, LMHparams, T, TensorRule as R, embd, ffn_down,
                                      ffn_up, square, tensor_shape, vec)
from imp_gguf.errors import BadInput

# What each config class that writes these configs fills in for a key it left out.
PHI2_DEFAULTS = {
    # The hub repos' ImpConfig carries Phi-2's values as its defaults: the published imp-v1-3b config
    # omits every one of them (MILVLG/imp-v1-3b, "update phi-2 version").
    "imp": ConfigDefaults("Imp's ImpConfig (Phi-2 values)",
                          {"n_head": 32, "rotary_dim": 32, "norm_eps": 1e-5, "n_ctx": 2048, "rope_theta": 10000.0}),
    "phi": ConfigDefaults("transformers PhiConfig",
                          {"n_head": 32, "partial_rotary_factor": 0.5, "norm_eps": 1e-5, "n_ctx": 2048,
                           "rope_theta": 10000.0}),
    # microsoft/phi-2's remote phi-msft class, as vendored by MILVLG/imp (configuration_phi.py @1a800c0)
    "phi-msft": ConfigDefaults("phi-msft PhiConfig",
                               {"n_head": 16, "rotary_dim": 32, "norm_eps": 1e-5, "n_ctx": 2048, "rope_theta": 10000.0}),
}


def _up_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_ff,)


def vocab_b(h: LMHparams) -> tuple[int, ...]:
    return (h.n_vocab,)


def mlp(block: str) -> list[R]:
    """fc1/fc2 keep their names in both layouts; only the block prefix differs."""
    return [
        R(block + "mlp.fc1.weight", T.FFN_UP, ffn_up),
        R(block + "mlp.fc1.bias", T.FFN_UP, _up_b),
        R(block + "mlp.fc2.weight", T.FFN_DOWN, ffn_down),
        R(block + "mlp.fc2.bias", T.FFN_DOWN, vec),
    ]


class Phi2Common(LMFamily):
    arch = "phi2"
    model_types = ("imp", "phi", "phi-msft")
    hf_architecture = "PhiForCausalLM"
    tokenizer_kind = "gpt2"
    tokenizer_pre = "phi-2"
    chat_template = "imp_phi2"
    stop_token = "</s>"
    config_defaults = PHI2_DEFAULTS
    width_keys = ("n_embd", "hidden_size")  # phi-msft and transformers spellings
    head_keys = ("n_head", "num_attention_heads")

    fc1_name: ClassVar[str]

    @classmethod
    def hparams(cls, config: dict[str, Any], tensors: dict[str, Any]) -> LMHparams:
        rd = cls.reader(config)
        n_vocab, n_embd, n_head, head_dim = cls.read_widths(rd, tensors)
        n_ff = rd.size("as FFN width", tensor_shape(tensors, cls.fc1_name, 2, "first MLP")[0], ("n_inner", "intermediate_size"))
        if rd.present("rotary_dim"):  # phi-msft keys
            rope_dims = int(config["rotary_dim"])
        elif rd.present("partial_rotary_factor", rope=True) or "rotary_dim" not in rd.defaults.values:
            rope_dims = int(float(rd.value("partial_rotary_factor", ("partial_rotary_factor",), rope=True)) * head_dim)
        else:
            rope_dims = int(rd.value("rotary_dim"))
        if not 0 < rope_dims <= head_dim or rope_dims % 2:
            raise BadInput(f"config.json: {rope_dims} rotary dimensions do not fit heads of {head_dim}")
        return LMHparams(
            arch=cls.arch, n_vocab=n_vocab, n_embd=n_embd, n_ff=n_ff, n_layer=cls.n_layer(rd, tensors),
            n_head=n_head, n_head_kv=n_head,
            n_ctx=int(rd.value("n_ctx", ("n_positions", "max_position_embeddings"))),
            rope_dims=rope_dims, rope_theta=float(rd.value("rope_theta", ("rope_theta",), rope=True)),
            norm_eps=float(rd.value("norm_eps", ("layer_norm_epsilon", "layer_norm_eps"))),
            defaults=rd.used, defaults_from=rd.defaults.source,
        )

    @classmethod
    def add_arch_kv(cls, writer: Any, hp: LMHparams) -> None:
        super().add_arch_kv(writer, hp)
        writer.add_layer_norm_eps(hp.norm_eps)
        writer.add_rope_dimension_count(hp.rope_dims)

    @classmethod
    def reference_config(cls, hp: LMHparams) -> dict[str, Any]:
        return {
            "architectures": ["PhiForCausalLM"], "model_type": "phi",
            "vocab_size": hp.n_vocab, "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
            "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head, "num_key_value_heads": hp.n_head,
            "max_position_embeddings": hp.n_ctx, "partial_rotary_factor": hp.rope_dims / hp.head_dim,
            "rope_theta": hp.rope_theta, "layer_norm_eps": hp.norm_eps, "hidden_act": "gelu_new",
            "qk_layernorm": False, "tie_word_embeddings": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attention_dropout": 0.0,
        }


class Phi2(Phi2Common):
    name = "phi2"
    description = "Phi-2, transformers layout (imp-v1-3b, Imp-v1.5-3B-Phi2)"
    prefix = "model."
    marker = "model.final_layernorm.weight"
    block_marker = "model.layers.{bid}.input_layernorm.weight"
    fc1_name = "model.layers.0.mlp.fc1.weight"
    rules = [
        R("model.embed_tokens.weight", T.TOKEN_EMBD, embd),
        R("model.layers.{bid}.input_layernorm.weight", T.ATTN_NORM, vec),
        R("model.layers.{bid}.input_layernorm.bias", T.ATTN_NORM, vec),
        *[R(f"model.layers.{{bid}}.self_attn.{p}_proj.{k}", t, square if k == "weight" else vec)
          for p, t in (("q", T.ATTN_Q), ("k", T.ATTN_K), ("v", T.ATTN_V)) for k in ("weight", "bias")],
        R("model.layers.{bid}.self_attn.dense.weight", T.ATTN_OUT, square),
        R("model.layers.{bid}.self_attn.dense.bias", T.ATTN_OUT, vec),
        *mlp("model.layers.{bid}."),
        R("model.final_layernorm.weight", T.OUTPUT_NORM, vec),
        R("model.final_layernorm.bias", T.OUTPUT_NORM, vec),
        R("lm_head.weight", T.OUTPUT, embd),
        R("lm_head.bias", T.OUTPUT, vocab_b),
    ]
