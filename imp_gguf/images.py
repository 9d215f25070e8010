"""Images prepared the way Imp was trained: RGB, squash-resized (bicubic) to the encoder's size.

clip.cpp would otherwise letterbox with a grey pad; handing it an image already at its target size
makes it copy pixels unchanged, so llama.cpp sees exactly what the PyTorch model sees.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from imp_gguf.errors import BadInput

MAX_PIXELS = 64_000_000  # ~8k x 8k; larger is treated as a decompression bomb

# Pillow logs some damaged-file errors before raising; without a handler Python would print them on
# stderr next to our own one-line error. Applications that configure logging still receive them.
logging.getLogger("PIL").addHandler(logging.NullHandler())


def load_image(path: str | Path, size: int) -> Image.Image:
    """Open any PNG/JPEG/WebP/... of any mode and return an RGB image of size x size."""
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
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.BICUBIC)


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
