"""Set search: the smallest set of sites that carries the concept, and whether it is necessary.

- ``greedy``: start empty; add the site that raises the joint effect most (all candidates as rows of
  one batched sweep per step) until the joint effect reaches ``tau`` (1 = the donor's score) or no
  site helps.
- ``window`` (LocoGen): every window of ``size`` consecutive sites (execution order), patched jointly;
  the best window wins.

For the found set, ``necessity`` = 1 - effect of patching every *other* site: 1 means nothing
transfers without the set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import stats
from ..sites import Site
from .sweep import Row, Scores

Evaluate = Callable[[Sequence[Row]], Scores]


def _effects(scores: Scores) -> np.ndarray:
    return stats.effects(scores.base, scores.donor, scores.rows)


def necessity(evaluate: Evaluate, sites: Sequence[Site], chosen: Sequence[str]) -> float:
    rest = tuple(s.name for s in sites if s.name not in chosen)
    if not rest:
        return float("nan")
    return float(1 - _effects(evaluate([Row(rest)]))[0])


def greedy(evaluate: Evaluate, sites: Sequence[Site], tau: float = 0.9, max_size: int = 8) -> dict[str, Any]:
    """Greedy forward selection (see the module docstring)."""
    order = {s.name: s.index for s in sites}
    chosen: list[str] = []
    joint, history = 0.0, []
    while joint < tau and len(chosen) < min(max_size, len(sites)):
        candidates = [s.name for s in sites if s.name not in chosen]
        rows = [Row(tuple(sorted([*chosen, c], key=order.get))) for c in candidates]
        eff = _effects(evaluate(rows))
        if not np.isfinite(eff).any():
            break
        best = int(np.nanargmax(eff))
        if chosen and eff[best] <= joint + 1e-6:
            break  # no site raises the joint effect any further
        chosen.append(candidates[best])
        joint = float(eff[best])
        history.append({"added": candidates[best], "joint_effect": joint})
    chosen.sort(key=order.get)
    return {"kind": "greedy", "tau": tau, "sites": chosen, "joint_effect": joint, "steps": history,
            "necessity": necessity(evaluate, sites, chosen)}


def windows(evaluate: Evaluate, sites: Sequence[Site], size: int = 3) -> dict[str, Any]:
    """Best window of ``size`` consecutive sites (see the module docstring)."""
    size = max(1, min(size, len(sites)))
    spans = [tuple(s.name for s in sites[i:i + size]) for i in range(len(sites) - size + 1)]
    eff = _effects(evaluate([Row(span) for span in spans]))
    best = int(np.nanargmax(eff)) if np.isfinite(eff).any() else 0
    return {"kind": "window", "size": size, "sites": list(spans[best]), "joint_effect": float(eff[best]),
            "windows": [{"start": sites[i].index, "effect": float(e)} for i, e in enumerate(eff)],
            "necessity": necessity(evaluate, sites, spans[best])}
