"""Attribution patching, ``--method auto`` and the interval-aware selection (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

import multiloc
from multiloc import stats
from multiloc.interventions import StepWindow
from multiloc.localize.attribution import attribution_scores
from multiloc.localize.auto import candidates
from multiloc.localize.patch import single_site_rows
from multiloc.localize.sweep import Unit, evaluate, join
from multiloc.results import ScanState

from .conftest import plant

CONCEPT = multiloc.Concept(name="colour", scorer="reference",
                           pairs=[("a red cube", "a blue cube"), ("a green ball", "a yellow ball")])
UNITS = [Unit("0/0", 0, "a red cube", "a blue cube")]


@pytest.mark.parametrize("name, sites", [
    ("tiny-sd", None), ("tiny-sdxl", None), ("tiny-if", None), ("tiny-sd3", None),
    ("tiny-flux", None), ("tiny-pixart", None), ("tiny-sana", None), ("tiny-audioldm2", None),
    ("tiny-stable-audio", None), ("tiny-ace-step", None),
])
def test_attribution_ranks_planted_site_first(name, sites, one_thread):
    """Every other site reads constants: its taps do not move, so its estimate is exactly zero."""
    model = multiloc.load(name)
    planted = model.sites[len(model.sites) // 2].name
    plant(model, {planted})
    result = multiloc.scan(model, CONCEPT, method="attribution", seeds=1, steps=2, progress=False)
    assert result.method == "attribution"
    assert result.ranking[0] == planted
    assert result.effects[planted] > 0
    assert max(abs(e) for n, e in result.effects.items() if n != planted) < 1e-6


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd3"])
def test_integrated_gradients_complete_to_the_joint_patch(name, one_thread):
    """Known answer: along the straight path from base to donor taps, the estimates of all sites sum
    to the effect of patching all of them at once (completeness); the plain gradient counts the
    quadratic reference score twice on the near-linear tiny U-Net."""
    model = multiloc.load(name)
    rows = single_site_rows(model.sites)
    g = model.settings["guidance"]
    scores = evaluate(model, multiloc.get_scorer("reference"), UNITS, [join(rows, "all")], steps=3, guidance=g,
                      batch_size=3, window=StepWindow(), state=ScanState(None, {}), progress=False)
    joint = stats.effects(scores.base, scores.donor, scores.rows)[0]
    total = stats.effects(*attribution_scores(model, UNITS, rows, steps=3, guidance=g, points=4,
                                              progress=False)).sum()
    assert total == pytest.approx(joint, rel=0.01, abs=1e-3)
    if name == "tiny-sd":
        plain = stats.effects(*attribution_scores(model, UNITS, rows, steps=3, guidance=g, points=0,
                                                  progress=False)).sum()
        assert plain == pytest.approx(2 * joint, rel=0.05)


def test_head_estimates_add_up_to_the_site(tiny_sd, one_thread):
    site = tiny_sd.sites[0]
    rows = single_site_rows([site], "each") + single_site_rows([site])
    base, _, patched = attribution_scores(tiny_sd, UNITS, rows, steps=2, guidance=7.5, progress=False)
    heads, whole = patched[0, :-1] - base[0], patched[0, -1] - base[0]
    assert heads.sum() == pytest.approx(whole, rel=1e-4)


def test_auto_confirms_by_patching(tiny_sd, one_thread):
    planted = tiny_sd.sites[3].name
    plant(tiny_sd, {planted})
    common = {"seeds": 1, "steps": 2, "progress": False, "batch_size": 9}
    auto = multiloc.scan(tiny_sd, CONCEPT, method="auto", **common)
    sweep = multiloc.scan(tiny_sd, CONCEPT, method="patch", **common)
    report = auto.extra["auto"]
    assert auto.selected == sweep.selected == [planted]
    assert planted in report["confirmed"] and len(report["confirmed"]) == 3
    assert report["rows_patched"] < report["rows_full_sweep"]
    for key in report["confirmed"]:  # the same patch rows: the same effects
        assert auto.effects[key] == pytest.approx(sweep.effects[key], abs=1e-9)
    assert all(np.isnan(auto.effects[k]) for k in report["ruled_out"])


def test_candidates_rule():
    assert candidates(np.array([1.0, 0.1, 0.3, 0.05, 0.0]), least=1) == [0, 2]
    assert candidates(np.array([-1.0, -2.0, np.nan]), least=2) == [0, 1]


def test_selection_needs_the_interval_above_zero():
    eff = np.array([1.37, 1.04, 0.2])
    ci = np.array([[-5.88, 1.37], [-3.89, 1.04], [0.1, 0.3]])
    assert stats.select(eff) == [0, 1]
    assert stats.select(eff, ci=ci) == []
    need = stats.undecided(eff, ci, samples=3)
    # half widths 3.625 and 2.465: 3 * (3.625 / 1.37)^2 = 21.0, 3 * (2.465 / 1.04)^2 = 16.9
    assert need == {0: 22, 1: 17}
    assert stats.select(eff, ci=np.full((3, 2), np.nan)) == [0, 1]  # no interval, no veto


def test_scan_marks_undecided_sites(tiny_sd, one_thread):
    result = multiloc.scan(tiny_sd, CONCEPT, method="attribution", seeds=1, steps=2, progress=False)
    undecided = result.extra["undecided"]
    assert set(result.selected).isdisjoint(undecided)
    assert "interval lies above zero" in result.extra["selection_rule"]
    for u in undecided.values():
        assert u["ci"][0] <= 0 and u["samples_needed"] >= 1
    site = result.sites[0]
    result.extra["undecided"] = {site.name: {"effect": 1.0, "ci": [-1.0, 3.0], "samples_needed": 9}}
    result.selected = [s for s in result.selected if s != site.name]
    table = result.table(len(result.sites))
    assert f"{site.name}  " in table and "about 9 samples in all would settle it" in table
    assert [line for line in table.splitlines() if site.name in line][0].endswith(" ?")


def test_attribution_warns_for_a_non_differentiable_scorer(one_thread):
    model = multiloc.load("toy-shapes")
    result = multiloc.scan(model, "toy-colour", method="attribution", seeds=1, steps=2, progress=False)
    assert "not differentiable" in result.extra["warnings"][0]
