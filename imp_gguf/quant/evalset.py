"""The fixed evaluation set for recipe comparison: text prompts and synthetic images with questions.

Everything is deterministic (fixed strings, images drawn from fixed parameters), so two runs on any
machine score the same inputs and a committed baseline stays meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imp_gguf.synthetic_images import shapes_image


# Varied registers: prose, instructions, code, numbers, a dialogue turn. Short enough for tiny models.
TEXT_PROMPTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.",
    "Explain in two sentences why the sky looks blue during the day and red at sunset.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "In 1969, 3 astronauts flew 384,400 km to the Moon; 2 of them walked on its surface for 21.5 hours.",
    "User: What should I pack for a weekend hike in the mountains?\nAssistant: Bring water, layers and a map.",
)

# (file stem, background, [(shape, colour, box)], question). Boxes are fractions of the image side.
_SHAPES = (
    ("red-circle", (245, 245, 240), [("ellipse", (220, 30, 30), (0.2, 0.2, 0.8, 0.8))],
     "What shape is in the picture, and what colour is it?"),
    ("blue-square-green-triangle", (30, 30, 40),
     [("rectangle", (40, 90, 230), (0.1, 0.15, 0.45, 0.5)), ("triangle", (40, 200, 80), (0.5, 0.45, 0.95, 0.95))],
     "How many shapes do you see? Describe them."),
    ("yellow-stripes", (20, 110, 60),
     [("rectangle", (250, 220, 40), (0.0, y, 1.0, y + 0.1)) for y in (0.1, 0.35, 0.6, 0.85)],
     "Describe the pattern in this image."),
    ("grid-of-dots", (255, 255, 255),
     [("ellipse", (20 + 60 * i, 40 * j, 200 - 40 * i), (0.1 + 0.22 * i, 0.1 + 0.22 * j, 0.24 + 0.22 * i, 0.24 + 0.22 * j))
      for i in range(4) for j in range(4)],
     "What is shown here?"),
)

IMAGE_SIDE = 224  # any size works: images are squash-resized to the encoder's side when loaded


@dataclass(frozen=True)
class ImagePrompt:
    image: Path
    question: str


@dataclass(frozen=True)
class EvalSet:
    texts: tuple[str, ...]
    images: tuple[ImagePrompt, ...]
    # Speed: one longer text for prefill, a fixed number of decoded tokens.
    speed_text: str
    decode_tokens: int


def build_evalset(folder: str | Path, *, n_texts: int | None = None, n_images: int | None = None,
                  decode_tokens: int = 32) -> EvalSet:
    """Write the images into `folder` (idempotent) and return the evaluation set."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prompts = []
    for stem, bg, shapes, question in _SHAPES[:n_images]:
        path = folder / f"{stem}.png"
        if not path.exists():
            tmp = path.with_suffix(".png.partial")
            shapes_image(bg, shapes, IMAGE_SIDE).save(tmp, format="PNG")
            tmp.replace(path)
        prompts.append(ImagePrompt(path, question))
    texts = TEXT_PROMPTS[:n_texts]
    return EvalSet(texts, tuple(prompts), speed_text=" ".join(TEXT_PROMPTS), decode_tokens=decode_tokens)
