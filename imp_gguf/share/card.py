"""A folder of converted GGUFs made ready to share: a Hugging Face model card (README.md), an ollama
Modelfile, and (on request) LM Studio's `<publisher>/<repo>/` layout.

Everything is read from the GGUFs in the folder (their general.*/imp_gguf.* metadata, sizes, bits per
weight) and from `report.json` where `recipes compare` measured them; run again after adding a recipe,
and the card and Modelfile list exactly the files present. Uploading is huggingface_hub's `hf upload`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import Keys

from imp_gguf import __version__
from imp_gguf.chat_templates import TEMPLATES
from imp_gguf.convert import JsonDict
from imp_gguf.errors import BadInput, OutputExists
from imp_gguf.gguf_info import MMPROJ_ARCH, open_reader, summary
from imp_gguf.hub import HUB_URL
from imp_gguf.images import PAD_COLOR, mmproj_image_spec
from imp_gguf.gguf_naming import SOURCE_COMMIT_KEY, SOURCE_KEY, SOURCE_REPO_KEY
from imp_gguf.quant.quantize import RECIPE_KEY
from imp_gguf.quant.recipes import DEFAULT_RECIPE, list_recipes
from imp_gguf.share.ollama import GO_TEMPLATES, modelfile
from imp_gguf.writer import atomic_outputs

MARK = "written by imp-gguf card"  # files carrying it are regenerated without --force
TAGS = ["gguf", "llama.cpp", "imp", "multimodal", "vision", "image-text-to-text", "quantized"]


@dataclass
class GgufFile:
    path: Path
    meta: dict[str, Any]
    bpw: float
    file_type: str | None

    @property
    def recipe(self) -> str | None:
        return self.meta.get(RECIPE_KEY)

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


@dataclass
class Folder:
    root: Path
    models: list[GgufFile]
    mmprojs: list[GgufFile]
    pairs: dict[str, GgufFile] = field(default_factory=dict)  # model file name -> its mmproj
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)  # model file name -> report row

    @property
    def recommended(self) -> GgufFile:
        """The recommended recipe's model if present, else the smallest (what a phone runs)."""
        return next((m for m in self.models if m.recipe == DEFAULT_RECIPE), min(self.models, key=lambda m: m.bytes))


def scan(folder: Path) -> Folder:
    """The GGUFs directly in `folder` (no hidden or partial files), paired model -> mmproj."""
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such folder")
    files = []
    for p in sorted(folder.glob("*.gguf")):
        if p.name.startswith("."):
            continue
        s = summary(p)
        files.append(GgufFile(p, s["metadata"], s["bpw"], s["file_type"]))
    models = [f for f in files if f.meta.get(Keys.General.ARCHITECTURE) != MMPROJ_ARCH]
    mmprojs = [f for f in files if f.meta.get(Keys.General.ARCHITECTURE) == MMPROJ_ARCH]
    if not models or not mmprojs:
        raise BadInput(f"{folder}: needs a language-model GGUF and an mmproj GGUF (found {len(models)} and "
                       f"{len(mmprojs)}); run `imp-gguf convert ... -o {folder}` first")
    out = Folder(folder, models, mmprojs)
    mm_types = {r.name: r.mmproj_encoding for r in list_recipes()}
    for m in models:
        same = [p for p in mmprojs if p.meta.get(SOURCE_KEY) == m.meta.get(SOURCE_KEY)] or mmprojs
        want = mm_types.get(m.recipe or "", m.file_type)
        out.pairs[m.path.name] = next((p for p in same if p.file_type == want), same[0])
    out.measured = _measured(folder, models)
    return out


def _measured(folder: Path, models: list[GgufFile]) -> dict[str, dict[str, Any]]:
    """report.json rows of `recipes compare` for files still as it measured them (same name, same size)."""
    try:
        rows = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("recipes") or []
    except (OSError, ValueError, AttributeError):
        return {}
    sizes = {m.path.name: m.bytes for m in models}
    out = {}
    for row in rows if isinstance(rows, list) else []:
        name = Path(str(row.get("model", ""))).name if isinstance(row, dict) else ""
        if name in sizes and row.get("lm_bytes") == sizes[name]:
            out[name] = row
    return out


def _fmt(x: Any, spec: str) -> str:
    return "-" if not isinstance(x, (int, float)) else format(x, spec)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def repo_name(f: Folder) -> str:
    """The GGUF repo's conventional name: the source's name + "-GGUF"."""
    return (f.recommended.meta.get(Keys.General.NAME) or f.root.resolve().name) + "-GGUF"


