"""A hub on loopback: the part of the Hugging Face Hub's HTTP API that huggingface_hub uses to download.

`GET /api/models/{repo}[/revision/{rev}]` (model info: sha, siblings), `GET /api/models/{repo}/tree/{rev}`
(the listing, with each LFS file's sha256 and size), `HEAD|GET /{repo}/resolve/{rev}/{path}` with ETag,
X-Linked-Etag/X-Linked-Size for LFS files, X-Repo-Commit, Range (206) and the hub's error codes
(X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound; 401 for a private repo without its token).

Faults, per test: `cut_once` closes the connection half-way through the first full GET of a file (the
client must resume with Range); `corrupt` serves bytes differing from the sha256 the listing advertises.
Every request is logged (method, path, Range) so tests can say what was and was not fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class Repo:
    files: dict[str, Path]  # path in the repo -> file on disk
    commit: str
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit (main added)
    token: str | None = None  # private: only this bearer token may read it
    # Files never downloaded whole by the test (a full-size published shard: hashing 6 GB costs a minute):
    # advertised with a placeholder sha256 that a download would fail to match.
    unhashed: frozenset[str] = frozenset()
    _sha: dict[str, str] = field(default_factory=dict)

    def sha256(self, path: str) -> str:
        if path in self.unhashed:
            return "0" * 64
        if path not in self._sha:
            h = hashlib.sha256()
            with open(self.files[path], "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            self._sha[path] = h.hexdigest()
        return self._sha[path]

    def git_oid(self, path: str) -> str:
        data = self.files[path].read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: str | None


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.cut_once: set[str] = set()  # "repo/path": cut the next full GET half-way
        self.corrupt: set[str] = set()  # "repo/path": serve flipped bytes
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def add(self, repo_id: str, folder: Path, *, extra: dict[str, bytes] | None = None, commit: str | None = None,
            refs: dict[str, str] | None = None, token: str | None = None, unhashed: tuple[str, ...] = ()) -> Repo:
        """Serve every file under `folder` (plus `extra` files written next to it) as repo `repo_id`."""
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        if extra:
            side = folder.parent / f"{folder.name}.extra"
            for name, data in extra.items():
                (side / name).parent.mkdir(parents=True, exist_ok=True)
                (side / name).write_bytes(data)
                files[name] = side / name
        commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
        repo = Repo(files, commit, {"main": commit, **(refs or {})}, token, frozenset(unhashed))
        self.repos[repo_id] = repo
        return repo

    def requests(self, repo_id: str, path: str, method: str = "GET") -> list[Request]:
        """Logged requests for one file of a repo (any revision)."""
        pat = re.compile(rf"^/{re.escape(repo_id)}/resolve/[^/]+/{re.escape(path)}$")
        with self._lock:
            return [r for r in self.log if r.method == method and pat.match(r.path)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet: the log list is the record
            pass

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

        # ------------------------------------------------------------ plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  head: bool = False) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, head: bool) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers, head)

        def _json(self, obj: object, head: bool, extra: dict[str, str] | None = None) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(extra or {})}, head)

        def _repo(self, repo_id: str, head: bool) -> Repo | None:
            repo = hub.repos.get(repo_id)
            auth = self.headers.get("Authorization")
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", head)
                return None
            if repo.token and auth != f"Bearer {repo.token}":
                msg = "Invalid credentials in Authorization header" if auth else "Repository not found"
                self._error(401, None if auth else "RepoNotFound", msg, head)
                return None
            return repo

        def _commit(self, repo: Repo, rev: str, head: bool) -> str | None:
            rev = unquote(rev)
            commit = repo.refs.get(rev) or (rev if rev == repo.commit else None)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return commit

        # ------------------------------------------------------------ routes
        def _serve(self, head: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            with hub._lock:
                hub.log.append(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
            m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", path)
            if m:
                return self._info(m[1], m[2] or "main", head)
            m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
            if m:
                return self._tree(m[1], m[2], head)
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                return self._resolve(m[1], m[2], m[3], head)
            self._error(404, None, "not a route of this hub", head)

        def _info(self, repo_id: str, rev: str, head: bool) -> None:
            repo = self._repo(repo_id, head)
            if repo is None or (commit := self._commit(repo, rev, head)) is None:
                return
            self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": bool(repo.token),
                        "siblings": [{"rfilename": p} for p in repo.files]}, head)

        def _tree(self, repo_id: str, rev: str, head: bool) -> None:
            repo = self._repo(repo_id, head)
            if repo is None or self._commit(repo, rev, head) is None:
                return
            entries = []
            for p, f in repo.files.items():
                size = f.stat().st_size
                e: dict = {"type": "file", "size": size, "path": p}
                if p.endswith(LFS_SUFFIXES):  # git stores the LFS pointer, whose blob id is "oid"
                    sha = repo.sha256(p)
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"
                    e["lfs"] = {"oid": sha, "size": size, "pointerSize": len(pointer)}
                    e["oid"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()
                else:
                    e["oid"] = repo.git_oid(p)
                entries.append(e)
            self._json(entries, head)

        def _resolve(self, repo_id: str, rev: str, relpath: str, head: bool) -> None:
            repo = self._repo(repo_id, head)
            if repo is None or (commit := self._commit(repo, rev, head)) is None:
                return
            f = repo.files.get(relpath)
            if f is None:
                self._error(404, "EntryNotFound", f"{relpath} does not exist on {rev}", head)
                return
            size = f.stat().st_size
            lfs = relpath.endswith(LFS_SUFFIXES)
            etag = repo.sha256(relpath) if lfs else repo.git_oid(relpath)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if lfs:
                headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)}
            first, last = 0, size - 1
            rng = self.headers.get("Range")
            status = 200
            if rng and not head:
                m = re.match(r"bytes=(\d+)-(\d*)$", rng)
                if not m or int(m[1]) >= size:
                    self._error(416, None, "range not satisfiable", head)
                    return
                first, last, status = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1), 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(last - first + 1))
            self.end_headers()
            if head:
                return
            key = f"{repo_id}/{relpath}"
            cut = status == 200 and key in hub.cut_once
            if cut:
                hub.cut_once.discard(key)
            for chunk in _read(f, first, last, cut):
                if key in hub.corrupt:
                    chunk = bytes(b ^ 0x5A for b in chunk)
                self.wfile.write(chunk)
            if cut:  # a dropped connection: the client saw fewer bytes than Content-Length
                self.wfile.flush()
                self.close_connection = True

    return Handler


def _read(path: Path, first: int, last: int, cut: bool) -> Iterator[bytes]:
    end = first + (last - first + 1) // 2 if cut else last + 1
    with open(path, "rb") as f:
        f.seek(first)
        pos = first
        while pos < end:
            chunk = f.read(min(1 << 20, end - pos))
            if not chunk:
                return
            pos += len(chunk)
            yield chunk


@pytest.fixture
def hub() -> Iterator[Hub]:
    """A fresh loopback hub per test, stopped afterwards."""
    h = Hub()
    try:
        yield h
    finally:
        h.stop()
