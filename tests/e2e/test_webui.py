"""llama.cpp's web UI in the bundle: built with npm from the pinned source's tools/ui (runtime/webui.py),
shipped in ui/ and served by serve.sh's llama-server at / beside the API; bundles without it say so.

The UI is built once per pinned llama.cpp into the cache (the `web_ui` fixture; about 2 min on 2 idle cores)
and reused afterwards. Servers run on loopback only, every request and wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imp_gguf.errors import InternalError
from imp_gguf.runtime import webui
from tests.plugins.serving import Q_SHAPE, answer, fake_tools, free_port, image_message, scene, serve


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path_factory.mktemp("tiny-ui"), outtype="f16")
    return r.model, r.mmproj


def _cache_without_ui(tmp_path: Path) -> Path:
    """An imp-gguf cache that shares the real one's pinned source and tool builds, but holds no web UI."""
    from imp_gguf.runtime.source import cache_dir, ensure_source

    real = cache_dir()
    ensure_source(real)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("src", "build"):
        (real / name).mkdir(exist_ok=True)
        (cache / name).symlink_to(real / name)
    return cache


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.slow
def test_serve_sh_serves_the_web_ui_beside_the_api(web_ui: webui.WebUI, tiny_pair: tuple[Path, Path],
                                                    host_tools: dict[str, Path], tmp_path: Path) -> None:
    """The host build's llama-server (the same serve.sh as on the phone): GET / is llama.cpp's index.html,
    the scripts and stylesheets it names load, and the OpenAI chat endpoint answers about an image."""
    from imp_gguf.runtime.bundle import make_bundle
    from imp_gguf.tiny_imp.evaluate import is_correct

    res = make_bundle(tmp_path / "imp-ui", model=tiny_pair[0], mmproj=tiny_pair[1], target="host",
                      binaries=host_tools, ui=web_ui)
    folder = res.folder
    index = (folder / "ui" / "index.html").read_bytes()
    assert index == (web_ui.dist / "index.html").read_bytes()
    assert res.manifest.web_ui.key == web_ui.key and res.manifest.web_ui.to_dict()["folder"] == "ui"
    assert "ui/index.html" in res.manifest.sha256
    assert "--path ui" in (folder / "serve.sh").read_text()
    readme = (folder / "README.txt").read_text()
    assert "Web UI: llama.cpp's own, at http://127.0.0.1:8080/" in readme and "No web UI" not in readme

    assets = webui.index_assets(index.decode())
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    sc = scene()
    with serve(folder, tmp_path) as srv:
        status, headers, body = srv.get("/")
        assert status == 200 and body == index, (status, body[:200])
        assert headers.get("Content-Type", "").startswith("text/html")
        assert b"<title>" in body or b"_app/immutable/bundle." in body
        for asset in assets:  # what the browser loads next
            status, headers, body = srv.get("/" + asset)
            assert status == 200 and body == (web_ui.dist / asset).read_bytes(), (asset, status)
            want = "css" if asset.endswith(".css") else "javascript"
            assert want in headers.get("Content-Type", ""), (asset, headers.get("Content-Type"))
        assert srv.get("/build.json")[0] == 200
        # ...and the API beside it: an image and a question, answered by the tiny Imp.
        status, r = srv.chat([image_message(sc["uri"], Q_SHAPE)], timeout=120)
        assert status == 200, r
        assert is_correct(answer(r), sc["shape"]), answer(r)
        assert srv.request("/v1/models", timeout=30)[0] == 200

    # With a key the UI stays off (a browser cannot send the key for its files) and serve.sh says so;
    # the API wants the key as before.
    env = {"IMP_HOST": "127.0.0.2", "IMP_API_KEY": "s3cret"}
    with serve(folder, tmp_path, env=env, port=free_port()) as srv:
        assert srv.get("/")[0] == 404
        hi = [{"role": "user", "content": "hi"}]
        assert srv.chat(hi, max_tokens=2, timeout=60)[0] == 401
        assert srv.chat(hi, max_tokens=2, timeout=120, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert "no web UI with IMP_API_KEY" in srv.log.read_text()


def _assert_no_ui(folder: Path, reason: str) -> None:
    assert not (folder / "ui").exists()
    serve_sh = (folder / "serve.sh").read_text()
    assert "--path" not in serve_sh and f"# No web UI in this bundle ({reason})" in serve_sh
    readme = (folder / "README.txt").read_text()
    assert f"No web UI at / in this bundle ({reason})" in readme and "Web UI:" not in readme
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["web_ui"] == {"folder": None, "absent": reason}
    assert not any(name.startswith("ui/") for name in manifest["sha256"])


def test_no_ui_bundle_says_there_is_none(tmp_path: Path, tiny_pair: tuple[Path, Path]) -> None:
    """`bundle --no-ui`'s library form: no ui/, and serve.sh, README.txt and bundle.json tell the truth;
    serve.sh passes no --path to llama-server (a fake one printing its arguments)."""
    from imp_gguf.runtime.bundle import make_bundle

    res = make_bundle(tmp_path / "b", model=tiny_pair[0], mmproj=tiny_pair[1], ui="made with --no-ui",
                      binaries=fake_tools(tmp_path, 'echo "started $*"'))
    _assert_no_ui(res.folder, "made with --no-ui")
    env = {k: v for k, v in os.environ.items() if k not in ("IMP_API_KEY", "IMP_HOST")}
    ok = subprocess.run(["sh", str(res.folder / "serve.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "started" in ok.stdout and "--path" not in ok.stdout, ok


@pytest.mark.slow
def test_bundle_cli_no_ui_and_without_npm(tmp_path: Path, tiny_pair: tuple[Path, Path],
                                          host_tools: dict[str, Path]) -> None:
    """`bundle --no-ui` leaves it out silently; without npm (and no UI cached) the bundle is still made,
    without it, with one warning line naming npm."""
    m, mm = map(str, tiny_pair)
    cache = _cache_without_ui(tmp_path)
    proc = _cli("bundle", "-m", m, "--mmproj", mm, "--target", "host", "--no-ui", str(tmp_path / "a"),
                env={"IMP_GGUF_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and "npm" not in proc.stderr
    _assert_no_ui(tmp_path / "a", "made with --no-ui")

    empty = tmp_path / "no-npm-here"
    empty.mkdir()
    proc = _cli("bundle", "-m", m, "--mmproj", mm, "--target", "host", str(tmp_path / "b"),
                env={"IMP_GGUF_CACHE": str(cache), "PATH": str(empty)})
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no web UI" in warnings[0] and "npm not found on PATH" in warnings[0], proc.stderr
    _assert_no_ui(tmp_path / "b", "Node.js/npm, which builds it, was missing where the bundle was made")
    assert not (cache / "ui").exists()  # npm was looked for before anything was written


def test_unreachable_registry_fails_cleanly(tmp_path: Path) -> None:
    """npm ci against a closed loopback port with an empty npm cache: one-line UiBuildFailed naming npm's
    error, nothing cached under the UI's key, the log kept beside it; a bundle would go on without the UI."""
    if shutil.which("npm") is None:
        pytest.skip("npm not on PATH: llama.cpp's web UI is built with npm")
    cache = _cache_without_ui(tmp_path)
    env = {"npm_config_registry": f"http://127.0.0.1:{free_port()}/", "npm_config_cache": str(tmp_path / "npm-cache"),
           "npm_config_fetch_retries": "0"}
    with pytest.raises(webui.UiBuildFailed) as exc:
        webui.build_ui(cache=cache, env=env)
    msg = str(exc.value)
    assert msg.startswith("npm ci failed (exit ") and "\n" not in msg and "ECONNREFUSED" in msg, msg
    left = sorted(p.name for p in (cache / "ui").iterdir())
    key = webui.ui_key(webui.ensure_source(cache))
    assert left == [f".{key}.lock", f"{key}.failed.log"], left
    assert exc.value.log == cache / "ui" / f"{key}.failed.log" and "ECONNREFUSED" in exc.value.log.read_text()
    assert webui.find_ui(cache) is None
    ui, warning, reason = webui.ui_for_bundle(cache=cache, env=env)
    assert ui is None and warning.startswith("npm ci failed") and "npm build failed" in reason


def test_ui_key_follows_the_ui_source(tmp_path: Path) -> None:
    """One UI per tools/ui tree: the key changes with any file of it (not with node_modules or dist)."""
    from imp_gguf.runtime.source import Source, ensure_source

    real = ensure_source()
    root = tmp_path / "src"
    shutil.copytree(webui.ui_source(real), root / "vendor" / "llama.cpp" / "tools" / "ui")
    copy = Source(root=root, version=real.version, commit=real.commit)
    key = webui.ui_key(copy)
    assert key == webui.ui_key(real) and key.startswith(real.commit[:7] + "-")
    ui = webui.ui_source(copy)
    (ui / "node_modules" / "x").mkdir(parents=True)
    (ui / "node_modules" / "x" / "index.js").write_text("leftover")
    (ui / "dist").mkdir()
    (ui / "dist" / "index.html").write_text("leftover")
    assert webui.ui_key(copy) == key
    (ui / "src" / "app.html").write_text((ui / "src" / "app.html").read_text() + "\n")
    assert webui.ui_key(copy) != key


def test_check_dist_refuses_a_truncated_build(web_ui: webui.WebUI, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    shutil.copytree(web_ui.dist, dist)
    sizes = webui.check_dist(dist)
    assert sizes == {"files": web_ui.stamp["files"], "bytes": web_ui.stamp["bytes"]}
    js = next(a for a in webui.index_assets((dist / "index.html").read_text()) if a.endswith(".js"))
    (dist / js).unlink()
    with pytest.raises(InternalError, match="lacks"):
        webui.check_dist(dist)