def render_card(f: Folder, publisher: str) -> str:
    lm = f.recommended
    mm = f.pairs[lm.path.name]
    base = lm.meta.get(SOURCE_REPO_KEY)
    commit = lm.meta.get(SOURCE_COMMIT_KEY)
    license_ = lm.meta.get(Keys.General.LICENSE)
    name = lm.meta.get(Keys.General.NAME) or f.root.name
    size, aspect = mmproj_image_spec(mm.meta, mm.path.name)
    front = ["---"]
    if base:
        front += [f"base_model: {base}", "base_model_relation: quantized"]
    if license_:
        front.append(f"license: {license_}")
    front += ["library_name: gguf", "pipeline_tag: image-text-to-text", "tags:", *[f"- {t}" for t in TAGS], "---"]
    src = f"[{base}]({HUB_URL}/{base})" + (f" at commit [`{commit[:12]}`]({HUB_URL}/{base}/tree/{commit})"
                                           if commit else "") if base else f"`{name}` (a local checkpoint)"
    lines = front + [f"<!-- {MARK} {__version__}: regenerated from the GGUF files in this folder -->", "",
                     f"# {name} GGUF", "",
                     f"GGUF files of {src} for llama.cpp: a language model and its mmproj (SigLIP vision tower and "
                     f"projector), converted by imp-gguf {__version__}."
                     + ("" if license_ else " The source states no license: check it before sharing."), "",
                     "## Files", "",
                     "| file | recipe | type | size | bits per weight | KL vs F16 | accuracy |",
                     "|---|---|---|---:|---:|---:|---:|"]
    for m in sorted(f.models, key=lambda m: -m.bytes):
        row = f.measured.get(m.path.name, {})
        recipe = (m.recipe or "none (converted)") + (" (recommended)" if m is lm else "")
        lines.append(f"| `{m.path.name}` | {recipe} | {m.file_type or '?'} | {_gb(m.bytes)} | {m.bpw:.2f} | "
                     f"{_fmt(row.get('kl_mean'), '.4f')} | {_fmt(row.get('accuracy'), '.3f')} |")
    for p in f.mmprojs:
        used = [m.path.name for m in f.models if f.pairs[m.path.name] is p]
        lines.append(f"| `{p.path.name}` | mmproj for {', '.join(f'`{u}`' for u in used) or 'none of them'} | "
                     f"{p.file_type or '?'} | {_gb(p.bytes)} | {p.bpw:.2f} | - | - |")
    lines += ["", "KL: mean KL divergence of the next-token distribution from the F16 model; accuracy: held-out "
              "accuracy; both measured by `imp-gguf recipes compare` where it ran on this folder (- : not measured)."]
    M, P = lm.path.name, mm.path.name
    prep = (f"pad it to a centred square with RGB {PAD_COLOR} first (Imp's `image_aspect_ratio: pad`), then resize"
            if aspect == "pad" else "resize it, squashing (no crop, no padding; Imp's `image_aspect_ratio: square`)")
    lines += ["", "## Image preparation", "",
              f"The vision encoder takes exactly {size} x {size} pixels. Before sending an image to a stock "
              f"runtime (llama-server, llama-mtmd-cli, ollama, LM Studio), {prep} to exactly {size} x {size} with "
              "bicubic filtering, as Imp was trained. An image already at that size reaches the encoder unchanged; "
              "otherwise llama.cpp letterboxes it with its own colour, which Imp never saw. `imp-gguf run` does "
              "this itself.", "",
              "## Usage", "",
              "llama.cpp (the mmproj and `--jinja` for the chat template stored in the GGUF):", "", "```sh",
              f"llama-server -m {M} --mmproj {P} --jinja --host 127.0.0.1 --port 8080",
              f"llama-mtmd-cli -m {M} --mmproj {P} --jinja --image photo.png -p \"What is in the picture?\"",
              "```", "", "ollama (the Modelfile in this folder):", "", "```sh",
              f"ollama create {name.lower()} -f Modelfile", f"ollama run {name.lower()}", "```", "",
              f"LM Studio: put this folder at `models/{publisher}/{repo_name(f)}/` (or `imp-gguf card FOLDER "
              "--lmstudio ~/.lmstudio/models`); the `mmproj-` file next to the model is its vision part.", "",
              "A phone (tools, model and scripts in one folder):", "", "```sh",
              f"imp-gguf bundle phone-bundle --model {M} --mmproj {P} --target android-arm64", "```", "",
              "## Upload", "", "```sh", f"hf upload {publisher}/{repo_name(f)} .", "```", "",
              "(huggingface_hub's CLI; run it in this folder.)", ""]
    return "\n".join(lines)


