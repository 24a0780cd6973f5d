"""The toy image world: coloured shapes on black, the prompts that name them, exact pixel measures.

Every image is drawn exactly (no anti-aliasing), so each pixel is one palette colour, and a
generated image can be read back by nearest-palette colour and by overlap with the shape masks.
Six colours x three shapes x two sizes make 36 prompts ("a small red circle"); :data:`HELD_OUT`
keeps six of them out of training, each colour and each shape at least once, so the trained model's
scorer accuracy on them measures how it composes what it learnt rather than what it memorized.

Example::

    img = render("red", "circle", "large")          # (16, 16, 3) floats in [0, 1]
    colour_shares(img)["red"]                       # 1.0: every foreground pixel is red
    best_shape(img)                                 # "circle"
"""

from __future__ import annotations

import numpy as np

from . import split as split_combos

SIZE_PX = 16
BACKGROUND = (0, 0, 0)
# Far apart in RGB, so the nearest palette colour of a generated pixel is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 230, 30),
    "magenta": (230, 40, 220),
    "cyan": (30, 220, 230),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
HALF_WIDTH = {"small": 4, "large": 7}  # pixels from the centre to the shape's edge

HELD_OUT = (
    ("red", "triangle", "small"),
    ("green", "circle", "large"),
    ("blue", "square", "small"),
    ("yellow", "triangle", "large"),
    ("magenta", "circle", "small"),
    ("cyan", "square", "large"),
)


def prompt(colour: str, shape: str, size: str) -> str:
    """The prompt that names one image: ``"a small red circle"``."""
    return f"a {size} {colour} {shape}"


def combos(split: str = "all") -> list[tuple[str, str, str]]:
    """(colour, shape, size) triples: ``"train"``, ``"held-out"`` or ``"all"``."""
    return split_combos([(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES], HELD_OUT, split)


def vocabulary() -> list[str]:
    """Every word a toy prompt uses (the toy tokenizer's vocabulary)."""
    return ["a", *SIZES, *COLOURS, *SHAPES]


def mask(shape: str, size: str, px: int = SIZE_PX) -> np.ndarray:
    """The boolean (px, px) mask of a centred shape."""
    r = HALF_WIDTH[size] * px / SIZE_PX
    yy, xx = np.mgrid[0:px, 0:px] + 0.5 - px / 2  # pixel centres, origin at the image centre
    if shape == "circle":
        return xx ** 2 + yy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(xx) <= r * 0.85) & (np.abs(yy) <= r * 0.85)  # same area as a circle, about
    if shape == "triangle":  # apex up, base at the bottom
        return (yy <= r * 0.8) & (yy >= -r) & (np.abs(xx) <= (yy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def render(colour: str, shape: str, size: str, px: int = SIZE_PX) -> np.ndarray:
    """One image, (px, px, 3) floats in [0, 1]: the shape in its palette colour on black."""
    img = np.zeros((px, px, 3), dtype=np.float32) + np.array(BACKGROUND, dtype=np.float32) / 255
    img[mask(shape, size, px)] = np.array(PALETTE[colour], dtype=np.float32) / 255
    return img


def _as_float(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    return a / 255 if a.max() > 1.5 else a


def nearest(image: np.ndarray) -> np.ndarray:
    """Per pixel, the index of the nearest palette entry: 0 = background, 1.. = :data:`COLOURS`."""
    table = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32) / 255
    a = _as_float(image)[..., :3]
    return np.argmin(((a[..., None, :] - table) ** 2).sum(-1), axis=-1)


def colour_shares(image: np.ndarray) -> dict[str, float]:
    """The share of foreground pixels nearest to each palette colour (all 0 for a blank image)."""
    idx = nearest(image)
    fg = idx > 0
    n = int(fg.sum())
    return {c: (float((idx == i + 1).sum()) / n if n else 0.0) for i, c in enumerate(COLOURS)}


def shape_scores(image: np.ndarray) -> dict[str, float]:
    """Per shape, the best intersection-over-union of the foreground with its mask at either size."""
    fg = nearest(image) > 0
    out = {}
    for shape in SHAPES:
        best = 0.0
        for size in SIZES:
            m = mask(shape, size, fg.shape[0])
            union = int((fg | m).sum())
            best = max(best, float((fg & m).sum()) / union if union else 0.0)
        out[shape] = best
    return out


def best_colour(image: np.ndarray) -> str:
    shares = colour_shares(image)
    return max(shares, key=shares.get)


def best_shape(image: np.ndarray) -> str:
    scores = shape_scores(image)
    return max(scores, key=scores.get)
