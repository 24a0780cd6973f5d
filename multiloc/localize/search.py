"""Set search: the smallest set of sites that carries the concept, and whether it is necessary.

- ``greedy``: start empty; add the site that raises the joint effect most (all candidates as rows of
  one batched sweep per step) until the joint effect reaches ``tau`` (1 = the donor's score) or no
  site helps.
- ``window`` (LocoGen): every window of ``size`` consecutive sites (execution order), patched jointly;
  the best window wins.
- ``random_sets``: the specificity control: the joint effect of random sets of the same size. A
  localized set is specific when these stay far below its own joint effect.

For the found set, ``necessity`` = 1 - effect of patching every *other* site: 1 means nothing
transfers without the set. Candidates are scan rows, so head-level units (``SITE#hN``) work too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import stats
from .sweep import Row, Scores, join

Evaluate = Callable[[Sequence[Row]], Scores]


def _effects(scores: Scores) -> np.ndarray:
    return stats.effects(scores.base, scores.donor, scores.rows)


def necessity(evaluate: Evaluate, units: Sequence[Row], chosen: Sequence[str]) -> float:
    """1 - the effect of patching every unit not in ``chosen`` (labels); NaN if nothing is left."""
    rest = [u for u in units if u.key not in chosen]
    if not rest:
        return float("nan")
    return float(1 - _effects(evaluate([join(rest)]))[0])


def greedy(evaluate: Evaluate, units: Sequence[Row], tau: float = 0.9, max_size: int = 8) -> dict[str, Any]:
    """Greedy forward selection (see the module docstring)."""
    chosen: list[Row] = []
    joint, history = 0.0, []
    while joint < tau and len(chosen) < min(max_size, len(units)):
        candidates = [u for u in units if u not in chosen]
        eff = _effects(evaluate([join(sorted([*chosen, c], key=units.index)) for c in candidates]))
        if not np.isfinite(eff).any():
            break
        best = int(np.nanargmax(eff))
        if chosen and eff[best] <= joint + 1e-6:
            break  # no site raises the joint effect any further
        chosen.append(candidates[best])
        joint = float(eff[best])
        history.append({"added": candidates[best].key, "joint_effect": joint})
    names = [u.key for u in sorted(chosen, key=units.index)]
    return {"kind": "greedy", "tau": tau, "sites": names, "joint_effect": joint, "steps": history,
            "necessity": necessity(evaluate, units, names)}


def windows(evaluate: Evaluate, units: Sequence[Row], size: int = 3) -> dict[str, Any]:
    """Best window of ``size`` consecutive units (see the module docstring)."""
    size = max(1, min(size, len(units)))
    spans = [units[i:i + size] for i in range(len(units) - size + 1)]
    eff = _effects(evaluate([join(span) for span in spans]))
    best = int(np.nanargmax(eff)) if np.isfinite(eff).any() else 0
    names = [u.key for u in spans[best]]
    return {"kind": "window", "size": size, "sites": names, "joint_effect": float(eff[best]),
            "windows": [{"start": span[0].index, "effect": float(e)} for span, e in zip(spans, eff)],
            "necessity": necessity(evaluate, units, names)}


def random_sets(evaluate: Evaluate, units: Sequence[Row], size: int, n: int = 10, seed: int = 0,
                exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Joint effects of ``n`` distinct random sets of ``size`` units (seeded; fewer if fewer exist).

    ``exclude`` (labels, e.g. the localized set) leaves that exact set out of the draw.

    >>> random_sets(run, rows, size=2, n=10)["mean"]
    0.14
    """
    import itertools
    import random

    every = [c for c in itertools.combinations(range(len(units)), size)
             if sorted(units[i].key for i in c) != sorted(exclude)]
    picks = random.Random(seed).sample(every, min(n, len(every)))
    eff = _effects(evaluate([join([units[i] for i in c]) for c in picks])) if picks else np.array([])
    return {"size": size, "sets": [[units[i].key for i in c] for c in picks],
            "effects": [float(e) for e in eff], "mean": float(np.nanmean(eff)) if len(eff) else float("nan"),
            "max": float(np.nanmax(eff)) if len(eff) else float("nan")}
