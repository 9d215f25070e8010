"""A raw photo reaches Imp as Imp prepares it: the mmproj's preprocessing keys, the patch that makes
imp-gguf's llama.cpp builds read them, and what each path (patched build on host and under qemu, the
stock wheel, the bundle's run.sh) makes of a non-square image."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imp_gguf.converters.siglip import PAD_COLOR_KEY, RESIZE_ALGO_KEY, RESIZE_PAD_KEY
from imp_gguf.gguf_info import read_gguf_meta
from imp_gguf.runtime import build as rt
from imp_gguf.runtime.patches import PatchDoesNotApply, bundled_patches, check_applies, load_patches
from imp_gguf.runtime.runner import LocalRunner, QemuRunner, Runner
from imp_gguf.runtime.source import ensure_source
from imp_gguf.synthetic_images import photo_like

SQUARE, PAD = "Imp-v1.5-2B-Qwen1.5", "Imp-v1.5-4B-Phi3"  # Imp's two preprocessings: squash; grey pad, then squash
PHOTO = {SQUARE: (448, 336), PAD: (448, 112)}  # a 4:3 photo; a 4:1 panorama (most of the square is padding)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def probe_embeddings(runner: Runner, probe: Path, model: Path, mmproj: Path, image: Path, out: Path) -> np.ndarray:
    """The image file as the built llama.cpp loads and encodes it (tests/plugins/mtmd_probe.cpp)."""
    proc = runner.run([str(probe), "embd", str(model), str(mmproj), str(image), str(out)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    n_tokens, n_embd = map(int, proc.stdout.split())
    return np.fromfile(out, dtype=np.float32).reshape(n_tokens, n_embd)


# ------------------------------------------------------------------ the keys


@pytest.mark.parametrize("variant,pad,colour", [(SQUARE, "none", None), (PAD, "square", [127, 127, 127])])
def test_mmproj_states_imp_preprocessing(variant, pad, colour, converted) -> None:
    meta = read_gguf_meta(converted(variant, "f32")["mmproj"])
    assert meta[RESIZE_PAD_KEY] == pad and meta[RESIZE_ALGO_KEY] == "bicubic"
    assert meta.get(PAD_COLOR_KEY) == colour
    assert meta["imp_gguf.image_aspect_ratio"] == ("pad" if colour else "square")


def test_stock_wheel_loads_mmprojs_with_the_keys(converted, test_image) -> None:
    """Unknown keys are ignored by unpatched llama.cpp: the wheel's libmtmd loads and encodes with them."""
    from imp_gguf.runtime.bindings import Session

    for variant in (SQUARE, PAD):
        r = converted(variant, "f32")
        with Session(r["model"], r["mmproj"], n_threads=2) as s:
            emb = s.image_embeddings(test_image)
        assert emb.shape[0] == (s.image_size // 14) ** 2 and np.isfinite(emb).all()


# ------------------------------------------------------------------ the patch and the build


def test_patch_applies_to_the_pinned_source() -> None:
    patches = bundled_patches()
    assert [p.name for p in patches] == ["0001-mtmd-preprocessing-keys.patch"]
    check_applies(patches, ensure_source().llama_cpp)
    text = patches[0].path.read_text()
    changed = [ln for ln in text.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert 0 < len(changed) <= 70, "small"
    for key in (RESIZE_PAD_KEY, RESIZE_ALGO_KEY, PAD_COLOR_KEY):
        assert f'"{key}"' in text


def test_cache_key_follows_the_patches(tmp_path: Path) -> None:
    (patch,) = bundled_patches()
    edited = tmp_path / patch.name
    edited.write_text(patch.path.read_text().replace("Subject:", "Subject: (edited)", 1))
    specs = [rt.build_spec("host"), rt.build_spec("host", patches=()), rt.build_spec("host", patches=load_patches([edited]))]
    assert len({s.flag_hash() for s in specs}) == 3
    assert specs[0].patches == (patch,)
    assert rt.build_spec("linux-arm64").flag_hash() != rt.build_spec("linux-arm64", patches=()).flag_hash()


def test_a_patch_that_does_not_apply_stops_the_build_before_configuring(tmp_path: Path) -> None:
    (patch,) = bundled_patches()
    stale = tmp_path / "0001-stale.patch"
    # The context the hunk needs is gone (as after a new pin): git apply refuses it.
    stale.write_text(patch.path.read_text().replace(" #define KEY_IMAGE_STD ", " #define KEY_IMAGE_STDDEV ", 1))
    patches = load_patches([stale])
    bdir = rt.build_dir(rt.build_spec("host", patches=patches))
    t0 = time.monotonic()
    with pytest.raises(PatchDoesNotApply) as err:
        rt.build("host", patches=patches)
    assert time.monotonic() - t0 < 60
    msg = str(err.value)
    assert "\n" not in msg and "0001-stale.patch does not apply" in msg and "clip-impl.h" in msg, msg
    assert err.value.exit_code == 1
    assert not bdir.exists(), "nothing configured or compiled"


def test_runtime_where_and_termux_steps_name_the_patches(host_tools) -> None:
    import sys

    res = rt.where("host")
    assert [p.name for p in res.patches] == [p.name for p in bundled_patches()]
    proc = subprocess.run([sys.executable, "-m", "imp_gguf.cli.main", "runtime", "where", "--target", "host"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "patch\t0001-mtmd-preprocessing-keys.patch" in proc.stdout.splitlines()
    steps = rt.termux_instructions()
    (patch,) = bundled_patches()
    assert patch.path.read_text() in steps and steps.index("git apply") < steps.index("cmake -S")


@pytest.mark.slow
def test_patched_build_refuses_an_unknown_value_that_stock_ignores(converted, host_probe, test_image, tmp_path) -> None:
    """The patch names the key it cannot read; the stock wheel does not read it at all."""
    from imp_gguf.runtime.bindings import Session

    r = converted(PAD, "f32")
    data = Path(r["mmproj"]).read_bytes()
    head = RESIZE_PAD_KEY.encode() + (8).to_bytes(4, "little") + (6).to_bytes(8, "little")  # GGUF string "square"
    assert data.count(head + b"square") == 1
    bad = tmp_path / "mmproj-bad.gguf"
    bad.write_bytes(data.replace(head + b"square", head + b"bogus!"))  # same length: still a valid GGUF
    # (the probe, not llama-mtmd-cli: mtmd-cli's asynchronous logger may exit before printing the error)
    proc = LocalRunner().run([str(host_probe), "embd", str(r["model"]), str(bad), str(test_image),
                              str(tmp_path / "e.f32")], timeout=300)
    assert proc.returncode != 0 and f"unknown {RESIZE_PAD_KEY}: bogus!" in proc.stderr, proc.stderr[-800:]
    with Session(r["model"], bad, n_threads=2) as s:
        assert np.isfinite(s.image_embeddings(test_image)).all()


# ------------------------------------------------------------------ pixels and embeddings


@pytest.fixture(scope="module")
def references(tiny_checkpoints):
    from imp_gguf.reference.model import ImpModel

    return {v: ImpModel.from_checkpoint(tiny_checkpoints[v]) for v in (SQUARE, PAD)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [SQUARE, PAD])
def test_patched_host_build_sees_a_raw_photo_as_imp_does(variant, converted, references, host_probe, tmp_path) -> None:
    from imp_gguf.runtime.bindings import Session

    r = converted(variant, "f32")
    photo = photo_like(tmp_path / "photo.png", *PHOTO[variant])
    want = references[variant].image_features(photo)  # Imp's own preprocessing (reference/preprocess.py)
    got = probe_embeddings(LocalRunner(), host_probe, r["model"], r["mmproj"], photo, tmp_path / "embd.f32")
    cos = row_cosines(got, want)
    with Session(r["model"], r["mmproj"], f32_kv=True, n_threads=2, prepare_images=False) as s:
        stock = row_cosines(s.image_embeddings(photo), want)  # the wheel's unpatched libmtmd, same raw file
    print(f"{variant}: patched build min/mean cosine {cos.min():.6f}/{cos.mean():.6f}; "
          f"stock wheel {stock.min():.4f}/{stock.mean():.4f}")
    assert cos.min() >= 0.999, f"patched build: min per-token cosine {cos.min():.6f}"
    assert stock.min() < 0.99, f"the stock library should letterbox this photo differently (min {stock.min():.4f})"


@pytest.mark.cross
@pytest.mark.slow
def test_patched_arm64_build_sees_a_raw_photo_as_imp_does(converted, references, arm64_probe, tmp_path) -> None:
    r = converted(PAD, "f32")
    photo = photo_like(tmp_path / "photo.png", *PHOTO[PAD])
    want = references[PAD].image_features(photo)
    got = probe_embeddings(QemuRunner(), arm64_probe, r["model"], r["mmproj"], photo, tmp_path / "embd.f32")
    cos = row_cosines(got, want)
    print(f"linux-arm64 under qemu, {PAD}: min/mean cosine {cos.min():.6f}/{cos.mean():.6f}")
    assert cos.min() >= 0.999, f"min per-token cosine {cos.min():.6f}"


def _clip_pixels(probe: Path, mmproj: Path, img: Image.Image, tmp: Path) -> np.ndarray:
    """clip.cpp's preprocessed image (uint8, HWC) for this mmproj, from the normalised floats it encodes."""
    rgb = tmp / "in.rgb"
    rgb.write_bytes(np.asarray(img.convert("RGB"), dtype=np.uint8).tobytes())
    proc = LocalRunner().run([str(probe), "pixels", str(mmproj), str(rgb), str(img.width), str(img.height),
                              str(tmp / "out.f32")], timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    nx, ny = map(int, proc.stdout.split())
    x = np.fromfile(tmp / "out.f32", dtype=np.float32).reshape(ny, nx, 3)
    return np.clip(np.rint((x * 0.5 + 0.5) * 255), 0, 255).astype(np.int16)  # mean = std = 0.5


@pytest.mark.slow
def test_resampling_a_12_megapixel_photo_matches_pil(tmp_path, host_probe) -> None:
    """Imp shrinks with PIL's bicubic (antialiased); clip.cpp's resampler must give nearly the same pixels."""
    from imp_gguf.convert import convert
    from imp_gguf.synthetic_checkpoints.tiny import make_checkpoint
    from imp_gguf.images import expand_to_square

    photo = Image.open(photo_like(tmp_path / "photo.png", 4000, 3000)).convert("RGB")
    figures = {}
    for variant in (SQUARE, PAD):
        ck = make_checkpoint(variant, tmp_path / f"ck-{variant}", image_size=384)
        mmproj = convert(ck, tmp_path / f"gguf-{variant}", outtype="f32").mmproj
        imp = expand_to_square(photo) if variant == PAD else photo
        want = np.asarray(imp.resize((384, 384), Image.BICUBIC), dtype=np.int16)
        got = _clip_pixels(host_probe, mmproj, photo, tmp_path)
        assert got.shape == want.shape
        diff = np.abs(got - want)
        figures[variant] = (diff.mean(), np.percentile(diff, 99.9), diff.max())
    print("clip.cpp vs PIL, 4000x3000 -> 384x384: " + "; ".join(
        f"{v}: mean |diff| {m:.3f}, 99.9th pct {p:.0f}, max {x}" for v, (m, p, x) in figures.items()))
    assert figures[SQUARE][0] <= 0.5, "the squash must resample as PIL does"
    assert figures[PAD][0] <= 0.5, "pad to a grey square, then squash, as Imp does"


# ------------------------------------------------------------------ the bundle's run.sh


def _scenes() -> list[tuple[str, Image.Image, list[tuple[str, str]]]]:
    """Tiny-Imp scenes stretched to 4:1 and 1:4: squashed back, as Imp does, they are the scenes it knows."""
    from imp_gguf.tiny_imp import data

    out = []
    for i, (w, h) in enumerate([(448, 112), (112, 448)]):
        scene = data.random_scene(random.Random(f"preprocessing-{i}"), 1)
        qa = [data.ask(scene, random.Random(0), kind)[:2] for kind in ("background", "shape", "colour")]
        out.append((f"{w}x{h}", data.render(scene).resize((w, h), Image.BICUBIC), qa))
    return out


def _answers(run_sh: Path, image: Path, questions: list[str], env: dict) -> list[str]:
    outs = []
    for q in questions:
        # llama-mtmd-cli prints the answer on stdout through its asynchronous logger, which on a busy
        # machine sometimes exits before writing the tail (the closing newlines show it all came out):
        # ask again, at most twice more.
        for _ in range(3):
            proc = subprocess.run(["sh", str(run_sh), str(image), q, "-n", "16"], capture_output=True, text=True,
                                  env=env, timeout=900)
            assert proc.returncode == 0, proc.stderr[-1500:]
            if proc.stdout.endswith("\n"):
                break
        outs.append(proc.stdout.strip())
    return outs


def _check_bundle_answers(bundle: Path, tmp: Path, env: dict) -> None:
    from imp_gguf.images import load_image
    from imp_gguf.tiny_imp.data import IMAGE_SIZE, normalise

    right = {"raw": 0, "prepared": 0}
    for name, img, qa in _scenes():
        raw = tmp / f"raw-{name}.png"
        img.save(raw)
        prepared = tmp / f"prepared-{name}.png"
        load_image(raw, IMAGE_SIZE, "square").save(prepared)  # as `imp-gguf run` prepares it
        questions = [q for q, _ in qa]
        got_raw = _answers(bundle / "run.sh", raw, questions, env)
        got_prep = _answers(bundle / "run.sh", prepared, questions, env)
        for i, q in enumerate(questions):
            # The same logger can also repeat a piece of the answer under load ("The shape shape is"): a
            # difference must survive asking both forms again (greedy decoding is deterministic).
            for _ in range(2):
                if got_raw[i] == got_prep[i]:
                    break
                (got_raw[i],), (got_prep[i],) = _answers(bundle / "run.sh", raw, [q], env), \
                    _answers(bundle / "run.sh", prepared, [q], env)
        assert got_raw == got_prep, (name, got_raw, got_prep)  # the same pixels reach the model
        for (_, golden), a, b in zip(qa, got_raw, got_prep):
            right["raw"] += normalise(a) == normalise(golden)
            right["prepared"] += normalise(b) == normalise(golden)
    print(f"bundle answers right: {right}")
    assert right["raw"] == right["prepared"] >= 4  # of 6: as well, and well enough to mean something


@pytest.fixture(scope="module")
def tiny_imp_pair(tmp_path_factory) -> tuple[Path, Path]:
    from imp_gguf.convert import convert
    from imp_gguf.tiny_imp.bundled import default_checkpoint

    r = convert(default_checkpoint(), tmp_path_factory.mktemp("tiny-imp"), outtype="f16").to_dict()
    return Path(r["model"]), Path(r["mmproj"])


@pytest.mark.slow
def test_host_bundle_answers_raw_wide_and_tall_scenes(tiny_imp_pair, host_tools, tmp_path) -> None:
    from imp_gguf.runtime.bundle import make_bundle

    model, mmproj = tiny_imp_pair
    res = make_bundle(tmp_path / "b", model=model, mmproj=mmproj, target="host", binaries=host_tools)
    assert [p.name for p in res.manifest.patches] == [p.name for p in bundled_patches()]
    _check_bundle_answers(res.folder, tmp_path, {**os.environ, "IMP_THREADS": "2"})


@pytest.mark.cross
@pytest.mark.slow
def test_arm64_bundle_run_sh_answers_raw_wide_and_tall_scenes_under_qemu(tiny_imp_pair, arm64_tools, tmp_path) -> None:
    from imp_gguf.runtime.bundle import make_bundle

    model, mmproj = tiny_imp_pair
    res = make_bundle(tmp_path / "b", model=model, mmproj=mmproj)  # linux-arm64
    # No binfmt_misc here: run.sh runs as it is, and its `exec ./bin/llama-mtmd-cli` reaches the bundled
    # aarch64 binary through a one-line qemu shim in its place.
    cli = res.folder / "bin" / "llama-mtmd-cli"
    shutil.move(cli, cli.with_name("llama-mtmd-cli.aarch64"))
    cli.write_text(f'#!/bin/sh\nexec qemu-aarch64 "$(dirname "$0")/llama-mtmd-cli.aarch64" "$@"\n')
    cli.chmod(0o755)
    _check_bundle_answers(res.folder, tmp_path, {**os.environ, "IMP_THREADS": "2"})
