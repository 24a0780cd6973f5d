"""Effects, bootstrap confidence intervals and the selection rule.

Effect of a site = mean(s(patched) - s(base)) / mean(s(donor) - s(base)) over samples (prompt
pairs x seeds): the share of the concept, as the scorer sees it, that patching the site moves.
A ratio of means rather than a mean of ratios, so one sample whose donor barely differs from its
base cannot blow the average up. 0 = no effect, 1 = the site alone carries the whole concept.

Example::

    eff = effects(base, donor, patched)            # base, donor: (U,), patched: (U, N)
    lo, hi = bootstrap_ci(base, donor, patched).T
    chosen = select(eff)
"""

from __future__ import annotations

import warnings

import numpy as np

SELECTION_RULE = ("sites whose effect is at least {rel:g} x the top effect and at least {min_effect:g}, "
                  "most effective first")


def effects(base: np.ndarray, donor: np.ndarray, patched: np.ndarray) -> np.ndarray:
    """Per-site effect (see the module docstring); NaN where donor and base score alike."""
    base, donor, patched = (np.asarray(a, dtype=np.float64) for a in (base, donor, patched))
    denom = np.mean(donor - base)
    if not np.isfinite(denom) or abs(denom) < 1e-12:
        return np.full(patched.shape[1], np.nan)
    return np.mean(patched - base[:, None], axis=0) / denom


def bootstrap_ci(base: np.ndarray, donor: np.ndarray, patched: np.ndarray, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap over samples: an (N, 2) array of [low, high] per site."""
    base, donor, patched = (np.asarray(a, dtype=np.float64) for a in (base, donor, patched))
    n = base.shape[0]
    if n < 2:
        e = effects(base, donor, patched)
        return np.stack([e, e], axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    d = (donor - base)[idx].mean(axis=1)  # (B,)
    p = (patched - base[:, None])[idx].mean(axis=1)  # (B, N)
    tail = (1 - level) / 2 * 100
    # Resamples where donor and base score alike (likely with sparse scores such as OCR's) have no
    # effect and are left out; when all are (a scorer that sees nothing), the interval is NaN, which
    # the scan reports with a warning of its own.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = p / d[:, None]
        boot[~np.isfinite(boot)] = np.nan  # a resample with d = 0 has no effect to measure
        return np.nanpercentile(boot, [tail, 100 - tail], axis=0).T


def select(eff: np.ndarray, rel: float = 0.5, min_effect: float = 0.1, ci: np.ndarray | None = None) -> list[int]:
    """Indices of the localized set, by :data:`SELECTION_RULE`; with ``ci`` ((N, 2) intervals) only
    sites whose interval lies above zero (:data:`CI_RULE`): a site noise could explain is not a finding.

    >>> select(np.array([0.9, 0.6, 0.2]), ci=np.array([[0.8, 1.0], [-0.1, 1.2], [0.1, 0.3]]))
    [0]
    """
    eff = np.asarray(eff, dtype=np.float64)
    if not np.isfinite(eff).any():
        return []
    top = np.nanmax(eff)
    keep = [i for i in np.argsort(-np.nan_to_num(eff, nan=-np.inf))
            if np.isfinite(eff[i]) and eff[i] >= rel * top and eff[i] >= min_effect]
    if ci is not None:
        low = np.asarray(ci, dtype=np.float64)[:, 0]
        keep = [i for i in keep if not low[i] <= 0]  # a NaN bound (too few samples) does not veto
    return [int(i) for i in keep]


CI_RULE = "and whose 95% interval lies above zero"


def undecided(eff: np.ndarray, ci: np.ndarray, samples: int, rel: float = 0.5,
              min_effect: float = 0.1) -> dict[int, int]:
    """Sites that pass the point rule of :func:`select` but whose interval reaches zero, each with
    about how many samples in all would bring its lower bound above zero (the interval narrows as
    1/sqrt(samples): ``samples * (half width / effect)^2``, rounded up).

    >>> undecided(np.array([1.0, 0.8]), np.array([[0.5, 1.5], [-0.4, 2.0]]), samples=3)
    {1: 7}
    """
    eff, ci = np.asarray(eff, dtype=np.float64), np.asarray(ci, dtype=np.float64)
    point = select(eff, rel, min_effect)
    out = {}
    for i in point:
        if ci[i, 0] <= 0:
            half = (ci[i, 1] - ci[i, 0]) / 2
            out[i] = int(np.ceil(samples * (half / eff[i]) ** 2)) if eff[i] > 0 else -1
    return out


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap of the column means of (samples, N) ``values``: an (N, 2) array."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        m = values.mean(axis=0)
        return np.stack([m, m], axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    boot = values[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return np.percentile(boot, [tail, 100 - tail], axis=0).T
