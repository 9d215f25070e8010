"""Hostile runtime inputs: damaged or mismatched GGUF files, and images of every awkward kind.

GGUF files are checked in Python (imp_gguf.gguf_info.check_gguf) before gguf-py or llama.cpp sees
them, so a truncated or forged file is one line of error, never a hang or a crashed process.
Images either load as a correct RGB image of the encoder's size or give one line of error.
Tested at library level (imp_gguf.images, imp_gguf.gguf_info, runtime.bindings.Session) and
through `imp-gguf inspect`; the `run` command is tested with its own module.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imp_gguf import gguf_info
from imp_gguf.cli.main import main
from imp_gguf.errors import BadInput
from imp_gguf.images import load_image
from tests.hostile.conftest import VARIANT, alarm_after, hostile_checkpoint

SIZE = 56  # the fixture's encoder resolution


@pytest.fixture(autouse=True)
def alarm():
    """No case may hang: 30 s per test, raised as a BaseException nothing under test can swallow."""
    with alarm_after(30):
        yield


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture converted (LLM width 256), plus the mmproj of a 512-wide twin."""
    from imp_gguf.convert import convert
    from imp_gguf.synthetic_checkpoints.tiny import dims_with

    src = hostile_checkpoint(tmp_path_factory)
    # phi-msft configs say n_inner=null (4 x width), so the wide twin's FFN must be 4 x 512.
    wide = hostile_checkpoint(tmp_path_factory, f"{VARIANT}-wide", VARIANT, dims=dims_with(n_embd=512, n_ff_phi2=2048))
    out = tmp_path_factory.mktemp("hostile-gguf")
    r = convert(src, out / "narrow")
    w = convert(wide, out / "wide")
    return {"model": r.model, "mmproj": r.mmproj, "wide_mmproj": w.mmproj}


def cut(src: Path, dest: Path, n: int) -> Path:
    dest.write_bytes(src.read_bytes()[:n])
    return dest


