"""Effects, bootstrap CIs and the selection rule, on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest

from multiloc import stats


def test_effects_known_answer():
    base = np.array([0.0, 1.0])
    donor = np.array([2.0, 3.0])
    patched = np.array([[2.0, 0.0, 1.0], [3.0, 1.0, 2.0]])
    np.testing.assert_allclose(stats.effects(base, donor, patched), [1.0, 0.0, 0.5])


def test_effects_nan_when_donor_equals_base():
    assert np.isnan(stats.effects(np.ones(3), np.ones(3), np.ones((3, 2)))).all()


def test_ci_contains_effect_and_degenerates_with_one_sample():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.1, 20)
    donor = base + 1 + rng.normal(0, 0.1, 20)
    patched = base[:, None] + np.array([0.8, 0.1]) + rng.normal(0, 0.1, (20, 2))
    eff = stats.effects(base, donor, patched)
    ci = stats.bootstrap_ci(base, donor, patched)
    assert (ci[:, 0] <= eff).all() and (eff <= ci[:, 1]).all()
    one = stats.bootstrap_ci(base[:1], donor[:1], patched[:1])
    np.testing.assert_allclose(one[:, 0], one[:, 1])


def test_ci_shrinks_as_samples_grow():
    """Property: more samples, narrower intervals (averaged over draws to be robust)."""
    def width(n: int, seed: int) -> float:
        rng = np.random.default_rng(seed)
        base = rng.normal(0, 0.2, n)
        donor = base + 1 + rng.normal(0, 0.2, n)
        patched = base[:, None] + 0.5 + rng.normal(0, 0.3, (n, 1))
        lo, hi = stats.bootstrap_ci(base, donor, patched, n_boot=400)[0]
        return hi - lo
    small = np.mean([width(4, s) for s in range(10)])
    large = np.mean([width(64, s) for s in range(10)])
    assert large < small / 2


@pytest.mark.parametrize("eff, expect", [
    ([0.9, 0.05, 0.5, 0.4], [0, 2]),          # at least half the top
    ([0.08, 0.05], []),                        # nothing reaches 0.1
    ([np.nan, 0.3, 0.2], [1, 2]),
    ([np.nan, np.nan], []),
])
def test_selection_rule(eff, expect):
    assert stats.select(np.array(eff)) == expect
