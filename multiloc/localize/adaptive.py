"""Adaptive sampling (successive halving): spend samples where the answer is still open.

Round 0 scores every site on a few samples; each next round keeps the better half of the sites and
doubles the samples they are scored on, until a handful of candidates is left; those get every
sample. A site dropped early keeps the estimate (and the wider interval) of the samples it had.
The leaders' ranking matches the full sweep's at a fraction of its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import stats
from .sweep import Row, Scores, Unit

Evaluate = Callable[[Sequence[Unit], Sequence[Row]], Scores]


def successive_halving(evaluate: Evaluate, units: Sequence[Unit], rows: Sequence[Row], keep: int = 4,
                       first: int | None = None, n_boot: int = 1000) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(effects, CIs, report) for ``rows``; see the module docstring."""
    n_units, n_rows = len(units), len(rows)
    first = first or max(1, n_units // 4)
    alive = list(range(n_rows))
    seen = np.zeros(n_rows, dtype=int)  # samples each row was scored on
    rounds = []
    used = first
    while True:
        scores = evaluate(units[:used], [rows[i] for i in alive])
        eff = stats.effects(scores.base, scores.donor, scores.rows)
        seen[alive] = used
        rounds.append({"samples": used, "sites": len(alive)})
        if used >= n_units or len(alive) <= keep:
            if used < n_units:  # the survivors get every sample
                used = n_units
                continue
            break
        order = np.argsort(-np.nan_to_num(eff, nan=-np.inf))
        alive = [alive[i] for i in order[:max(keep, (len(alive) + 1) // 2)]]
        used = min(n_units, used * 2)
    effects, cis = np.full(n_rows, np.nan), np.full((n_rows, 2), np.nan)
    for n in sorted(set(seen)):
        idx = [i for i in range(n_rows) if seen[i] == n]
        s = evaluate(units[:n], [rows[i] for i in idx])
        effects[idx] = stats.effects(s.base, s.donor, s.rows)
        cis[idx] = stats.bootstrap_ci(s.base, s.donor, s.rows, n_boot=n_boot)
    full = n_units * n_rows
    spent = int(seen.sum())
    report = {"rounds": rounds, "rows_scored": spent, "rows_full_sweep": full, "rows_saved": full - spent,
              "samples_per_site": {rows[i].key: int(seen[i]) for i in range(n_rows)}}
    return effects, cis, report
