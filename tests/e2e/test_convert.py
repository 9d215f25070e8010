"""The converter's outputs, without running llama.cpp: names, metadata, dtype policy, streaming memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.checkpoints import VARIANT_NAMES

EXPECT = {  # variant -> (arch, image size, image tokens, LM tensor count for 2 layers)
    "imp-v1-3b": ("phi2", 50, 9, 3 + 2 * 14 + 2),  # transformers-Phi layout, 50 px: a 3 x 3 grid
    "Imp-v1.5-3B-196": ("phi2", 56, 16, 25),
    "Imp-v1.5-3B-Phi2": ("phi2", 112, 64, 3 + 2 * 14 + 2),
    "Imp-v1.5-2B-Qwen1.5": ("qwen2", 112, 64, 3 + 2 * 12),
    "Imp-v1.5-4B-Phi3": ("phi3", 112, 64, 3 + 2 * 6),
}


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_outputs_names_and_metadata(variant, converted):
    from imp_gguf.gguf_info import read_gguf_meta, tensor_table

    r = converted(variant, "f16")
    arch, size, tokens, n_lm = EXPECT[variant]
    assert Path(r["model"]).name == f"{variant if variant != 'imp-v1-3b' else 'imp-v1-3B'}-F16.gguf"
    assert Path(r["mmproj"]).name == "mmproj-" + Path(r["model"]).name
    lm, mm = read_gguf_meta(r["model"]), read_gguf_meta(r["mmproj"])
    assert lm["general.architecture"] == arch and lm["general.type"] == "model"
    assert mm["general.architecture"] == "clip" and mm["general.type"] == "mmproj"
    for meta in (lm, mm):
        assert meta["general.file_type"] == 1
        assert meta["general.quantized_by"].startswith("imp-gguf")
        assert len(meta["imp_gguf.source_sha256"]) == 64
        # the fixture configs name their hub repo, as real ones do
        assert meta["general.base_model.0.repo_url"] == f"https://huggingface.co/MILVLG/{variant}"
        assert meta["general.organization"] == "MILVLG"
    assert lm["tokenizer.ggml.pre"] == {"phi2": "phi-2", "qwen2": "qwen2", "phi3": "default"}[arch]
    assert "<__media__>" in lm["tokenizer.chat_template"]
    assert mm["clip.projector_type"] == "mlp" and mm["clip.use_gelu"] is True
    assert mm["clip.vision.image_size"] == size
    assert mm["clip.vision.block_count"] == 2 and mm["clip.vision.feature_layer"] == [2]
    assert mm["clip.vision.image_mean"] == mm["clip.vision.image_std"] == [0.5, 0.5, 0.5]
    assert mm["clip.vision.projection_dim"] == lm[f"{arch}.embedding_length"]
    lm_t, mm_t = tensor_table(r["model"]), tensor_table(r["mmproj"])
    assert len(lm_t) == n_lm
    assert not [t for t in lm_t if t["name"].startswith(("v.", "mm."))], "vision tensors leaked into the LM"
    names = {t["name"] for t in mm_t}
    assert {"v.patch_embd.weight", "v.position_embd.weight", "mm.0.weight", "mm.2.weight"} <= names
    assert not [n for n in names if "post_ln" in n or n.startswith("v.blk.2.")]
    pos = next(t for t in mm_t if t["name"] == "v.position_embd.weight")
    assert pos["shape"][1] == tokens and pos["type"] == "F32"


def test_dtype_policy_q8_0(converted):
    from imp_gguf.gguf_info import tensor_table

    r = converted("Imp-v1.5-2B-Qwen1.5", "q8_0")
    types = {t["name"]: t["type"] for t in tensor_table(r["model"]) + tensor_table(r["mmproj"])}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.bias"] == "F32"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # 352 columns: divisible by 32
    assert types["v.blk.0.ffn_down.weight"] == "F16"  # 344 columns: not divisible by 32 (like SigLIP's 4304)
    assert types["v.blk.0.ffn_up.weight"] == "Q8_0"
    assert types["v.patch_embd.weight"] == "F16" and types["v.position_embd.weight"] == "F32"


def test_dry_run_writes_nothing_and_reports_plan(tiny_checkpoints, tmp_path, capsys):
    from imp_gguf.cli.main import main

    rc = main(["convert", str(tiny_checkpoints["Imp-v1.5-3B-196"]), "--outdir", str(tmp_path), "--dry-run", "--json"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["variant"] == "phi2_msft" and plan["image_tokens"] == 16 and plan["dry_run"] is True
    assert plan["model"].endswith("Imp-v1.5-3B-196-F16.gguf")
    assert list(tmp_path.iterdir()) == []


def test_json_result_and_no_overwrite_without_force(tiny_checkpoints, tmp_path, capsys):
    from imp_gguf.cli.main import main

    src = str(tiny_checkpoints["Imp-v1.5-4B-Phi3"])
    assert main(["convert", src, "--outdir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = Path(out["model"])
    assert model.is_file() and Path(out["mmproj"]).is_file()
    before = model.read_bytes()
    assert main(["convert", src, "--outdir", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert main(["convert", src, "--outdir", str(tmp_path), "--force", "--quiet"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_conversion_streams_tensors(tmp_path):
    """Peak memory of a conversion stays far below the model size (tensors are streamed one by one)."""
    from imp_gguf.synthetic_checkpoints.tiny import dims_with, make_checkpoint

    dims = dims_with(n_embd=1024, n_layer=12, n_ff_phi2=4096, n_head=8)
    ckpt = make_checkpoint("Imp-v1.5-3B-196", tmp_path / "Imp-v1.5-3B-196", dims=dims, n_shards=3)
    weights = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    code = (
        "import resource, sys\n"
        "from imp_gguf.convert import convert\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"convert({str(ckpt)!r}, {str(tmp_path / 'out')!r}, outtype='f32')\n"
        "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    base_kb, peak_kb = int(out[0]), int(out[1])
    f32_bytes = weights * 2  # bf16 on disk, written as F32
    largest = 4096 * 1024 * 4 * 2  # the largest tensor as F32, plus its copy
    grown = (peak_kb - base_kb) * 1024
    assert grown < 0.25 * f32_bytes, f"conversion grew RSS by {grown / 1e6:.0f} MB for a {f32_bytes / 1e6:.0f} MB model"
    assert grown < 8 * largest + 64e6


def test_inspect_and_dry_run_name_the_defaults(converted, tiny_checkpoints, tmp_path, capsys):
    """What config.json left out is said, with the class it comes from, before and after converting."""
    from imp_gguf.cli.main import main

    r = converted("Imp-v1.5-3B-196", "f16")
    assert main(["inspect", r["model"]]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "imp_gguf.config_defaults" in ln)
    assert "Imp's ImpConfig (Phi-2 values): rotary_dim=32, n_ctx=2048" in line
    assert main(["convert", str(tiny_checkpoints["Imp-v1.5-3B-196"]), "-o", str(tmp_path), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["defaults"]["rotary_dim"] == {"value": 32, "from": "Imp's ImpConfig (Phi-2 values)"}
    assert "n_head" not in plan["defaults"]  # the tiny config keeps it: ImpConfig's 32 heads cannot fit


def test_phi3_chat_template_choice(tiny_checkpoints, tmp_path, capsys):
    """Both forms Imp's code has had for the 4B; the system-turn one is the default."""
    from imp_gguf.chat_templates import IMP_PHI3, IMP_PHI3_NOSYS, imp_prompt
    from imp_gguf.cli.main import main
    from imp_gguf.gguf_info import read_gguf_meta

    ck = str(tiny_checkpoints["Imp-v1.5-4B-Phi3"])
    assert main(["convert", ck, "-o", str(tmp_path / "a"), "-q"]) == 0
    assert main(["convert", ck, "-o", str(tmp_path / "b"), "-q", "--chat-template", "imp_phi3_nosys"]) == 0
    a = read_gguf_meta(next((tmp_path / "a").glob("Imp*.gguf")))["tokenizer.chat_template"]
    b = read_gguf_meta(next((tmp_path / "b").glob("Imp*.gguf")))["tokenizer.chat_template"]
    assert (a, b) == (IMP_PHI3, IMP_PHI3_NOSYS)
    assert imp_prompt(b, "q") == "<|user|>\n<__media__>\nq<|end|>\n<|assistant|>\n"
    assert imp_prompt(a, "q").startswith("<|system|>\nA chat between")
    capsys.readouterr()
    assert main(["convert", ck, "-o", str(tmp_path / "c"), "--chat-template", "imp_phi2"]) == 2
    assert "not a template of this model" in capsys.readouterr().err
    custom = tmp_path / "t.jinja"
    custom.write_text("{{ messages[0]['content'] }}")
    assert main(["convert", ck, "-o", str(tmp_path / "d"), "-q", "--chat-template", str(custom)]) == 0
    assert read_gguf_meta(next((tmp_path / "d").glob("Imp*.gguf")))["tokenizer.chat_template"] == custom.read_text()
