"""The patch scan on tiny SD-, SDXL- and IF-style pipelines: known answers, batching, restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import multiloc
from multiloc.localize.sweep import chunks

from .conftest import Exploding, plant


def test_planted_site_ranks_first(tiny_image, colour):
    planted = tiny_image.sites[len(tiny_image.sites) // 2].name
    plant(tiny_image, {planted})
    result = multiloc.scan(tiny_image, colour, seeds=2, steps=4, batch_size=4, progress=False)
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0, abs=1e-4)
    others = [e for name, e in result.effects.items() if name != planted]
    assert max(abs(e) for e in others) < 1e-4
    assert result.selected == [planted]


def test_batched_equals_sequential(tiny_image, colour):
    batched = multiloc.scan(tiny_image, colour, seeds=1, steps=3, batch_size=len(tiny_image.sites) + 2,
                            progress=False)
    sequential = multiloc.scan(tiny_image, colour, seeds=1, steps=3, batch_size=2, progress=False)
    for name, effect in batched.effects.items():
        assert effect == pytest.approx(sequential.effects[name], abs=1e-5)
    # and the effects are not all trivially equal (random weights: every site matters somewhat)
    assert np.ptp(list(batched.effects.values())) > 1e-3


def test_chunk_layout_covers_every_site_once():
    layout = chunks(7, 3)
    assert layout[0] == (True, range(0, 1))  # donor, base, one site
    covered = [i for _, r in layout for i in r]
    assert covered == list(range(7))
    assert [first for first, _ in layout].count(True) == 1
    assert chunks(0, 4) == [(True, range(0, 0))]


def _snapshot(model: multiloc.Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.denoiser.state_dict().items()}


def _hook_count(model: multiloc.Model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.denoiser.modules())


def test_scan_leaves_model_unchanged(tiny_image, colour):
    before = _snapshot(tiny_image)
    out_before = tiny_image.generate(["a red cube"], steps=3)[0]
    multiloc.scan(tiny_image, colour, seeds=1, steps=3, batch_size=3, progress=False)
    after = _snapshot(tiny_image)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _hook_count(tiny_image) == 0
    np.testing.assert_array_equal(tiny_image.generate(["a red cube"], steps=3)[0], out_before)


def test_scan_that_raises_leaves_model_unchanged(tiny_sd, colour):
    before = _snapshot(tiny_sd)
    out_before = tiny_sd.generate(["a red cube"], steps=3)[0]
    with pytest.raises(RuntimeError, match="boom"):
        multiloc.scan(tiny_sd, colour, seeds=1, steps=3, batch_size=3, scorer=Exploding(2), progress=False)
    assert _hook_count(tiny_sd) == 0
    assert all(torch.equal(before[k], v) for k, v in tiny_sd.denoiser.state_dict().items())
    np.testing.assert_array_equal(tiny_sd.generate(["a red cube"], steps=3)[0], out_before)


def test_exception_inside_generation_removes_hooks(tiny_sd):
    """Hooks go also when generation dies midway (here: a patch whose value lacks a tap)."""
    bad = [multiloc.Patch(tiny_sd.sites[0].name, rows=(1,), kind="set", value={})]
    with pytest.raises(KeyError):
        tiny_sd.generate(["a", "b"], bad, steps=2)
    assert _hook_count(tiny_sd) == 0
    with pytest.raises(ValueError, match="outside the batch"):
        tiny_sd.generate(["a", "b"], [multiloc.Patch(tiny_sd.sites[0].name, rows=(5,), source=0)], steps=2)
    assert _hook_count(tiny_sd) == 0


def test_interrupted_scan_resumes(tmp_path, tiny_sd, colour):
    full = multiloc.scan(tiny_sd, colour, seeds=1, steps=3, batch_size=3, progress=False, samples=False)
    with pytest.raises(RuntimeError):
        multiloc.scan(tiny_sd, colour, seeds=1, steps=3, batch_size=3, scorer=Exploding(4),
                      out=tmp_path, progress=False, samples=False)
    assert (tmp_path / ".scan-state.json").exists() and not (tmp_path / "result.json").exists()
    resumed = multiloc.scan(tiny_sd, colour, seeds=1, steps=3, batch_size=3, out=tmp_path,
                            progress=False, samples=False)
    assert resumed.extra["resumed_rows"] >= 5  # three chunks' rows were kept
    for name, effect in full.effects.items():
        assert resumed.effects[name] == pytest.approx(effect, abs=1e-6)
    assert not (tmp_path / ".scan-state.json").exists()
    assert (tmp_path / "result.json").exists()


def test_step_window_limits_patching(tiny_sd, colour):
    """A window past the last step patches nothing: every effect is exactly 0."""
    result = multiloc.scan(tiny_sd, colour, seeds=1, steps=3, step_window="3:", progress=False)
    assert all(abs(e) < 1e-7 for e in result.effects.values())
    early = multiloc.scan(tiny_sd, colour, seeds=1, steps=3, step_window="0:1", progress=False)
    assert any(abs(e) > 1e-4 for e in early.effects.values())


def test_site_subset(tiny_sd, colour):
    result = multiloc.scan(tiny_sd, colour, seeds=1, steps=2, sites="0-1", progress=False)
    assert [s.index for s in result.sites] == [0, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"batch_size": 1}, "batch size must be at least 2"),
    ({"seeds": 0}, "seeds must be at least 1"),
    ({"method": "magic"}, "unknown method"),
    ({"sites": "99"}, "no site matches"),
    ({"step_window": "5:2"}, "empty"),
])
def test_bad_scan_arguments(tiny_sd, colour, kwargs, message):
    with pytest.raises(multiloc.UserError, match=message):
        multiloc.scan(tiny_sd, colour, progress=False, **kwargs)
