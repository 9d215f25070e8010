"""Deterministic synthetic VQA data for the tiny Imp: coloured shapes on coloured backgrounds.

Every example is an image, a question and a short answer from a small closed set, so accuracy is
an exact match after `normalise`. Images are drawn at RENDER px (2x supersampled, so edges are
smooth after the squash resize) and shrunk to the encoder's size with exactly the resize that
`imp_gguf.images.load_image` applies: training, the PyTorch check and llama.cpp see the same pixels.

Streams are keyed by strings (`random.Random("train-0-17")`), so training and held-out data come
from disjoint, reproducible generators whatever the Python hash seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

from imp_gguf.synthetic_images import draw_shape

RENDER = 112  # drawing size; the model sees IMAGE_SIZE after a bicubic squash resize
IMAGE_SIZE = 56

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 75, 225),
    "yellow": (240, 220, 35),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 4 x 4 patches, 16 image tokens
# Each shape sits inside one encoder patch (so every object is one image token, as a shape
# filling a patch would be for a real SigLIP); the position words name regions of the 4x4 grid.
REGIONS: dict[str, tuple[tuple[int, int], ...]] = {  # (row, col) cells
    "left": ((1, 0), (2, 0)),
    "right": ((1, 3), (2, 3)),
    "top": ((0, 1), (0, 2)),
    "bottom": ((3, 1), (3, 2)),
    "centre": ((1, 1), (1, 2), (2, 1), (2, 2)),
}
POSITIONS = tuple(REGIONS)
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "centre": "in the centre"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
KINDS = ("count", "background", "colour", "shape", "position")


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    position: str
    cell: tuple[int, int]  # (row, col) of the patch holding the shape
    size: float  # side / diameter as a fraction of a patch
    dx: float  # offset of the centre from the patch centre, as a fraction of a patch
    dy: float


@dataclass(frozen=True)
class Scene:
    background: str
    items: tuple[Item, ...]
    tint: tuple[int, ...]  # small per-channel colour jitter for background then each item


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RENDER x RENDER RGB
    question: str
    answer: str
    kind: str
    scene: Scene | None = None


def normalise(text: str) -> str:
    """Lowercase, punctuation stripped, whitespace collapsed: what exact match compares."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def random_scene(rng: random.Random, n: int | None = None) -> Scene:
    n = rng.randint(1, 3) if n is None else n
    shapes = rng.sample(SHAPES, n)  # distinct shapes, colours and places
    colours = rng.sample(list(COLOURS), n + 1)
    positions = rng.sample(POSITIONS, n)
    items = []
    for s, c, p in zip(shapes, colours[1:], positions):
        size = rng.uniform(0.7, 0.85)
        slack = (0.92 - size) / 2  # keep the shape inside its patch
        items.append(Item(s, c, p, rng.choice(REGIONS[p]), size, rng.uniform(-slack, slack), rng.uniform(-slack, slack)))
    tint = tuple(rng.randint(-15, 15) for _ in range(3 * (n + 1)))
    return Scene(colours[0], tuple(items), tint)


