"""Fixtures giving tests the built llama.cpp tools, built or reused through imp_gguf.runtime.build.

The first session on a fresh machine builds them (about 8 min host, 11 min linux-arm64 on 2 cores);
later sessions reuse `${IMP_GGUF_CACHE:-~/.cache/imp-gguf}/build/...` instantly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imp_gguf.runtime.build import build


@pytest.fixture(scope="session")
def host_tools() -> dict[str, Path]:
    """name -> path of the host build's tools (llama-mtmd-cli, llama-bench, ...)."""
    return build("host").binaries


@pytest.fixture(scope="session")
def arm64_tools(request: pytest.FixtureRequest) -> dict[str, Path]:
    """name -> path of the static linux-arm64 tools (run them through QemuRunner)."""
    if request.config.getoption("--no-cross"):
        pytest.skip("--no-cross given")
    return build("linux-arm64").binaries


@pytest.fixture(scope="session")
def web_ui():
    """llama.cpp's web UI built from the pinned source with npm (imp_gguf.runtime.webui), or reused from the
    cache (about 2 min the first time on 2 cores); skipped only where npm is not installed."""
    import shutil

    from imp_gguf.runtime.webui import build_ui

    if shutil.which("npm") is None:
        pytest.skip("npm not on PATH: llama.cpp's web UI is built with npm (Node.js >= 20.19)")
    return build_ui()


def write_tiny_llama(path: Path, *, n_embd: int = 64, n_ff: int = 96, n_layer: int = 1, seed: int = 0) -> Path:
    """A tiny random llama-architecture GGUF (F32) that llama.cpp loads: enough for llama-bench smoke tests.

    The vocab is SentencePiece-style with all 256 byte tokens, which llama.cpp's SPM vocab needs
    (e.g. for the newline token). Real Imp fixtures come from the converter, not from here.
    """
    import gguf

    rng = np.random.default_rng(seed)
    n_head = 4
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["\u2581a", "\u2581b", "a", "b"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * 4
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("imp-gguf tiny llama (test)")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    t("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{name}.weight", n_embd, n_embd)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama-f32.gguf")


PROBE_SOURCE = Path(__file__).with_name("mtmd_probe.cpp")
PROBE_ARCHIVES = ("libmtmd.a", "libvendor-hash.a", "libllama.a", "libggml.a", "libggml-cpu.a", "libggml-base.a")


def compile_probe(tools: dict[str, Path], dest: Path, *, arm64: bool = False) -> Path:
    """Link tests/plugins/mtmd_probe.cpp against the static libraries of the build that made `tools`
    (headers from the same, patched, source tree), so it runs exactly that build's clip.cpp."""
    import json
    import subprocess

    bdir = tools["llama-mtmd-cli"].parents[2]  # <build dir>/cmake/bin/llama-mtmd-cli
    stamp = json.loads((bdir / "stamp.json").read_text())
    src = Path(stamp["source"]) / "vendor" / "llama.cpp"
    archives = []
    for name in PROBE_ARCHIVES:
        found = sorted((bdir / "cmake").rglob(name))
        assert len(found) == 1, f"{name}: {found}"
        archives.append(str(found[0]))
    includes = [f"-I{src / d}" for d in ("include", "ggml/include", "tools/mtmd", "vendor")]
    cxx = "aarch64-linux-gnu-g++" if arm64 else "c++"
    argv = [cxx, "-std=c++17", "-O2", *includes, str(PROBE_SOURCE), "-o", str(dest), *archives,
            "-fopenmp", "-pthread", "-ldl", *(["-static"] if arm64 else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dest


@pytest.fixture(scope="session")
def host_probe(host_tools: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_probe(host_tools, tmp_path_factory.mktemp("probe") / "mtmd_probe")


@pytest.fixture(scope="session")
def arm64_probe(arm64_tools: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_probe(arm64_tools, tmp_path_factory.mktemp("probe-arm64") / "mtmd_probe", arm64=True)
