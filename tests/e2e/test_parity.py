"""Parity of the converted GGUFs, run by llama.cpp (llama-cpp-python + libmtmd), against the
PyTorch reference built from transformers' own modules, for every released layout."""

from __future__ import annotations

import numpy as np
import pytest

from tests.plugins.checkpoints import VARIANT_NAMES

PROMPT = "There is a red circle on the left. How many shapes are there in the picture today?"
TOKENIZER_STRINGS = [
    "Hello world",
    " leading space and  double  spaces\tand tabs\n\nnewlines",
    "Numbers 3.14159, 2024 and 1234567890",
    "你好世界 こんにちは 안녕하세요",
    "emoji 🙂🚀 and café naïve",
    "What is in the image? It's a red circle; isn't it?",
    "    indented code(x) # comment",
]
SPECIALS = {
    "phi2": ["Answer</s>USER: next", "<image>\nWhat colour?", "<|endoftext|>tail"],
    "qwen2": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<image>\nq"],
    "phi3": ["<|user|>\nhi<|end|>\n<|assistant|>\n", "<|system|>\nS<|end|>", "<image>\nq"],
}


def _lead(text: str, strip: bool) -> str:
    return text.lstrip(" ") if strip else text


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    from imp_gguf.reference.model import ImpModel, hf_tokenizer

    cache = {}

    def get(variant):
        if variant not in cache:
            ck = tiny_checkpoints[variant]
            cache[variant] = (ImpModel.from_checkpoint(ck), hf_tokenizer(ck))
        return cache[variant]

    return get


def _session(result, **kw):
    from imp_gguf.runtime.bindings import Session

    return Session(result["model"], result["mmproj"], f32_kv=True, n_threads=2, **kw)


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_text_logits_match_pytorch(variant, converted, reference):
    ref, tok = reference(variant)
    ids = tok.encode(PROMPT)[:16]
    assert len(ids) == 16
    want = ref.logits(ids)
    assert want.std() > 0.5, "fixture logits are flat: the test would be meaningless"
    with _session(converted(variant, "f32")) as s:
        got = s.text_logits(ids)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= 0.01 * want.std(), f"max |diff| {err:.4g} > 1% of std {want.std():.4g}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_image_embeddings_match_pytorch(variant, converted, reference, test_image):
    ref, _ = reference(variant)
    want = ref.image_features(test_image)
    with _session(converted(variant, "f32")) as s:
        got = s.image_embeddings(test_image)
    assert got.shape == want.shape == (ref.vh.n_patches, ref.hp.n_embd)
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.min() >= 0.999, f"min per-token cosine {cos.min():.6f}"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_image_prompt_logits_match_pytorch(variant, converted, reference, test_image):
    from imp_gguf.chat_templates import MEDIA_MARKER, TEMPLATES, imp_prompt

    ref, tok = reference(variant)
    prompt = imp_prompt(TEMPLATES[ref.family.chat_template], "What colour is the shape?")
    before, after = prompt.split(MEDIA_MARKER)
    ids_before = tok.encode(before)
    if ref.family.add_bos:  # llama.cpp adds BOS from tokenizer.ggml.add_bos_token
        ids_before = [tok.convert_tokens_to_ids("<s>")] + [i for i in ids_before if i != tok.convert_tokens_to_ids("<s>")]
    ids_after = tok.encode(after, add_special_tokens=False)
    want = ref.logits_with_image(ids_before, ref.image_features(test_image), ids_after)
    with _session(converted(variant, "f32")) as s:
        got = s.eval_prompt(prompt, [test_image])
        assert s.last_timings["prompt_tokens"] == len(ids_before) + ref.vh.n_patches + len(ids_after)
    err = np.abs(got - want).max()
    # The only expected difference: llama.cpp's projector GELU is the tanh form, Imp's is exact erf.
    assert err <= 0.02 * want.std(), f"max |diff| {err:.4g} vs std {want.std():.4g}"
    assert got.argmax() == want.argmax()


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_tokenization_matches_hf(variant, converted, reference):
    ref, tok = reference(variant)
    family = "phi2" if ref.family.arch == "phi2" else ref.family.arch
    from imp_gguf.runtime.bindings import Session

    with Session(converted(variant, "f32")["model"], n_threads=1) as s:
        for text in TOKENIZER_STRINGS + SPECIALS[family]:
            want = tok.encode(text, add_special_tokens=False)
            got = s.tokenize(text, add_special=False, parse_special=True)
            assert got == want, f"{text!r}: llama.cpp {got} != HF {want}"
            if "<" not in text:
                # SentencePiece: llama.cpp keeps the dummy-prefix space when decoding without BOS.
                strip = ref.family.tokenizer_kind == "llama"
                assert _lead(s.detokenize(got), strip) == _lead(tok.decode(want), strip)


