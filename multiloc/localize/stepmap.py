"""When a site matters: its effect when patched at one range of denoising steps only.

The steps are cut into ``buckets`` equal windows; for each of the given sites and each window, one
row patches that site at those steps alone. The map (sites x windows) goes into ``result.json`` and
``step_map.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import stats
from ..interventions import StepWindow
from .sweep import Row, Scores

Evaluate = Callable[[Sequence[Row]], Scores]


def step_windows(steps: int, buckets: int) -> list[StepWindow]:
    edges = np.linspace(0, steps, min(buckets, steps) + 1).round().astype(int)
    return [StepWindow(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def step_map(evaluate: Evaluate, units: Sequence[Row], steps: int, buckets: int) -> dict[str, Any]:
    """Effects of each unit patched at each window of steps alone: a (units x windows) map."""
    wins = step_windows(steps, buckets)
    scores = evaluate([u.at(w) for u in units for w in wins])
    eff = stats.effects(scores.base, scores.donor, scores.rows).reshape(len(units), len(wins))
    return {"sites": [u.key for u in units], "windows": [[w.start, w.end] for w in wins], "effects": eff.tolist()}
