"""The ``auto`` method: a one-pass ranking first, then patching on only the sites it cannot rule out.

1. Attribution patching (:mod:`multiloc.localize.attribution`) estimates every site's patch effect
   from one forward and backward pass per sample.
2. The candidates are the sites whose estimate reaches ``keep`` x the top estimate (at least the top
   ``least``): the others are ruled out. A first-order estimate under a surrogate score can misorder
   close sites, so the cut is generous.
3. The candidates are patched (the batched sweep, with the concept's own scorer): their effects,
   intervals and the selection are causal, measured ones. Ruled-out sites get no effect (NaN); their
   estimates are in the report.

The report (``result.extra["auto"]``) says which sites patching confirmed and what the sweep cost
against the full sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import stats
from .attribution import attribution_scores
from .sweep import Row, Scores, Unit

KEEP, LEAST = 0.25, 3


def candidates(estimates: np.ndarray, keep: float = KEEP, least: int = LEAST) -> list[int]:
    """Indices not ruled out: estimate >= ``keep`` x the top one, or among the top ``least``.

    >>> candidates(np.array([1.0, 0.1, 0.3, 0.05, 0.0]), least=1)
    [0, 2]
    """
    est = np.nan_to_num(np.asarray(estimates, dtype=np.float64), nan=-np.inf)
    order = [int(i) for i in np.argsort(-est)]
    top = est[order[0]] if order else 0.0
    return sorted(i for k, i in enumerate(order) if k < least or (top > 0 and est[i] >= keep * top))


def auto(evaluate: Callable[[Sequence[Unit], Sequence[Row]], Scores], model: Any, units: Sequence[Unit],
         rows: Sequence[Row], *, steps: int, guidance: float, window: Any, n_boot: int = 1000,
         progress: bool = True, keep: float = KEEP, least: int = LEAST,
         ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(effects, CIs, report) for ``rows``: see the module docstring.

    >>> eff, ci, report = auto(partial(evaluate, model, scorer, ...), model, units, rows, steps=4, guidance=7.5)
    >>> report["confirmed"]          # the sites patching measured
    """
    base, donor, patched = attribution_scores(model, units, rows, steps=steps, guidance=guidance,
                                              window=window, progress=progress)
    estimate = stats.effects(base, donor, patched)
    chosen = candidates(estimate, keep, least)
    scores = evaluate(units, [rows[i] for i in chosen])
    eff, ci = np.full(len(rows), np.nan), np.full((len(rows), 2), np.nan)
    eff[chosen] = stats.effects(scores.base, scores.donor, scores.rows)
    ci[chosen] = stats.bootstrap_ci(scores.base, scores.donor, scores.rows, n_boot=n_boot)
    report = {"attribution": {r.key: float(e) for r, e in zip(rows, estimate)},
              "confirmed": [rows[i].key for i in chosen],
              "ruled_out": [r.key for i, r in enumerate(rows) if i not in chosen],
              "rule": f"patched the sites whose attribution estimate is at least {keep:g} x the top one "
                      f"(at least the top {least}); the others are ruled out (effect NaN)",
              "rows_patched": len(units) * len(chosen), "rows_full_sweep": len(units) * len(rows)}
    return eff, ci, report
