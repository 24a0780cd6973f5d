"""Localization beyond the single-site sweep: contribution, tracing, set search, adaptive, step maps."""

from __future__ import annotations

import pytest
import torch

import multiloc
from multiloc.localize.stepmap import step_windows

from .conftest import plant

CONCEPT = multiloc.Concept(name="colour", scorer="reference",
                           pairs=[("a red cube", "a blue cube"), ("a green ball", "a yellow ball")])


def silence(model: multiloc.Model, keep: set[str]) -> None:
    """``plant``, and also zero the biases of the other sites' value taps: their values are then 0,
    so no attention output at all flows from the text there (contribution's known answer)."""
    plant(model, keep)
    with torch.no_grad():
        for site in model.sites:
            if site.name not in keep:
                for tap in site.values:
                    bias = model.denoiser.get_submodule(site.name).get_submodule(tap.path).bias
                    if bias is not None:
                        bias.zero_()


@pytest.mark.parametrize("name, sites", [
    ("tiny-sd", None), ("tiny-sdxl", None), ("tiny-if", None), ("tiny-sd3", None),
    ("tiny-flux", "transformer_blocks.*"), ("tiny-pixart", None),
])
def test_contribution_ranks_planted_site_first(name, sites):
    model = multiloc.load(name)
    chosen = multiloc.sites.select_sites(model.sites, sites)
    planted = chosen[len(chosen) // 2].name
    silence(model, {planted})
    result = multiloc.scan(model, CONCEPT, method="contribution", seeds=1, steps=3, sites=sites, progress=False)
    assert result.method == "contribution"
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0)
    assert max(e for n, e in result.effects.items() if n != planted) < 1e-6
    assert result.extra["contribution"]["raw"][[s.name for s in chosen].index(planted)] > 0


def test_contribution_reads_only_concept_tokens(tiny_sd):
    """A concept word the prompt lacks is a clear error, not a silent zero."""
    bad = multiloc.Concept(name="x", pairs=[("a red cube", "a cube red")], scorer="reference")
    with pytest.raises(multiloc.UserError, match="no concept tokens"):
        multiloc.scan(tiny_sd, bad, method="contribution", seeds=1, steps=2, progress=False)


def test_contribution_falls_back_without_value_taps():
    model = multiloc.load("tiny-sana")
    result = multiloc.scan(model, CONCEPT, method="contribution", seeds=1, steps=2, progress=False)
    assert result.method == "patch" and "fell back" in result.extra["warnings"][0]


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-if", "tiny-sd3"])
def test_trace_ranks_planted_site_first(name):
    model = multiloc.load(name)
    planted = model.sites[len(model.sites) // 2].name
    plant(model, {planted})
    result = multiloc.scan(model, CONCEPT, method="trace", seeds=1, steps=3, progress=False)
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e) for n, e in result.effects.items() if n != planted) < 1e-4


def test_greedy_search_returns_exactly_the_planted_pair():
    model = multiloc.load("tiny-sdxl")
    pair = {model.sites[1].name, model.sites[5].name}
    plant(model, pair)
    result = multiloc.scan(model, CONCEPT, seeds=1, steps=3, search="greedy", tau=0.99, progress=False)
    found = result.extra["set_search"]
    assert set(found["sites"]) == pair
    assert found["joint_effect"] == pytest.approx(1.0, abs=1e-4)
    assert found["necessity"] == pytest.approx(1.0, abs=1e-4)
    assert len(found["steps"]) == 2


def test_window_search_finds_the_planted_window():
    model = multiloc.load("tiny-sdxl")
    window = [s.name for s in model.sites[3:6]]
    plant(model, set(window))
    result = multiloc.scan(model, CONCEPT, seeds=1, steps=3, search="window", window_size=3, progress=False)
    found = result.extra["set_search"]
    assert found["sites"] == window
    assert found["joint_effect"] == pytest.approx(1.0, abs=1e-4)
    assert found["necessity"] == pytest.approx(1.0, abs=1e-4)
    assert len(found["windows"]) == len(model.sites) - 2


def test_adaptive_ranks_planted_first_with_fewer_rows():
    model = multiloc.load("tiny-sdxl")
    planted = model.sites[6].name
    plant(model, {planted})
    concept = multiloc.Concept(name="colour", scorer="reference", pairs=[
        ("a red cube", "a blue cube"), ("a green ball", "a yellow ball"),
        ("a white cup", "a black cup"), ("a pink hat", "a grey hat")])
    result = multiloc.scan(model, concept, seeds=2, steps=2, adaptive=True, progress=False)
    report = result.extra["adaptive"]
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0, abs=1e-4)
    assert report["rows_full_sweep"] == 8 * len(model.sites)
    assert report["rows_scored"] < report["rows_full_sweep"]
    assert report["samples_per_site"][planted] == 8  # the leader got every sample


def test_step_map_rows_and_windows(tiny_sd):
    planted, other = tiny_sd.sites[2].name, tiny_sd.sites[4].name
    plant(tiny_sd, {planted})
    result = multiloc.scan(tiny_sd, CONCEPT, seeds=1, steps=4, step_map=2, sites="2,4", progress=False)
    m = result.extra["step_map"]
    assert m["windows"] == [[0, 2], [2, 4]]
    assert m["sites"] == [planted]  # the selected set
    assert max(m["effects"][0]) > 0.05
    assert [[w.start, w.end] for w in step_windows(10, 3)] == [[0, 3], [3, 7], [7, 10]]
    assert other not in m["sites"]
