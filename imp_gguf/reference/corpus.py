"""Deterministic text for training the fixtures' tokenizers (no downloads)."""

from __future__ import annotations

import random

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
POSITIONS = ["left", "right", "top", "bottom", "centre", "middle"]
NUMBERS = ["one", "two", "three", "four", "five", "zero"]

BASE_TEXT = """The quick brown fox jumps over the lazy dog. A chat between a curious user and an artificial
intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.
What is in the image? Describe the picture. How many shapes are there? What colour is the background?
Where is the shape? It is on the left. There are 3 circles and 12 squares, 2024 items, 3.14159 and 42.
Hello world! It's a nice day; isn't it? I'm here, we're there, they've gone, she'll come, he'd say.
    Indented code: def f(x): return x * 2  # comment
Tabs\tand  double  spaces, newlines

and more. 你好世界 こんにちは 안녕하세요 Привет мир émoji 🙂 🚀 café naïve façade.
"""


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = BASE_TEXT.splitlines()
    for _ in range(n_lines):
        c, s, p, n = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(POSITIONS), rng.choice(NUMBERS)
        lines.append(f"There is a {c} {s} on the {p}. The background is {rng.choice(COLOURS)}. "
                     f"I can see {n} {s}s. Answer: {c}. Number {rng.randint(0, 999)}.")
    return lines
