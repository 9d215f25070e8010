"""Hub ids end to end against a hub on loopback (tests/plugins/hub_server.py): the real huggingface_hub
client downloads from it into a Hugging Face cache under tmp_path, `imp-gguf convert` runs as a user runs
it (a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE at import)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader, Keys

from imp_gguf.errors import BadInput

REPO = "MILVLG/Imp-v1.5-3B-196"
README = b"---\nlicense: apache-2.0\npipeline_tag: image-text-to-text\n---\n# Imp-v1.5-3B-196 (tiny stand-in)\n"
# Files a real Imp repo has that conversion must never fetch: remote code and pickle weights.
NEVER = {"modeling_imp.py": b"raise SystemExit('remote code ran')\n", "configuration_imp.py": b"import os\n",
         "pytorch_model.bin": b"\x80\x04not a pickle to load" * 64}
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@pytest.fixture(scope="session")
def tiny_196(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Imp-v1.5-3B-196 in its published config form (phi-msft, no LM sizes in config.json)."""
    from imp_gguf.synthetic_checkpoints.tiny import make_checkpoint

    return make_checkpoint("Imp-v1.5-3B-196", tmp_path_factory.mktemp("hubsrc") / "Imp-v1.5-3B-196")


def serve(hub, tiny_196: Path, repo: str = REPO, **kw):  # noqa: ANN001, ANN201
    return hub.add(repo, tiny_196, extra={"README.md": README, **NEVER}, **kw)


def cli(hub, tmp_path: Path, *args: str, offline: bool = False, token: str | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "10",
            "HF_HUB_DOWNLOAD_TIMEOUT": "10", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


def blobs(tmp_path: Path, repo: str = REPO) -> list[Path]:
    folder = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "blobs"
    return sorted(p for p in folder.glob("*") if not p.name.endswith(".incomplete")) if folder.is_dir() else []


def meta(path: Path) -> dict:
    r = GGUFReader(path)
    out = {}
    for name, field in r.fields.items():
        if field.types and field.types[0].name == "STRING":
            out[name] = field.contents()
    return out


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_convert_from_hub_id(hub, tiny_196: Path, tmp_path: Path) -> None:
    repo = serve(hub, tiny_196)
    proc = cli(hub, tmp_path, "convert", REPO, "-o", "out")
    assert proc.returncode == 0, proc.stderr
    lm, mm = (tmp_path / "out" / "Imp-v1.5-3B-196-F16.gguf"), (tmp_path / "out" / "mmproj-Imp-v1.5-3B-196-F16.gguf")
    assert proc.stdout.split("\n")[0].startswith(f"wrote {Path('out') / lm.name}")
    assert "Fetching" in proc.stderr  # huggingface_hub's download progress, on stderr
    # Only what conversion reads: never remote code, never pickle weights.
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.log if "/resolve/" in r.path}
    assert fetched == {"config.json", "model.safetensors.index.json", "README.md", "tokenizer.json",
                       "tokenizer_config.json", "generation_config.json", *SHARDS}
    for m in (meta(lm), meta(mm)):
        assert m["imp_gguf.source_repo"] == REPO
        assert m["imp_gguf.source_commit"] == repo.commit
        assert m[Keys.General.SOURCE_URL] == f"https://huggingface.co/{REPO}/tree/{repo.commit}"
        assert m[Keys.General.BASE_MODEL_REPO_URL.format(id=0)] == f"https://huggingface.co/{REPO}"
        assert m[Keys.General.LICENSE] == "apache-2.0"
        # general.* as a hub page reads them: the version is v1.5, 196 (the image size) is the variant
        assert (m[Keys.General.NAME], m[Keys.General.BASENAME]) == ("Imp-v1.5-3B-196", "Imp")
        assert (m[Keys.General.VERSION], m[Keys.General.FINETUNE], m[Keys.General.SIZE_LABEL]) == ("v1.5", "196", "3B")
        assert m[Keys.General.ORGANIZATION] == "MILVLG"

    # The same tensors as converting the folder itself.
    local = cli(hub, tmp_path, "convert", str(tiny_196), "-o", "local", "--json")
    assert local.returncode == 0, local.stderr
    a, b = GGUFReader(lm), GGUFReader(tmp_path / "local" / lm.name)
    assert [(t.name, t.data.tobytes()) for t in a.tensors] == [(t.name, t.data.tobytes()) for t in b.tensors]

    # Warm cache: the next run fetches no file body again; the snapshot folder, given as a folder (what
    # `hf download` leaves), converts too and still records its source.
    n_gets = len([r for r in hub.log if r.method == "GET" and "/resolve/" in r.path])
    again = cli(hub, tmp_path, "convert", REPO, "-o", "out", "--force", "--quiet")
    assert again.returncode == 0, again.stderr
    assert len([r for r in hub.log if r.method == "GET" and "/resolve/" in r.path]) == n_gets
    snapshot = tmp_path / "hf" / "hub" / "models--MILVLG--Imp-v1.5-3B-196" / "snapshots" / repo.commit
    assert (snapshot / "config.json").is_symlink()
    folder = cli(hub, tmp_path, "convert", str(snapshot), "-o", "snap", "--json")
    assert folder.returncode == 0, folder.stderr
    assert json.loads(folder.stdout)["source"] == {"repo": REPO, "commit": repo.commit}
    assert meta(tmp_path / "snap" / lm.name)["imp_gguf.source_commit"] == repo.commit


