"""Hub repo ids (ORG/NAME[@REVISION]) through huggingface_hub: download into the standard Hugging Face
cache only the files a conversion reads, check each weight file against the sha256 the hub advertised,
read safetensors headers remotely for a dry run, and recognise the cache's own layout.

huggingface_hub reads HF_ENDPOINT, HF_TOKEN, HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE itself; its
progress bars go to stderr. In the cache, `snapshots/<commit>/<file>` is a symlink to
`../../blobs/<etag>`, and the etag of a weight file (an LFS file) is the sha256 of its bytes: the name
of the blob is the hash the hub advertised. huggingface_hub checks only the size.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from imp_gguf.errors import BadInput

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
HUB_URL = "https://huggingface.co"  # what the GGUF and the card link to, whatever mirror served the files
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_BLOB = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")  # git sha1 (small files) or sha256 (LFS files)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class HubSource:
    """Where a checkpoint came from: the repo id and the commit its files were taken at."""

    repo: str
    commit: str

    @property
    def repo_url(self) -> str:
        return f"{HUB_URL}/{self.repo}"

    @property
    def commit_url(self) -> str:
        return f"{HUB_URL}/{self.repo}/tree/{self.commit}"


def split_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """(repo, revision) of `ORG/NAME[@REV]`; --revision may repeat the @REV but not contradict it."""
    repo, at, rev = spec.partition("@")
    if at and revision and rev != revision:
        raise BadInput(f"{spec} names revision {rev!r} but --revision says {revision!r}: give one of them")
    return repo, (rev if at else None) or revision


def cache_source(root: Path) -> HubSource | None:
    """The repo and commit of a folder that is a snapshot of the Hugging Face cache, else None."""
    root = root.resolve()
    repo_dir = root.parent.parent
    if root.parent.name != "snapshots" or not repo_dir.name.startswith("models--") or not _COMMIT.match(root.name):
        return None
    # huggingface_hub names the folder models--ORG--NAME (repo_folder_name); its own cache scan reads it back so.
    return HubSource(repo_dir.name[len("models--"):].replace("--", "/"), root.name)


def is_cache_link(root: Path, relname: str) -> bool:
    """True when `root/relname` is the cache's own layout: root is `<repo>/snapshots/<commit>`, relname
    stays inside it without '..', and the link chain ends on a file directly in the same repo's
    `blobs/`, named by its hash. Any other link that leaves root stays refused."""
    root_r = root.resolve()
    if cache_source(root_r) is None or ".." in Path(relname).parts:
        return False
    target = (root / relname).resolve()
    blobs = root_r.parent.parent / "blobs"
    return target.parent == blobs and bool(_BLOB.match(target.name))


def _client():  # noqa: ANN202 - the huggingface_hub module, imported only for hub ids
    import huggingface_hub

    return huggingface_hub


def download(spec: str, files: Sequence[str], *, revision: str | None = None) -> Path:
    """Fetch `files` (names or glob patterns) of hub repo `spec` into the Hugging Face cache and return
    the snapshot folder. Files already cached are not fetched again (check the weights with verify_weights)."""
    hf = _client()
    repo, rev = split_spec(spec, revision)
    try:
        local = Path(hf.snapshot_download(repo, revision=rev, allow_patterns=list(files)))
    except Exception as exc:  # noqa: BLE001 - translated into one line naming the cause
        raise BadInput(hub_error(repo, rev, exc)) from exc
    return local


def hub_error(repo: str, rev: str | None, exc: BaseException) -> str:
    """One line for a failed hub call, naming what the user can change."""
    from huggingface_hub import errors as e

    where = f"{repo}@{rev}" if rev else repo
    if isinstance(exc, e.RevisionNotFoundError):
        return f"hub repo {repo} has no revision {rev or 'main'!r} (check --revision or the @REVISION)"
    if isinstance(exc, e.GatedRepoError):
        return f"hub repo {repo} is gated: accept its terms on the hub, then set HF_TOKEN"
    if isinstance(exc, e.RepositoryNotFoundError):
        return f"hub repo {repo} not found (check the name; a private repo needs HF_TOKEN)"
    status = exc.response.status_code if isinstance(exc, e.HfHubHTTPError) and exc.response is not None else None
    if status in (401, 403):
        return f"hub repo {repo}: the hub refused the token (HF_TOKEN or `hf auth login`) with HTTP {status}"
    if isinstance(exc, (e.OfflineModeIsEnabled, e.LocalEntryNotFoundError)):
        offline = _client().constants.HF_HUB_OFFLINE
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub ({_client().constants.ENDPOINT}) cannot be reached"
        return f"{where} is not (completely) in the Hugging Face cache and {why}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{where}: download failed ({type(exc).__name__}: {first})"


def verify_weights(snapshot: Path) -> None:
    """sha256 of each weight file of a cache snapshot against its blob's name (the hub's advertised hash).

    A mismatch removes the damaged blob and its link, so the next run downloads it again, and raises.
    Every run hashes the weights again (a few seconds per GB): a cache shared with other tools can change.
    """
    src = cache_source(snapshot)
    if src is None:
        return
    for link in sorted(snapshot.rglob("*")):
        if not link.name.endswith(WEIGHT_SUFFIXES) or not link.is_symlink():
            continue
        rel = link.relative_to(snapshot).as_posix()
        if not is_cache_link(snapshot, rel):
            continue  # refused later by checkpoint.safe_child, with its own message
        blob = link.resolve()
        if not _SHA256.match(blob.name):
            continue  # not an LFS file: the hub advertised no sha256 for it
        h = hashlib.sha256()
        with open(blob, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        if h.hexdigest() != blob.name:
            blob.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
            raise BadInput(f"{rel} of {src.repo}@{src.commit[:12]}: its bytes do not match the sha256 the hub "
                           f"advertises ({blob.name[:16]}..., got {h.hexdigest()[:16]}...): damaged download, "
                           "removed from the cache; run again to download it anew")


def listed_files(source: HubSource) -> list[str]:
    """The repo's files at the commit, as the download listed them (huggingface_hub's cached tree, no
    network); empty when that cache is not there."""
    try:
        return [f.path for f in _client().get_cached_repo_tree(source.repo, revision=source.commit)]
    except Exception:  # noqa: BLE001 - older huggingface_hub, or no listing cached: nothing to tell
        return []


@dataclass(frozen=True)
class RemoteTensor:
    """A tensor known from its header only; a dry run never loads it."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self) -> np.ndarray:
        raise BadInput(f"tensor {self.name!r} was not downloaded (dry run on a hub id)")