def _rgb(name: str, tint: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(max(0, min(255, v + d)) for v, d in zip(COLOURS[name], tint))  # type: ignore[return-value]


def render(scene: Scene, size: int = RENDER) -> Image.Image:
    img = Image.new("RGB", (size, size), _rgb(scene.background, scene.tint[0:3]))
    draw = ImageDraw.Draw(img)
    for k, it in enumerate(scene.items):
        cell = size / GRID
        cx, cy = (it.cell[1] + 0.5 + it.dx) * cell, (it.cell[0] + 0.5 + it.dy) * cell
        r = it.size * cell / 2
        fill = _rgb(it.colour, scene.tint[3 * (k + 1):3 * (k + 2)])
        s = r * 0.9 if it.shape == "square" else r  # a square of the same "size" looks bigger: even them out
        draw_shape(draw, it.shape, [cx - s, cy - s, cx + s, cy + (0.8 * r if it.shape == "triangle" else s)], fill)
    return img


def to_model_size(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Exactly what imp_gguf.images.load_image does to an in-memory image."""
    rgb = img.convert("RGB")
    return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.BICUBIC)


def ask(scene: Scene, rng: random.Random, kind: str) -> tuple[str, str, str]:
    """(question, answer, kind) about the scene. With several shapes, a shape is named by where it
    is ("the shape on the left"); "where" questions are asked about single-shape scenes."""
    n = len(scene.items)
    it = rng.choice(scene.items)
    if kind == "count":
        ans = "There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."
        return "How many shapes are there?", ans, kind
    if kind == "background":
        return "What colour is the background?", f"The background is {scene.background}.", kind
    if kind == "colour":
        if n == 1:
            return "What colour is the shape?", f"The shape is {it.colour}.", kind
        return f"What colour is the shape {WHERE[it.position]}?", f"It is {it.colour}.", kind
    if kind == "shape":
        if n == 1:
            return "What shape is it?", f"It is a {it.shape}.", kind
        return f"What shape is {WHERE[it.position]}?", f"It is a {it.shape}.", kind
    if kind == "position":
        if n != 1:
            raise ValueError("'where' questions are asked about single-shape scenes")
        return "Where is the shape?", f"It is {WHERE[it.position]}.", kind
    raise KeyError(kind)


def example(rng: random.Random, kind: str) -> Example:
    scene = random_scene(rng, 1 if kind == "position" else None)
    q, a, k = ask(scene, rng, kind)
    return Example(render(scene), q, a, k, scene)


TRAIN_SLOTS = ("colour", "shape", "position|colour|shape", "count|background")
TRAIN_SHAPE_COUNTS = (1, 2, 2, 3, 3)  # training favours the harder multi-shape scenes


def train_batch(seed: int, step: int, n_images: int) -> list[list[Example]]:
    """n_images scenes, each asked one question per slot of TRAIN_SLOTS: a random kind of the slot
    ("where" only about single-shape scenes, which it then always is)."""
    rng = random.Random(f"imp-tiny-train-{seed}-{step}")
    out = []
    for _ in range(n_images):
        scene = random_scene(rng, rng.choice(TRAIN_SHAPE_COUNTS))
        image = render(scene)
        group = []
        for slot in TRAIN_SLOTS:
            kinds = slot.split("|")
            if kinds[0] == "position":
                kind = "position" if len(scene.items) == 1 else rng.choice(kinds[1:])
            else:
                kind = rng.choice(kinds)
            group.append(Example(image, *ask(scene, rng, kind), scene=scene))
        out.append(group)
    return out


def vision_batch(seed: int, step: int, n_images: int) -> list[tuple[Image.Image, Scene]]:
    """Scenes for the vision tower's warm-up (a stream of its own)."""
    rng = random.Random(f"imp-tiny-vision-{seed}-{step}")
    return [(render(sc), sc) for sc in (random_scene(rng) for _ in range(n_images))]


def scene_targets(scene: Scene) -> list[int]:
    """Whole-scene labels for the vision warm-up: background colour, count - 1, then for each
    position word the shape there and its colour (0 = none, else 1 + id)."""
    names = list(COLOURS)
    shape_at = [0] * len(POSITIONS)
    colour_at = [0] * len(POSITIONS)
    for it in scene.items:
        k = POSITIONS.index(it.position)
        shape_at[k] = 1 + SHAPES.index(it.shape)
        colour_at[k] = 1 + names.index(it.colour)
    return [names.index(scene.background), len(scene.items) - 1] + shape_at + colour_at


# Number of classes of each scene_targets entry.
SCENE_CLASSES = [len(COLOURS), 3] + [len(SHAPES) + 1] * len(POSITIONS) + [len(COLOURS) + 1] * len(POSITIONS)


def patch_targets(scene: Scene) -> tuple[list[int], list[int]]:
    """Per encoder patch (row-major): shape id (0 = none, 1.. = SHAPES) and colour id (of the shape
    in it, else of the background) -- dense labels for the vision warm-up."""
    names = list(COLOURS)
    shapes = [0] * (GRID * GRID)
    colours = [names.index(scene.background)] * (GRID * GRID)
    for it in scene.items:
        k = it.cell[0] * GRID + it.cell[1]
        shapes[k] = SHAPES.index(it.shape) + 1
        colours[k] = names.index(it.colour)
    return shapes, colours


def heldout_examples(n: int, seed: int) -> list[Example]:
    """Balanced over question kinds; a generator stream training never uses."""
    rng = random.Random(f"imp-tiny-heldout-{seed}")
    return [example(rng, KINDS[i % len(KINDS)]) for i in range(n)]


def all_answers() -> list[str]:
    """The closed answer set (for the tokenizer corpus and sanity checks)."""
    out = ["There is one shape."] + [f"There are {NUMBERS[n]} shapes." for n in (2, 3)]
    out += [f"The background is {c}." for c in COLOURS]
    out += [f"The shape is {c}." for c in COLOURS]
    out += [f"It is {c}." for c in COLOURS]
    out += [f"It is a {s}." for s in SHAPES]
    out += [f"It is {w}." for w in WHERE.values()]
    return out


def all_questions() -> list[str]:
    out = ["How many shapes are there?", "What colour is the background?", "What colour is the shape?",
           "What shape is it?", "Where is the shape?"]
    out += [f"What colour is the shape {w}?" for w in WHERE.values()]
    out += [f"What shape is {w}?" for w in WHERE.values()]
    return out


def key_word(kind: str, answer: str) -> str:
    """The word a correct answer must contain (what a llama.cpp-style check looks for)."""
    words = normalise(answer).split()
    if kind == "count":
        return next(w for w in words if w in NUMBERS.values())
    if kind in ("background", "colour"):
        return next(w for w in words if w in COLOURS)
    if kind == "shape":
        return next(w for w in words if w in SHAPES)
    return next(w for w in words if w in POSITIONS)


def demo_examples(n_images: int = 5) -> list[tuple[Scene, Image.Image, list[tuple[str, str, str]]]]:
    """Scenes for the bundled demo images (their own stream), each with two questions of
    different kinds; together they cover every kind."""
    rng = random.Random("imp-tiny-demo")
    out = []
    for i in range(n_images):
        kinds = [KINDS[(i + j) % len(KINDS)] for j in (0, 2)]
        scene = random_scene(rng, 1 if "position" in kinds else None)
        out.append((scene, render(scene), [ask(scene, rng, k) for k in kinds]))
    return out