def test_dry_run_fetches_no_shard_body(hub, tmp_path: Path) -> None:
    """The full-size published form (7 sparse shards of 6.4 GB): a dry run reads each header with two ranged
    requests and nothing past it."""
    from imp_gguf.synthetic_checkpoints.published import make_published

    src = make_published("Imp-v1.5-3B-196", tmp_path / "src" / "Imp-v1.5-3B-196")
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    hub.add(REPO, src, unhashed=tuple(shards))
    proc = cli(hub, tmp_path, "convert", REPO, "--quant", "q4_k", "--dry-run", "--json", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["dry_run"] and result["image_size"] == 196 and result["image_tokens"] == 196
    assert result["lm_tensors"] == 32 * 10 + 5 and result["source"]["repo"] == REPO
    for name in shards:
        n = int.from_bytes((src / name).read_bytes()[:8], "little")
        gets = hub.requests(REPO, name)
        assert {r.range for r in gets} == {"bytes=0-7", f"bytes=8-{8 + n - 1}"}, gets
        assert not hub.requests(REPO, name, "HEAD")
    assert all(b.stat().st_size < 10_000_000 for b in blobs(tmp_path))  # no shard in the cache
    assert not (tmp_path / "out").exists()


def test_download_cut_mid_shard_is_resumed(hub, tmp_path: Path) -> None:
    """The connection drops half-way through a shard; huggingface_hub resumes it with a Range request (it
    keeps what it received in whole 10 MB chunks, so the shard is larger than the tiny Imp's)."""
    from imp_gguf.synthetic_checkpoints.tiny import dims_with, make_checkpoint

    src = make_checkpoint("Imp-v1.5-3B-196", tmp_path / "src" / "Imp-v1.5-3B-196", n_shards=1,
                          dims=dims_with(n_embd=512, n_ff_phi2=4096, n_layer=3))
    shard = "model-00001-of-00001.safetensors"
    size = (src / shard).stat().st_size
    assert size > 2 * 10 * 2**20
    hub.add(REPO, src)
    hub.cut_once.add(f"{REPO}/{shard}")
    proc = cli(hub, tmp_path, "convert", REPO, "-o", "out", "--json")
    assert proc.returncode == 0, proc.stderr
    gets = [r.range for r in hub.requests(REPO, shard)]
    assert gets[0] is None and len(gets) == 2, gets
    first = re.fullmatch(r"bytes=(\d+)-", gets[1] or "")
    assert first and 10 * 2**20 <= int(first[1]) <= size // 2, gets
    assert (tmp_path / "out" / "Imp-v1.5-3B-196-F16.gguf").is_file()


def test_offline_with_warm_cache(hub, tiny_196: Path, tmp_path: Path) -> None:
    serve(hub, tiny_196)
    cold = cli(hub, tmp_path, "convert", REPO, "-o", "out", offline=True)
    assert cold.returncode == 2
    assert "not (completely) in the Hugging Face cache and HF_HUB_OFFLINE is set" in error_line(cold)
    assert cli(hub, tmp_path, "convert", REPO, "-o", "warm", "--quiet").returncode == 0
    n = len(hub.log)
    hub.stop()  # nothing to reach any more
    for args in (("-o", "out"), ("-o", "dry", "--dry-run")):
        proc = cli(hub, tmp_path, "convert", REPO, *args, offline=True)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "Imp-v1.5-3B-196-F16.gguf").is_file()
    assert len(hub.log) == n


