"""Hostile checkpoints: every bad folder gives one line on stderr, exit 2, no output, nothing executed.

Each test copies a tiny fixture checkpoint, breaks one thing, and runs `imp-gguf convert` in-process
through imp_gguf.cli.main.main (the same path as the console script).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from imp_gguf.cli.main import main
from tests.hostile.conftest import VARIANT, alarm_after, hostile_checkpoint

SHARD2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="session")
def hostile_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {v: hostile_checkpoint(tmp_path_factory, v) for v in (VARIANT, "Imp-v1.5-4B-Phi3")}


@pytest.fixture
def ckpt(hostile_sources: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the fixture checkpoint, free to break."""
    return Path(shutil.copytree(hostile_sources[VARIANT], tmp_path / VARIANT))


def convert(capsys: pytest.CaptureFixture[str], src: Path, out: Path, *extra: str) -> tuple[int, str]:
    out.mkdir(parents=True, exist_ok=True)
    rc = main(["convert", str(src), "--outdir", str(out), "--quiet", *extra])
    return rc, capsys.readouterr().err


def assert_refused(capsys: pytest.CaptureFixture[str], src: Path, tmp_path: Path, *needles: str,
                   extra: tuple[str, ...] = ()) -> str:
    """Exit 2, exactly one stderr line naming the problem, and nothing written (no temp either)."""
    out = tmp_path / "out"
    rc, err = convert(capsys, src, out, *extra)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert list(out.iterdir()) == []
    return lines[0]


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def rewrite_safetensors(path: Path, fn: Callable[[dict, bytes], tuple[dict, bytes]]) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = fn(json.loads(raw[8:8 + n]), raw[8 + n:])
    hb = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