MAX_REMOTE_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def remote_tensors(source: HubSource, shards: Sequence[str]) -> dict[str, RemoteTensor]:
    """{name: RemoteTensor} from the safetensors headers of `shards` at the source's commit: two ranged
    requests per shard (the 8-byte length, then exactly the header), never a byte of tensor data."""
    hf = _client()
    headers = hf.utils.build_hf_headers()
    session = hf.get_session()

    def fetch(url: str, first: int, last: int) -> bytes:
        r = session.get(url, headers={**headers, "Range": f"bytes={first}-{last}"}, follow_redirects=True)
        hf.hf_raise_for_status(r)
        body = r.content
        if r.status_code != 206 and len(body) > last - first + 1:  # a server ignoring Range: stop reading there
            body = body[first:last + 1]
        return body

    out: dict[str, RemoteTensor] = {}
    for shard in shards:
        url = hf.hf_hub_url(source.repo, shard, revision=source.commit)
        try:
            head = fetch(url, 0, 7)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 0 < n <= MAX_REMOTE_HEADER:
                raise BadInput(f"{shard} on the hub: not a safetensors file (header length {n})")
            meta = json.loads(fetch(url, 8, 8 + n - 1))
        except BadInput:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"{shard} on the hub: unreadable safetensors header ({type(exc).__name__})") from exc
        except Exception as exc:  # noqa: BLE001 - network and auth errors, translated
            raise BadInput(hub_error(source.repo, source.commit, exc)) from exc
        if not isinstance(meta, dict):
            raise BadInput(f"{shard} on the hub: its safetensors header is not a JSON object")
        for name, info in meta.items():
            if name == "__metadata__":
                continue
            if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                    and isinstance(info.get("shape"), list) and all(isinstance(x, int) for x in info["shape"])):
                raise BadInput(f"{shard} on the hub: tensor {name!r} has no valid dtype and shape")
            out[name] = RemoteTensor(name, info["dtype"], tuple(info["shape"]))
    if not out:
        raise BadInput(f"{source.repo}: no safetensors weights on the hub")
    return out