def test_missing_repo_revision_and_401(hub, tiny_196: Path, tmp_path: Path) -> None:
    serve(hub, tiny_196, refs={"v1.5": hashlib_commit()})
    serve(hub, tiny_196, repo="MILVLG/private-imp", token="hf_right")
    cases = [
        (("MILVLG/Imp-v1.5-3B-169",), "hub repo MILVLG/Imp-v1.5-3B-169 not found"),
        ((f"{REPO}@no-such-branch",), f"hub repo {REPO} has no revision 'no-such-branch'"),
        ((REPO, "--revision", "nope"), f"hub repo {REPO} has no revision 'nope'"),
        ((f"{REPO}@a", "--revision", "b"), "names revision 'a' but --revision says 'b'"),
        (("MILVLG/private-imp",), "a private repo needs HF_TOKEN"),
    ]
    for args, text in cases:
        proc = cli(hub, tmp_path, "convert", *args, "--dry-run", "-o", "out")
        assert proc.returncode == 2, (args, proc.stderr)
        assert text in error_line(proc), (args, proc.stderr)
    bad = cli(hub, tmp_path, "convert", "MILVLG/private-imp", "--dry-run", "-o", "out", token="hf_wrong")
    assert bad.returncode == 2 and "HF_TOKEN" in error_line(bad)
    n = len(hub.log)
    good = cli(hub, tmp_path, "convert", "MILVLG/private-imp", "--dry-run", "--json", token="hf_right")
    assert good.returncode == 0, good.stderr
    assert {r.auth for r in hub.log[n:] if "private-imp" in r.path} == {"Bearer hf_right"}
    tag = cli(hub, tmp_path, "convert", REPO, "--revision", "v1.5", "--dry-run", "--json")
    assert tag.returncode == 0, tag.stderr
    assert json.loads(tag.stdout)["source"]["commit"] == hashlib_commit()
    assert not (tmp_path / "out").exists()


def hashlib_commit() -> str:
    """The commit the loopback hub serves for REPO (a tag may point at it)."""
    import hashlib

    return hashlib.sha1(REPO.encode()).hexdigest()