def tensors_of(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


@pytest.fixture
def alarm():
    with alarm_after(20):
        yield


# ---------------------------------------------------------------- config


def test_control_fixture_converts(capsys, ckpt, tmp_path):
    rc, err = convert(capsys, ckpt, tmp_path / "out")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{VARIANT}-F16.gguf", f"mmproj-{VARIANT}-F16.gguf"]


def test_missing_config(capsys, ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    assert_refused(capsys, ckpt, tmp_path, "no config.json")


def test_missing_folder(capsys, tmp_path):
    assert_refused(capsys, tmp_path / "nowhere", tmp_path, "no such checkpoint folder")


@pytest.mark.parametrize("text, needle", [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # recursion bomb
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_unreadable_config(capsys, ckpt, tmp_path, text, needle):
    p = ckpt / "config.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_refused(capsys, ckpt, tmp_path, "config.json", needle)


def test_huge_config_is_refused_without_reading_it(capsys, ckpt, tmp_path):
    with open(ckpt / "config.json", "r+b") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: costs no disk
    assert_refused(capsys, ckpt, tmp_path, "config.json", "too large")


def test_missing_model_type(capsys, ckpt, tmp_path):
    edit_json(ckpt / "config.json", lambda c: {k: v for k, v in c.items() if k != "model_type"})
    assert_refused(capsys, ckpt, tmp_path, "no model_type")


def test_unknown_model_type(capsys, ckpt, tmp_path):
    edit_json(ckpt / "config.json", lambda c: c | {"model_type": "llava_llama"})
    assert_refused(capsys, ckpt, tmp_path, "unknown model_type 'llava_llama'")


def test_model_type_disagrees_with_tensors(capsys, ckpt, tmp_path):
    edit_json(ckpt / "config.json", lambda c: c | {"model_type": "imp_qwen2"})
    assert_refused(capsys, ckpt, tmp_path, "model_type 'imp_qwen2' does not match")


@pytest.mark.parametrize("key, value, needle", [
    ("n_embd", "256", "n_embd must be an integer"),
    ("n_embd", 256.5, "n_embd must be an integer"),
    ("n_head", 0, "n_head must be a positive integer"),
    ("n_layer", -1, "n_layer must be a positive integer"),
    ("n_layer", True, "n_layer must be an integer"),
    ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon must be a finite number"),
    ("model_type", ["imp"], "model_type must be a string"),
    ("vision_tower_config", [1], "vision_tower_config must be a JSON object"),
    ("mm_vision_select_layer", "-2", "mm_vision_select_layer must be an integer"),
])
def test_config_value_of_wrong_type(capsys, ckpt, tmp_path, key, value, needle):
    edit_json(ckpt / "config.json", lambda c: c | {key: value})
    assert_refused(capsys, ckpt, tmp_path, needle)


def test_nested_vision_config_value_of_wrong_type(capsys, ckpt, tmp_path):
    def edit(c):
        c["vision_tower_config"]["layer_norm_eps"] = None
        c["vision_tower_config"]["num_attention_heads"] = "four"
        return c

    edit_json(ckpt / "config.json", edit)
    assert_refused(capsys, ckpt, tmp_path, "vision_tower_config", "num_attention_heads must be an integer")


def test_config_layer_count_disagrees_with_tensors(capsys, ckpt, tmp_path):
    edit_json(ckpt / "config.json", lambda c: c | {"n_layer": 3})  # the fixture stores 2 blocks
    assert_refused(capsys, ckpt, tmp_path, "n_layer is 3 but the weights have 2 blocks")


@pytest.mark.parametrize("key, value, needle", [
    ("n_embd", 512, "n_embd is 512 but the weights have 256 as embedding width"),
    ("n_inner", 2048, "n_inner is 2048 but the weights have 1024 as FFN width"),
    ("vocab_size", 51200, "vocab_size is 51200 but the weights have"),
    ("n_head", 3, "256 is not a multiple of 3"),
    ("rotary_dim", 128, "128 rotary dimensions do not fit heads of 64"),
])
def test_config_contradicts_weights(capsys, ckpt, tmp_path, key, value, needle):
    """Sizes come from the weights; a config that names another value is a contradiction, not a default."""
    edit_json(ckpt / "config.json", lambda c: c | {key: value})
    assert_refused(capsys, ckpt, tmp_path, needle)


def test_vision_image_size_contradicts_position_embeddings(capsys, ckpt, tmp_path):
    def edit(c):
        c["vision_tower_config"]["image_size"] = 84  # 6 x 6 patches; the weights hold 4 x 4
        return c

    edit_json(ckpt / "config.json", edit)
    assert_refused(capsys, ckpt, tmp_path, "image_size 84 makes a 6x6 grid", "16 position embeddings (4x4)")


# ---------------------------------------------------------------- tensors


def test_missing_tensor(capsys, ckpt, tmp_path):
    gone = "transformer.h.1.mlp.fc2.bias"
    for shard in ckpt.glob("*.safetensors"):
        rewrite_safetensors(shard, lambda h, d: ({k: v for k, v in h.items() if k != gone}, d))
    edit_json(ckpt / INDEX, lambda x: x | {"weight_map": {k: v for k, v in x["weight_map"].items() if k != gone}})
    assert_refused(capsys, ckpt, tmp_path, "missing tensor", gone)


def test_tensor_in_index_but_not_in_its_shard(capsys, ckpt, tmp_path):
    gone = "transformer.h.1.mlp.fc2.bias"
    for shard in ckpt.glob("*.safetensors"):
        rewrite_safetensors(shard, lambda h, d: ({k: v for k, v in h.items() if k != gone}, d))
    assert_refused(capsys, ckpt, tmp_path, gone, "not stored there")


def test_unexpected_tensor(capsys, ckpt, tmp_path):
    extra = "transformer.h.0.mixer.rotary_emb.cos_cached"
    rewrite_safetensors(ckpt / SHARD2, lambda h, d: (h | {extra: {"dtype": "F32", "shape": [2],
                                                                   "data_offsets": [len(d), len(d) + 8]}}, d + bytes(8)))
    edit_json(ckpt / INDEX, lambda x: x | {"weight_map": x["weight_map"] | {extra: SHARD2}})
    assert_refused(capsys, ckpt, tmp_path, "unexpected tensor", extra)


def test_shape_disagrees_with_config(capsys, ckpt, tmp_path):
    def edit(h, d):
        for k in tensors_of(h):
            if k.endswith("h.0.mixer.out_proj.weight"):
                a, b = h[k]["shape"]
                h[k]["shape"] = [a // 2, b * 2]  # same bytes, wrong shape
        return h, d

    for shard in ckpt.glob("*.safetensors"):
        rewrite_safetensors(shard, edit)
    assert_refused(capsys, ckpt, tmp_path, "transformer.h.0.mixer.out_proj.weight", "has shape [128, 512]")


@pytest.mark.parametrize("value, name", [(b"\xc0\x7f", "NaN"), (b"\x80\x7f", "Inf"), (b"\x80\xff", "-Inf")])
def test_nan_or_inf_weight_is_named(capsys, ckpt, tmp_path, value, name):
    hit = {}

    def poison(h, d):
        k = max(tensors_of(h))
        assert h[k]["dtype"] == "BF16"
        b, _ = h[k]["data_offsets"]
        hit["name"] = k
        return h, d[:b] + value + d[b + 2:]

    rewrite_safetensors(ckpt / SHARD2, poison)
    assert_refused(capsys, ckpt, tmp_path, f"tensor {hit['name']!r}", "NaN/Inf")


# ---------------------------------------------------------------- safetensors files


def test_truncated_safetensors(capsys, ckpt, tmp_path):
    p = ckpt / SHARD2
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 1000])
    assert_refused(capsys, ckpt, tmp_path, SHARD2, "truncated")


@pytest.mark.parametrize("keep", [0, 5, 8, 20])
def test_safetensors_cut_inside_its_header(capsys, ckpt, tmp_path, keep):
    p = ckpt / SHARD2
    p.write_bytes(p.read_bytes()[:keep])
    assert_refused(capsys, ckpt, tmp_path, SHARD2)


def test_header_length_past_end(capsys, ckpt, tmp_path):
    p = ckpt / SHARD2
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    assert_refused(capsys, ckpt, tmp_path, SHARD2, "runs past the file")


def test_offsets_past_end_of_file(capsys, ckpt, tmp_path):
    def edit(h, d):
        k = tensors_of(h)[0]
        b, e = h[k]["data_offsets"]
        h[k]["data_offsets"] = [len(d) - 2, len(d) - 2 + (e - b)]
        return h, d

    rewrite_safetensors(ckpt / SHARD2, edit)
    assert_refused(capsys, ckpt, tmp_path, SHARD2, "truncated file")


def test_overlapping_tensors(capsys, ckpt, tmp_path):
    def edit(h, d):
        by_shape: dict[tuple, str] = {}
        for k in sorted(tensors_of(h)):
            shape = tuple(h[k]["shape"])
            if shape in by_shape:
                h[k]["data_offsets"] = h[by_shape[shape]]["data_offsets"]
                return h, d
            by_shape[shape] = k
        raise AssertionError("no two tensors of one shape")

    rewrite_safetensors(ckpt / SHARD2, edit)
    assert_refused(capsys, ckpt, tmp_path, SHARD2, "overlap")


@pytest.mark.parametrize("entry, needle", [
    ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "malformed header entry"),
    ({"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}, "malformed header entry"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "malformed header entry"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}, "malformed header entry"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "negative dimension"),
    ({"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "do not match shape"),
    ({"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 2**82]}, "truncated file"),
    ("not an object", "malformed header entry"),
])
def test_malformed_header_entries(capsys, ckpt, tmp_path, entry, needle):
    rewrite_safetensors(ckpt / SHARD2, lambda h, d: (h | {"zz.bad": entry}, d))
    assert_refused(capsys, ckpt, tmp_path, SHARD2, needle)


def test_duplicate_tensor_name_in_header(capsys, ckpt, tmp_path):
    p = ckpt / SHARD2
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].decode()
    first = json.loads(header)
    name = tensors_of(first)[0]
    dup = header.rstrip()[:-1] + f', {json.dumps(name)}: {json.dumps(first[name])}}}'
    hb = dup.encode()
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    assert_refused(capsys, ckpt, tmp_path, SHARD2, "twice")


def test_weights_changing_after_planning(ckpt, tmp_path):
    """A shard cut short between planning and writing: BadInput at write time, and no output at all."""
    from imp_gguf.convert import plan_conversion, run_conversion
    from imp_gguf.errors import BadInput

    out = tmp_path / "out"
    plan = plan_conversion(ckpt, out)
    p = ckpt / SHARD2
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(BadInput, match=SHARD2):
        run_conversion(plan)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- index and links


def test_index_names_absent_shard(capsys, ckpt, tmp_path):
    (ckpt / SHARD2).unlink()
    assert_refused(capsys, ckpt, tmp_path, f"shard {SHARD2}", "missing")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors"])
def test_index_pointing_outside_is_refused_unread(capsys, ckpt, tmp_path, alarm, shard):
    # The outside target is a FIFO: opening it for reading would block, so the alarm proves it is never read.
    os.mkfifo(tmp_path / "outside.safetensors")
    edit_json(ckpt / INDEX, lambda x: x | {"weight_map": {k: shard for k in x["weight_map"]}})
    assert_refused(capsys, ckpt, tmp_path, "outside the checkpoint folder")


def test_index_with_absolute_path_is_refused(capsys, ckpt, tmp_path, alarm):
    os.mkfifo(tmp_path / "abs.safetensors")
    edit_json(ckpt / INDEX, lambda x: x | {"weight_map": {k: str(tmp_path / "abs.safetensors") for k in x["weight_map"]}})
    assert_refused(capsys, ckpt, tmp_path, "must be relative")


@pytest.mark.parametrize("name", [SHARD2, "config.json", INDEX, "tokenizer.json"])
def test_symlink_pointing_outside_is_refused_unread(capsys, ckpt, tmp_path, alarm, name):
    fifo = tmp_path / f"outside-{name}"
    os.mkfifo(fifo)
    (ckpt / name).unlink()
    (ckpt / name).symlink_to(fifo)
    assert_refused(capsys, ckpt, tmp_path, name, "outside the checkpoint folder")


def test_symlink_inside_the_folder_is_fine(capsys, ckpt, tmp_path):
    (ckpt / "blobs").mkdir()
    (ckpt / SHARD2).rename(ckpt / "blobs" / "abc123")
    (ckpt / SHARD2).symlink_to(Path("blobs") / "abc123")  # the hub cache layout
    rc, err = convert(capsys, ckpt, tmp_path / "out")
    assert rc == 0, err


@pytest.mark.parametrize("weight_map, needle", [
    ([1, 2], "no weight_map"),
    ({}, "no weight_map"),
    ({"transformer.embd.wte.weight": 5}, "shard names must be strings"),
])
def test_malformed_index(capsys, ckpt, tmp_path, weight_map, needle):
    edit_json(ckpt / INDEX, lambda x: x | {"weight_map": weight_map})
    assert_refused(capsys, ckpt, tmp_path, INDEX, needle)


# ---------------------------------------------------------------- tokenizer


def test_missing_tokenizer(capsys, ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    assert_refused(capsys, ckpt, tmp_path, "no tokenizer")


def test_missing_sentencepiece_model(capsys, hostile_sources, tmp_path):
    src = Path(shutil.copytree(hostile_sources["Imp-v1.5-4B-Phi3"], tmp_path / "phi3"))
    (src / "tokenizer.model").unlink()
    assert_refused(capsys, src, tmp_path, "tokenizer.model")


def test_corrupt_sentencepiece_model(capsys, hostile_sources, tmp_path):
    src = Path(shutil.copytree(hostile_sources["Imp-v1.5-4B-Phi3"], tmp_path / "phi3"))
    (src / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    assert_refused(capsys, src, tmp_path, "tokenizer.model", "not a SentencePiece model")


def test_tokenizer_larger_than_embedding(capsys, ckpt, tmp_path):
    def grow(t):
        t["model"]["vocab"]["zzzz-extra"] = 5000
        return t

    edit_json(ckpt / "tokenizer.json", grow)
    assert_refused(capsys, ckpt, tmp_path, "tokenizer has 5001 tokens", "1024 rows")


def test_tokenizer_without_the_stop_token(capsys, ckpt, tmp_path):
    def drop(t):
        t["added_tokens"] = [a for a in t["added_tokens"] if a["content"] != "</s>"]
        return t

    edit_json(ckpt / "tokenizer.json", drop)
    edit_json(ckpt / "tokenizer_config.json", lambda c: c | {"added_tokens_decoder": {
        k: v for k, v in c["added_tokens_decoder"].items() if v["content"] != "</s>"}, "eos_token": None})
    assert_refused(capsys, ckpt, tmp_path, "'</s>'")


@pytest.mark.parametrize("file, edit, needle", [
    ("tokenizer.json", lambda t: t | {"model": [1]}, "expected a BPE model"),
    ("tokenizer.json", lambda t: t | {"model": t["model"] | {"type": "Unigram"}}, "expected a BPE model"),
    ("tokenizer.json", lambda t: t | {"model": t["model"] | {"vocab": [1]}}, "model.vocab must be an object"),
    ("tokenizer.json", lambda t: t | {"model": t["model"] | {"merges": [5]}}, "malformed merge"),
    ("tokenizer.json", lambda t: t | {"added_tokens": [{"content": "x"}]}, "bad token id"),
    ("tokenizer.json", lambda t: t | {"added_tokens": [{"id": -3, "content": "x"}]}, "bad token id"),
    ("tokenizer.json", lambda t: t | {"added_tokens": ["x"]}, "added_tokens must be a list of objects"),
    ("tokenizer_config.json", lambda c: c | {"added_tokens_decoder": {"abc": {"content": "x"}}}, "bad token id"),
    ("tokenizer_config.json", lambda c: c | {"added_tokens_decoder": {"5": "x"}}, "added_tokens_decoder must map"),
    ("tokenizer_config.json", lambda c: c | {"added_tokens_decoder": {"5": {"content": 7}}}, "malformed added token"),
])
def test_malformed_tokenizer_files(capsys, ckpt, tmp_path, file, edit, needle):
    edit_json(ckpt / file, edit)
    assert_refused(capsys, ckpt, tmp_path, f"{file}: ", needle)


def test_tokenizer_json_not_utf8(capsys, ckpt, tmp_path):
    (ckpt / "tokenizer.json").write_bytes(b"\xff\xfe\x00")
    assert_refused(capsys, ckpt, tmp_path, "tokenizer.json", "not valid JSON")


# ---------------------------------------------------------------- pickle weights and remote code


def _pickle_folder(ckpt: Path) -> dict:
    """Turn the fixture into a pytorch_model.bin-only folder; returns its state dict."""
    from safetensors.torch import load_file

    state: dict = {}
    for shard in ckpt.glob("*.safetensors"):
        state.update(load_file(shard))
        shard.unlink()
    (ckpt / INDEX).unlink()
    return state


class _Payload:
    """Unpickling this runs `touch marker`, unless the loader refuses globals."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_weights_refused_by_default(capsys, ckpt, tmp_path):
    import torch

    torch.save(_pickle_folder(ckpt), ckpt / "pytorch_model.bin")
    assert_refused(capsys, ckpt, tmp_path, "pytorch_model.bin", "--allow-pickle")


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_weights_allowed_load_a_plain_state_dict(capsys, ckpt, tmp_path, legacy):
    import torch

    torch.save(_pickle_folder(ckpt), ckpt / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    rc, err = convert(capsys, ckpt, tmp_path / "out", "--allow-pickle")
    assert rc == 0, err
    assert err == ""
    assert len(list((tmp_path / "out").glob("*.gguf"))) == 2


@pytest.mark.parametrize("form", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_malicious_pickle_is_not_executed_even_when_allowed(capsys, ckpt, tmp_path, form):
    import torch

    marker = tmp_path / "PWNED"
    state = _pickle_folder(ckpt)
    state["evil"] = _Payload(marker)
    target = ckpt / "pytorch_model.bin"
    if form == "raw-pickle":
        target.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, target, _use_new_zipfile_serialization=form == "torch-zip")
    # The payload is real: a plain unpickle would run it.
    assert not marker.exists()
    line = assert_refused(capsys, ckpt, tmp_path, "pytorch_model.bin", extra=("--allow-pickle",))
    assert "refused" in line and "weights_only=False" not in line
    assert not marker.exists()


def test_sharded_pickle_weights_are_refused_clearly(capsys, ckpt, tmp_path):
    _pickle_folder(ckpt)
    (ckpt / "pytorch_model-00001-of-00001.bin").write_bytes(b"never read")
    (ckpt / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "pytorch_model-00001-of-00001.bin"}}')
    assert_refused(capsys, ckpt, tmp_path, "sharded pickle weights are not supported", extra=("--allow-pickle",))


def test_pickle_with_non_tensor_values_refused(capsys, ckpt, tmp_path):
    import torch

    state = _pickle_folder(ckpt)
    state["step"] = 5
    torch.save(state, ckpt / "pytorch_model.bin")
    assert_refused(capsys, ckpt, tmp_path, "state dict of named tensors", extra=("--allow-pickle",))


def test_remote_code_is_never_imported(capsys, ckpt, tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for module in ("modeling_imp.py", "configuration_imp.py", "tokenization_imp.py", "__init__.py"):
        (ckpt / module).write_text(code)
    edit_json(ckpt / "config.json", lambda c: c | {"auto_map": {
        "AutoConfig": "configuration_imp.ImpConfig", "AutoModelForCausalLM": "modeling_imp.ImpForCausalLM"}})
    edit_json(ckpt / "tokenizer_config.json", lambda c: c | {"auto_map": {
        "AutoTokenizer": ["tokenization_imp.ImpTokenizer", None]}})
    monkeypatch.chdir(ckpt)  # even with the folder as the working directory (first on sys.path for -c / -m)
    monkeypatch.syspath_prepend(str(ckpt))
    rc, err = convert(capsys, ckpt, tmp_path / "out")
    assert rc == 0, err
    assert not marker.exists()


@pytest.mark.parametrize("argv, needle", [
    (["convert", "--bogus"], "No such option: --bogus"),
    (["convert"], "Missing argument"),
    (["convert", ".", "--outtype", "q3"], "--outtype must be one of"),
    (["no-such-command"], "No such command"),
    (["inspect"], "Missing argument"),
])
def test_bad_flags_are_bad_input(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_verbose_shows_the_traceback(capsys, ckpt, tmp_path):
    (ckpt / "config.json").write_text("{")
    rc = main(["--verbose", "convert", str(ckpt), "--outdir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_null_vision_values_mean_absent(capsys, ckpt, tmp_path):
    """A null in vision_tower_config is a missing key (the SigLIP default applies), not a crash."""
    def edit(c):
        c["vision_tower_config"]["layer_norm_eps"] = None
        return c

    edit_json(ckpt / "config.json", edit)
    rc, err = convert(capsys, ckpt, tmp_path / "out")
    assert rc == 0, err