@pytest.mark.parametrize("variant,outtype,bound", [
    ("Imp-v1.5-3B-196", "f16", 0.05), ("Imp-v1.5-3B-196", "q8_0", 0.25),
    ("Imp-v1.5-2B-Qwen1.5", "f16", 0.05), ("Imp-v1.5-2B-Qwen1.5", "q8_0", 0.25),
    ("Imp-v1.5-4B-Phi3", "f16", 0.05), ("Imp-v1.5-4B-Phi3", "q8_0", 0.25),
    ("Imp-v1.5-3B-Phi2", "bf16", 0.05), ("imp-v1-3b", "f16", 0.05),
])
def test_lower_precision_within_documented_bounds(variant, outtype, bound, converted, reference, test_image):
    """F16 and Q8_0 conversions: max logit error within 5% / 25% of the logits' std (tiny 256-wide rows make
    Q8_0 noisier than on real models), image cosine >= 0.995 / 0.99."""
    ref, tok = reference(variant)
    ids = tok.encode(PROMPT)[:16]
    want = ref.logits(ids)
    with _session(converted(variant, outtype)) as s:
        got = s.text_logits(ids)
        emb = s.image_embeddings(test_image)
    assert np.abs(got - want).max() <= bound * want.std()
    feats = ref.image_features(test_image)
    cos = (emb * feats).sum(-1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(feats, axis=-1))
    assert cos.min() >= (0.99 if outtype == "q8_0" else 0.995)


def test_pad_is_what_llama_cpp_is_fed(converted, reference, test_image):
    """The 4B pads a non-square image to a grey square before squashing; squashing alone gives other
    embeddings. llama.cpp (through imp-gguf's image preparation) must match the padded reference."""
    import torch

    ref, _ = reference("Imp-v1.5-4B-Phi3")
    assert ref.config["image_aspect_ratio"] == "pad"
    with _session(converted("Imp-v1.5-4B-Phi3", "f32")) as s:
        got = s.image_embeddings(test_image)
    padded = ref.image_features(test_image)
    squashed_cfg = dict(ref.config, image_aspect_ratio="square")
    from imp_gguf.reference.preprocess import imp_pixel_values

    px = torch.from_numpy(imp_pixel_values(test_image, squashed_cfg))[None]
    squashed = ref.projector(ref.vision(pixel_values=px, output_hidden_states=True).hidden_states[-1][0]).numpy()

    def cos(a, b):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    assert cos(got, padded).min() >= 0.999
    assert cos(got, squashed).min() < 0.99, "the test image does not tell padding from squashing"


def test_image_size_not_a_multiple_of_the_patch(converted, reference, test_image):
    """imp-v1-3b's tiny twin: 50 px with 14-px patches is a 3 x 3 grid that never reads the last 8 px,
    as 384 px never reads 6. The mmproj says 50, and the reference resizes to 50, not 42."""
    from imp_gguf.gguf_info import read_gguf_meta

    ref, _ = reference("imp-v1-3b")
    assert tuple(ref.pixel_values(test_image).shape) == (1, 3, 50, 50)  # Imp's preprocessing, not the converter's
    mm = read_gguf_meta(converted("imp-v1-3b", "f32")["mmproj"])
    assert (mm["clip.vision.image_size"], mm["clip.vision.patch_size"]) == (50, 14)
    assert ref.vision.config.image_size == 50 and ref.vh.n_patches == 9
