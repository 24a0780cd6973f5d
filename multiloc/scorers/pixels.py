"""Exact pixel scorers for the toy shapes world (``toy-shapes``): ``colour`` and ``shape``.

Each pixel of an output is read as its nearest palette colour (black background, six shape colours;
:mod:`multiloc.toy.shapes`), so these scorers need no weights and are exact on drawn images.

- ``colour``: the share of foreground pixels nearest to the target colour (``"blue"``): 1 = the
  whole shape is blue, 0 = none of it (or no shape at all).
- ``shape``: the best intersection-over-union of the foreground with the target shape's mask
  (``"triangle"``, centred, at either size), in [0, 1].

Example::

    get_scorer("colour").score([render("blue", "circle", "small")], ["blue"])     # [1.0]
    get_scorer("shape").score([render("blue", "circle", "small")], ["square"])    # [0.69...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from ..toy import shapes
from . import Scorer


def _check(targets: Sequence[Any], known: Sequence[str], what: str) -> list[str]:
    out = []
    for t in targets:
        word = str(t).strip().lower()
        if word not in known:
            raise UserError(f"the {what} scorer's target must be one of {', '.join(known)}; got {t!r}")
        out.append(word)
    return out


class ColourScorer(Scorer):
    """Share of the shape's pixels in the target palette colour (see the module docstring)."""

    name = "colour"
    modality = "image"
    known = shapes.COLOURS  # the targets it reads
    meaning = "share of foreground pixels nearest to the target palette colour"
    flat_hint = "the colour scorer reads the toy palette only (toy-shapes outputs)"

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        words = _check(targets, shapes.COLOURS, "colour")
        return [shapes.colour_shares(o)[w] for o, w in zip(outputs, words)]


class ShapeScorer(Scorer):
    """IoU of the foreground with the target shape's mask (see the module docstring)."""

    name = "shape"
    modality = "image"
    known = shapes.SHAPES
    meaning = "IoU of the foreground with the target shape's mask (best of both sizes)"
    flat_hint = "the shape scorer reads centred toy shapes only (toy-shapes outputs)"

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        words = _check(targets, shapes.SHAPES, "shape")
        return [shapes.shape_scores(o)[w] for o, w in zip(outputs, words)]
