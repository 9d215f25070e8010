"""Images prepared the way Imp was trained: RGB, padded to a centred grey square when the checkpoint
says `image_aspect_ratio: "pad"` (mm_utils.expand2square), then squash-resized (bicubic) to the
encoder's size (ImpImageProcessor).

Stock clip.cpp (the llama-cpp-python wheel's libmtmd) would otherwise letterbox with its own colour
(122, 116, 104), which matches neither; handing it an image already at its target size makes it copy
pixels unchanged, so llama.cpp sees exactly what the PyTorch model sees. imp-gguf's own builds read
the mmproj's preprocessing keys instead (converters/siglip.py) and take photos as they are. The mmproj
records size and aspect (see `mmproj_image_spec`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from gguf import Keys
from PIL import Image, ImageSequence, UnidentifiedImageError

from imp_gguf.errors import BadInput

MAX_PIXELS = 64_000_000  # ~8k x 8k; larger is treated as a decompression bomb
ASPECTS = ("square", "pad")
PAD_COLOR = (127, 127, 127)  # expand2square's int(0.5 * 255): SigLIP's mean on every channel
ASPECT_KEY = "imp_gguf.image_aspect_ratio"  # written by the converter into the mmproj

# Pillow logs some damaged-file errors before raising; without a handler Python would print them on
# stderr next to our own one-line error. Applications that configure logging still receive them.
logging.getLogger("PIL").addHandler(logging.NullHandler())


def mmproj_image_spec(meta: dict, name: str = "mmproj") -> tuple[int, str]:
    """(image size, aspect) an mmproj's metadata asks for; mmprojs from before the aspect key squash."""
    size = int(meta.get(Keys.ClipVision.IMAGE_SIZE) or 0)
    if size <= 0:
        raise BadInput(f"{name} has no {Keys.ClipVision.IMAGE_SIZE}: is it an mmproj?")
    aspect = str(meta.get(ASPECT_KEY) or "square")
    if aspect not in ASPECTS:
        raise BadInput(f"{name}: {ASPECT_KEY} is {aspect!r}, expected one of {', '.join(ASPECTS)}")
    return size, aspect


def expand_to_square(img: Image.Image, color: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """Imp's expand2square: the image centred on a square of `color` (offset rounded down)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def load_image(path: str | Path, size: int, aspect: str = "square") -> Image.Image:
    """Open any PNG/JPEG/WebP/... of any mode and return an RGB image of size x size, padded to a
    square first when aspect is "pad"."""
    rgb = open_rgb(path)
    if aspect == "pad":
        rgb = expand_to_square(rgb)
    elif aspect != "square":
        raise ValueError(f"aspect must be one of {ASPECTS}, not {aspect!r}")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.BICUBIC)


def open_rgb(path: str | Path) -> Image.Image:
    """Any PNG/JPEG/WebP/... of any mode as an RGB image at its own size; BadInput (one line) if it
    cannot be one."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"image {path} does not exist")
    if not path.is_file():
        raise BadInput(f"image {path} is not a file")
    if path.stat().st_size == 0:
        raise BadInput(f"image {path} is empty")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns on stderr about damaged metadata; the user gets one line or a good image.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise BadInput(f"image {path.name} is {im.width}x{im.height}: too large (decompression bomb?)")
                frame = next(iter(ImageSequence.Iterator(im)))  # animated: first frame
                frame.load()
                rgb = _to_rgb(frame)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(f"image {path.name} is too large (decompression bomb?)") from exc
    except UnidentifiedImageError as exc:
        raise BadInput(f"image {path.name} is not a readable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise BadInput(f"image {path.name} is corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if rgb.width == 0 or rgb.height == 0:
        raise BadInput(f"image {path.name} has no pixels")
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale, do not clip
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")  # as Imp does: alpha dropped, CMYK/P/L converted


def pixel_values(img: Image.Image) -> np.ndarray:
    """[3, R, R] float32: rescale 1/255 then normalise with mean = std = 0.5 (SigLIP/Imp)."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return ((arr - 0.5) / 0.5).transpose(2, 0, 1).copy()