def assert_inspect_refuses(capsys, path: Path, *needles: str) -> str:
    rc = main(["inspect", str(path)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------- damaged GGUF files


def test_good_files_inspect(capsys, ggufs):
    for key in ("model", "mmproj"):
        s = gguf_info.summary(ggufs[key])
        assert s["n_tensors"] > 10
        assert main(["inspect", str(ggufs[key]), "--json"]) == 0
    assert gguf_info.summary(ggufs["mmproj"])["architecture"] == "clip"
    capsys.readouterr()


@pytest.mark.parametrize("keep", [0, 3, 4, 10, 23, 100, 5000, -4096, -1])
def test_truncated_gguf(capsys, ggufs, tmp_path, keep):
    src = ggufs["model"]
    n = keep if keep >= 0 else src.stat().st_size + keep
    bad = cut(src, tmp_path / "cut.gguf", n)
    with pytest.raises(BadInput) as e:
        gguf_info.summary(bad)
    assert "cut.gguf" in str(e.value)
    assert_inspect_refuses(capsys, bad, "cut.gguf")


def test_truncated_gguf_names_the_tensor(ggufs, tmp_path):
    bad = cut(ggufs["model"], tmp_path / "cut.gguf", ggufs["model"].stat().st_size - 1)
    with pytest.raises(BadInput, match=r"truncated GGUF: tensor '.+' ends at byte \d+ of a \d+-byte file"):
        gguf_info.check_gguf(bad)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip", b"\x89PNG\r\n\x1a\n....", b'{"model": 1}'])
def test_not_a_gguf(capsys, tmp_path, content):
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(BadInput, match="not a GGUF file"):
        gguf_info.summary(p)
    assert_inspect_refuses(capsys, p, "not a GGUF file")


def test_missing_and_folder(capsys, tmp_path):
    assert_inspect_refuses(capsys, tmp_path / "nope.gguf", "does not exist")
    assert_inspect_refuses(capsys, tmp_path, "is not a file")


# A tiny, valid GGUF whose fields are then forged one at a time.

def _tiny(path: Path) -> bytes:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_string("test.aa", "hello")
    w.add_string("test.ab", "world")
    w.add_array("test.tokens", ["a", "bb", "ccc"])
    w.add_array("test.nums", [1, 2, 3])
    w.add_tensor("ta", np.ones((4, 32), np.float32))
    w.add_tensor("tb", np.ones((32,), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _after(raw: bytes, name: str) -> int:
    """Offset just past a length-prefixed GGUF string."""
    s = struct.pack("<Q", len(name)) + name.encode()
    assert raw.count(s) == 1
    return raw.index(s) + len(s)


def _forge(raw: bytes, at: int, fmt: str, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


FORGERIES = {
    "version 1": (lambda r: _forge(r, 4, "<I", 1), "unsupported GGUF version 1"),
    "version 4": (lambda r: _forge(r, 4, "<I", 4), "unsupported GGUF version 4"),
    "tensor count": (lambda r: _forge(r, 8, "<Q", 2**62), "cannot fit"),
    "key count": (lambda r: _forge(r, 16, "<Q", 2**64 - 1), "cannot fit"),
    "string array length": (lambda r: _forge(r, _after(r, "test.tokens") + 8, "<Q", 2**60), "cannot fit"),
    # gguf-py alone loops item by item past the end of the file here: a hang, not an error
    "number array length": (lambda r: _forge(r, _after(r, "test.nums") + 8, "<Q", 2**40), "runs past the end"),
    "string length": (lambda r: _forge(r, _after(r, "test.aa") + 4, "<Q", 2**40), "runs past the end"),
    "key length": (lambda r: _forge(r, _after(r, "test.aa") - 7 - 8, "<Q", 2**63), "runs past the end"),
    "nested array": (lambda r: _forge(r, _after(r, "test.tokens") + 4, "<I", 9), "nested or unknown"),
    "unknown type": (lambda r: _forge(r, _after(r, "test.aa"), "<I", 77), "unknown type 77"),
    "duplicate key": (lambda r: r.replace(b"test.ab", b"test.aa"), "repeated"),
    "key not utf-8": (lambda r: r.replace(b"test.ab", b"test.\xff\xfe"), "not UTF-8"),
    "alignment 3": (lambda r: _forge(r, _after(r, "general.alignment") + 4, "<I", 3), "power of two"),
    "alignment 0": (lambda r: _forge(r, _after(r, "general.alignment") + 4, "<I", 0), "power of two"),
    "duplicate tensor": (lambda r: r.replace(struct.pack("<Q", 2) + b"tb", struct.pack("<Q", 2) + b"ta"), "repeated"),
    "rank 5": (lambda r: _forge(r, _after(r, "ta"), "<I", 5), "5 dimensions"),
    "huge shape": (lambda r: _forge(_forge(r, _after(r, "ta") + 4, "<Q", 2**62), _after(r, "ta") + 12, "<Q", 2**62),
                   "impossible shape"),
    "shape past file": (lambda r: _forge(r, _after(r, "ta") + 12, "<Q", 2**30), "truncated GGUF"),
    "tensor type": (lambda r: _forge(r, _after(r, "ta") + 4 + 16, "<I", 4), "unknown type 4"),
    "partial block": (lambda r: _forge(r, _after(r, "ta") + 4 + 16, "<I", 12), "not whole blocks"),  # Q4_K: 256
    "tensor offset": (lambda r: _forge(r, _after(r, "tb") + 4 + 8 + 4, "<Q", 64 * 1024), "expected"),
    "misaligned offset": (lambda r: _forge(r, _after(r, "tb") + 4 + 8 + 4, "<Q", 8), "expected"),
}


@pytest.mark.parametrize("kind", sorted(FORGERIES))
def test_forged_gguf_header(capsys, tmp_path, kind):
    raw = _tiny(tmp_path / "ok.gguf")
    gguf_info.summary(tmp_path / "ok.gguf")  # the unforged file is fine
    forge, needle = FORGERIES[kind]
    bad = tmp_path / "forged.gguf"
    bad.write_bytes(forge(raw))
    t0 = time.monotonic()
    with pytest.raises(BadInput, match=needle):
        gguf_info.summary(bad)
    assert time.monotonic() - t0 < 2
    assert_inspect_refuses(capsys, bad, "forged.gguf")


def test_inspect_metadata_with_markup(capsys, tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_name("[/oops] [bold]x")
    w.add_tensor("a", np.zeros((4,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["inspect", str(tmp_path / "m.gguf")]) == 0
    assert "[/oops] [bold]x" in capsys.readouterr().out  # the result: stdout, printed verbatim


# ---------------------------------------------------------------- llama.cpp sessions


@pytest.fixture(scope="module")
def bindings():
    pytest.importorskip("llama_cpp")
    from imp_gguf.runtime import bindings

    return bindings


def test_session_refuses_damaged_model_before_llama_cpp(ggufs, tmp_path, bindings):
    size = ggufs["model"].stat().st_size
    for n in (0, 100, size // 2, size - 1):
        bad = cut(ggufs["model"], tmp_path / f"cut{n}.gguf", n)
        with pytest.raises(BadInput, match=f"cut{n}.gguf"):
            bindings.Session(bad)
    not_gguf = tmp_path / "photo.gguf"
    not_gguf.write_bytes(b"\xff\xd8\xff\xe0" + bytes(4000))
    with pytest.raises(BadInput, match="not a GGUF file"):
        bindings.Session(not_gguf)
    # still alive, and a good file still loads
    bindings.Session(ggufs["model"]).close()


def test_session_refuses_damaged_mmproj(ggufs, tmp_path, bindings):
    bad = cut(ggufs["mmproj"], tmp_path / "mm.gguf", ggufs["mmproj"].stat().st_size - 10)
    with pytest.raises(BadInput, match="mm.gguf"):
        bindings.Session(ggufs["model"], bad)


def test_mmproj_given_as_the_model(ggufs, bindings):
    with pytest.raises(BadInput, match="is an mmproj"):
        bindings.Session(ggufs["mmproj"])


def test_model_given_as_the_mmproj(ggufs, bindings):
    with pytest.raises(BadInput, match="is not an mmproj"):
        bindings.Session(ggufs["model"], ggufs["model"])


def test_mmproj_width_does_not_match_model(ggufs, bindings):
    with pytest.raises(BadInput, match="width 512 does not match the model's width 256"):
        bindings.Session(ggufs["model"], ggufs["wide_mmproj"])


def test_session_images(ggufs, tmp_path, bindings):
    """Bad images are one-line errors through the session too; good odd modes give embeddings."""
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (70, 40), (200, 30, 30, 0)).save(rgba)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(rgba.read_bytes()[:60])
    with bindings.Session(ggufs["model"], ggufs["mmproj"], n_ctx=256) as s:
        emb = s.image_embeddings(rgba)
        assert emb.shape == ((SIZE // 14) ** 2, 256) and np.isfinite(emb).all()
        with pytest.raises(BadInput, match="corrupt.png"):
            s.image_embeddings(corrupt)
        with pytest.raises(BadInput, match="does not exist"):
            s.image_embeddings(tmp_path / "missing.png")


# ---------------------------------------------------------------- images


def _png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, raw: bytes = b"") -> bytes:
    """A PNG file written by hand: any header, whatever the pixel data (none is needed to lie)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def check_rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB" and img.size == (SIZE, SIZE)
    return np.asarray(img).astype(int)


@pytest.mark.parametrize("name, content, needle", [
    ("empty.png", b"", "is empty"),
    ("text.png", b"hello, not an image", "not a readable image"),
    ("fake.jpg", b"\xff\xd8\xff\xe0" + bytes(10), "image fake.jpg"),
    ("zero.png", _png(0, 0), "image zero.png"),
    ("svg.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a readable image"),
])
def test_unreadable_images(capsys, tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(BadInput, match=needle):
        load_image(p, SIZE)
    assert capsys.readouterr().err == ""


def test_missing_image_and_folder(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_image(tmp_path / "nope.png", SIZE)
    with pytest.raises(BadInput, match="is not a file"):
        load_image(tmp_path, SIZE)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF"])
def test_truncated_images(capsys, tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(BadInput, match=f"cut.{fmt.lower()}"):
        load_image(p, SIZE)
    assert capsys.readouterr().err == ""  # no Pillow warnings on stderr besides our one line


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (9_000, 9_000), (2**31 - 1, 2)])
def test_decompression_bomb_is_refused_without_allocating(tmp_path, w, h):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(w, h))
    assert p.stat().st_size < 100
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="too large"):
        load_image(p, SIZE)
    assert time.monotonic() - t0 < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50 * 1024  # KiB: nothing big allocated


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    white = check_rgb(load_image(_save(Image.fromarray(np.full((40, 30), 65535, np.uint16)), tmp_path / "w.png"), SIZE))
    assert (white == 255).all()
    mid = check_rgb(load_image(_save(Image.fromarray(np.full((40, 30), 32768, np.uint16)), tmp_path / "m.png"), SIZE))
    assert (mid == 128).all()
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    r = check_rgb(load_image(_save(Image.fromarray(ramp), tmp_path / "r.png"), SIZE))
    assert r[:, 0].max() <= 3 and r[:, -1].min() >= 252  # full range kept


def test_16bit_rgb_png(tmp_path):
    raw = b"".join(b"\x00" + b"\xff\xff\x80\x00\x00\x00" * 4 for _ in range(4))  # (65535, 32768, 0)
    p = tmp_path / "rgb16.png"
    p.write_bytes(_png(4, 4, 16, 2, raw))
    a = check_rgb(load_image(p, SIZE))
    assert (a[..., 0] == 255).all() and (abs(a[..., 1] - 128) <= 1).all() and (a[..., 2] == 0).all()


def test_32bit_and_float_grey(tmp_path):
    a = check_rgb(load_image(_save(Image.new("I", (30, 30), 65535), tmp_path / "i.tif"), SIZE))
    assert (a == 255).all()
    f = check_rgb(load_image(_save(Image.new("F", (30, 30), 0.5), tmp_path / "f.tif"), SIZE))
    assert (f == 128).all()


@pytest.mark.parametrize("mode, value, fmt, expected", [
    ("L", 200, "png", (200, 200, 200)),
    ("LA", (200, 0), "png", (200, 200, 200)),
    ("RGBA", (10, 200, 30, 0), "png", (10, 200, 30)),  # alpha dropped, as Imp does
    ("P", 0, "png", None),
    ("1", 1, "png", (255, 255, 255)),
    ("CMYK", (0, 0, 0, 0), "jpg", (255, 255, 255)),
    ("CMYK", (255, 0, 0, 0), "tif", (0, 255, 255)),
    ("YCbCr", (128, 128, 128), "jpg", (128, 128, 128)),
])
def test_modes_become_rgb(tmp_path, mode, value, fmt, expected):
    p = _save(Image.new(mode, (50, 30), value), tmp_path / f"img.{fmt}")
    a = check_rgb(load_image(p, SIZE))
    if expected is not None:
        assert np.abs(a - np.array(expected)).max() <= 3, (a[0, 0], expected)


@pytest.mark.parametrize("fmt", ["gif", "png", "webp"])
def test_animated_images_use_the_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / f"anim.{fmt}"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    assert getattr(Image.open(p), "n_frames", 1) == 3
    a = check_rgb(load_image(p, SIZE))
    assert np.abs(a - np.array([255, 0, 0])).max() <= 3


def test_odd_shapes_are_squashed_to_size(tmp_path):
    for w, h in [(1, 5000), (5000, 1), (SIZE, SIZE), (3, 3)]:
        check_rgb(load_image(_save(Image.new("RGB", (w, h), (9, 99, 199)), tmp_path / f"{w}x{h}.png"), SIZE))