def test_shard_not_matching_its_sha256(hub, tiny_196: Path, tmp_path: Path) -> None:
    serve(hub, tiny_196)
    hub.corrupt.add(f"{REPO}/{SHARDS[1]}")
    proc = cli(hub, tmp_path, "convert", REPO, "-o", "out")
    assert proc.returncode == 2
    line = error_line(proc)
    assert SHARDS[1] in line and "do not match the sha256 the hub advertises" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the damaged blob is gone from the cache: a second run downloads it again, and now succeeds
    hub.corrupt.clear()
    assert len([b for b in blobs(tmp_path) if b.stat().st_size == (tiny_196 / SHARDS[1]).stat().st_size]) == 0
    again = cli(hub, tmp_path, "convert", REPO, "-o", "out", "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(hub.requests(REPO, SHARDS[1])) == 2


# ---------------------------------------------------------------- the cache's links, without a hub

COMMIT = "a" * 40
HASH = "b" * 64


def fake_snapshot(tmp_path: Path, repo: str = "models--ORG--Name") -> Path:
    snap = tmp_path / "hub" / repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (tmp_path / "hub" / repo / "blobs").mkdir()
    return snap


@pytest.mark.parametrize("target", [
    "../../../../outside.json",  # leaves the cache
    "../../../models--Other--Repo/blobs/" + HASH,  # another repo's blobs
    "../../blobs/not-a-hash",  # in blobs/, but not a blob's name
    "../../blobs/sub/" + HASH,  # below blobs/
    "../" + COMMIT[:-1] + "c/config.json",  # another snapshot, not a blob
])
def test_snapshot_link_leaving_its_blobs_is_refused(tmp_path: Path, target: str) -> None:
    from imp_gguf.checkpoint import open_checkpoint

    snap = fake_snapshot(tmp_path)
    dest = (snap / target).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text('{"model_type": "imp"}')
    (tmp_path / "hub" / "models--Other--Repo").mkdir(exist_ok=True)
    (snap / "config.json").symlink_to(target)
    with pytest.raises(BadInput, match="refusing 'config.json': it points outside the checkpoint folder"):
        open_checkpoint(snap)


def test_snapshot_layout_is_the_only_exception(tmp_path: Path) -> None:
    from imp_gguf.checkpoint import safe_child
    from imp_gguf.hub import cache_source

    snap = fake_snapshot(tmp_path)
    (snap.parent.parent / "blobs" / HASH).write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/" + HASH)
    assert safe_child(snap, "config.json") == (snap.parent.parent / "blobs" / HASH).resolve()
    assert cache_source(snap).repo == "ORG/Name" and cache_source(snap).commit == COMMIT
    with pytest.raises(BadInput, match="points outside"):  # a name reaching blobs/ itself, not through a link
        safe_child(snap, "../../blobs/" + HASH)
    plain = tmp_path / "plain"  # the same link from a folder that is not a cache snapshot: refused
    plain.mkdir()
    (plain / "config.json").symlink_to(snap.parent.parent / "blobs" / HASH)
    with pytest.raises(BadInput, match="points outside"):
        safe_child(plain, "config.json")


def test_pickle_weights_only_with_allow_pickle(hub, tiny_196: Path, tmp_path: Path) -> None:
    """A repo whose weights are a pytorch_model.bin: not fetched, and said so, unless --allow-pickle."""
    import torch

    from imp_gguf.checkpoint import open_checkpoint

    src = tmp_path / "src" / "Imp-v1.5-3B-196"
    shutil.copytree(tiny_196, src, ignore=shutil.ignore_patterns("*.safetensors*"))
    state = {name: torch.from_numpy(ref.load()).to(torch.float16)
             for name, ref in open_checkpoint(tiny_196).tensors.items()}
    torch.save(state, src / "pytorch_model.bin")
    hub.add(REPO, src)
    refused = cli(hub, tmp_path, "convert", REPO, "-o", "out")
    assert refused.returncode == 2
    assert "has pickle weights only (pytorch_model.bin)" in error_line(refused) and "--allow-pickle" in error_line(refused)
    assert not hub.requests(REPO, "pytorch_model.bin") and not hub.requests(REPO, "pytorch_model.bin", "HEAD")
    ok = cli(hub, tmp_path, "convert", REPO, "-o", "out", "--allow-pickle", "--json")
    assert ok.returncode == 0, ok.stderr
    assert len(hub.requests(REPO, "pytorch_model.bin")) == 1
    assert (tmp_path / "out" / "Imp-v1.5-3B-196-F16.gguf").is_file()