def stop_tokens(model: Path) -> list[str]:
    """The end-of-turn token (else end-of-sequence) as text, from the GGUF's own vocabulary."""
    r = open_reader(model)
    tokens = r.fields.get(Keys.Tokenizer.LIST)
    stops = []
    for key in (Keys.Tokenizer.EOT_ID, Keys.Tokenizer.EOS_ID):
        f = r.fields.get(key)
        if f is not None and tokens is not None:
            tok = tokens.contents(int(f.contents()))
            if tok not in stops:
                stops.append(tok)
    return stops[:1]


def render_modelfile(f: Folder) -> str | None:
    """The Modelfile text, or None when the GGUF's chat template is none of Imp's (a custom .jinja)."""
    lm = f.recommended
    r = open_reader(lm.path)
    tf = r.fields.get(Keys.Tokenizer.CHAT_TEMPLATE)
    jinja = tf.contents() if tf is not None else None
    name = next((n for n, t in TEMPLATES.items() if t == jinja and n in GO_TEMPLATES), None)
    if name is None:
        return None
    arch = lm.meta.get(Keys.General.ARCHITECTURE)
    n_ctx = lm.meta.get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    header = (f"# {MARK} {__version__}: ollama create NAME -f Modelfile (template: {name}; the other models in "
              "this folder work the same way with their own FROM lines)")
    return modelfile(lm.path.name, f.pairs[lm.path.name].path.name, name, stop_tokens(lm.path),
                     int(n_ctx) if isinstance(n_ctx, int) else None, header)


@dataclass(frozen=True)
class CardResult:
    """What `card` wrote: the model card, the Modelfile (None when no ollama template is known for the
    chat template), the GGUFs it describes and, on request, the LM Studio folder."""

    card: Path
    modelfile: Path | None
    models: tuple[str, ...]  # file names
    mmprojs: tuple[str, ...]
    recommended: str
    lmstudio: Path | None
    notes: tuple[str, ...]

    def to_dict(self) -> JsonDict:
        return {"card": str(self.card), "modelfile": str(self.modelfile) if self.modelfile else None,
                "models": list(self.models), "mmprojs": list(self.mmprojs), "recommended": self.recommended,
                "lmstudio": str(self.lmstudio) if self.lmstudio else None, "notes": list(self.notes)}


def _ours(path: Path) -> bool:
    try:
        return MARK in path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def write_card(folder: str | Path, *, publisher: str = "local", force: bool = False,
               lmstudio: str | Path | None = None) -> CardResult:
    """Write README.md and Modelfile into `folder` (replacing its own earlier ones; anything else only with
    force) and, with `lmstudio` (a models folder), link the GGUFs into `<lmstudio>/<publisher>/<repo>/`."""
    f = scan(Path(folder))
    card = f.root / "README.md"
    texts = {card: render_card(f, publisher)}
    mf = render_modelfile(f)
    if mf is not None:
        texts[f.root / "Modelfile"] = mf
    for p in texts:
        if p.exists() and not force and not _ours(p):
            raise OutputExists(f"{p} exists and was not written by imp-gguf card; pass --force to replace it")
    paths = list(texts)
    with atomic_outputs(paths, force=True) as tmps:
        for tmp, p in zip(tmps, paths):
            tmp.write_text(texts[p], encoding="utf-8")
    return CardResult(
        card=card, modelfile=paths[1] if mf else None, models=tuple(m.path.name for m in f.models),
        mmprojs=tuple(p.path.name for p in f.mmprojs), recommended=f.recommended.path.name,
        lmstudio=link_lmstudio(f, Path(lmstudio), publisher, force=force) if lmstudio is not None else None,
        notes=() if mf else ("no Modelfile: the chat template is not one of Imp's, so no ollama TEMPLATE is "
                             "known for it",))


def link_lmstudio(f: Folder, models_dir: Path, publisher: str, *, force: bool = False) -> Path:
    """`<models_dir>/<publisher>/<repo>/` holding every model and mmproj of the folder side by side (hard
    links: no copy of the bytes; a copy where the two folders are on different file systems)."""
    import shutil

    dest = models_dir / publisher / repo_name(f)
    dest.mkdir(parents=True, exist_ok=True)
    for g in [*f.models, *f.mmprojs]:
        target = dest / g.path.name
        if target.exists():
            if target.samefile(g.path):
                continue
            if not force:
                raise OutputExists(f"{target} exists; pass --force to replace it")
        tmp = dest / f".{g.path.name}.{os.getpid()}.partial"
        try:
            os.link(g.path, tmp)
        except OSError:
            shutil.copyfile(g.path, tmp)
        os.replace(tmp, target)
    return dest
