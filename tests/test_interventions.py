"""Patches on tap outputs: row selection across CFG copies, kinds, windows."""

from __future__ import annotations

import pytest
import torch

from multiloc.interventions import Patch, StepWindow, apply_patch


def _out(copies: int = 2, rows: int = 3, tokens: int = 4, dim: int = 2) -> torch.Tensor:
    return torch.arange(copies * rows * tokens * dim, dtype=torch.float32).view(copies * rows, tokens, dim)


def test_inject_copies_the_source_row_within_each_cfg_copy():
    out = _out()
    new = apply_patch(Patch("s", rows=(2,), source=0), "to_k", out, n_rows=3, tokens=None)
    assert torch.equal(new[2], out[0]) and torch.equal(new[5], out[3])  # uncond from uncond, cond from cond
    assert torch.equal(new[[0, 1, 3, 4]], out[[0, 1, 3, 4]])
    assert not torch.equal(out[2], out[0])  # the input is not modified in place


def test_token_range_limits_the_patch():
    out = _out(copies=1)
    new = apply_patch(Patch("s", rows=(1,), source=0), "to_k", out, n_rows=3, tokens=(0, 2))
    assert torch.equal(new[1, :2], out[0, :2]) and torch.equal(new[1, 2:], out[1, 2:])


@pytest.mark.parametrize("kind, value, expect", [
    ("ablate", None, lambda o: torch.zeros_like(o[1])),
    ("scale", 0.5, lambda o: o[1] * 0.5),
    ("set", {"to_k": torch.ones(4, 2)}, lambda o: torch.ones(4, 2)),
    ("add", {"to_k": torch.ones(2)}, lambda o: o[1] + 1),
])
def test_other_kinds(kind, value, expect):
    out = _out(copies=1)
    new = apply_patch(Patch("s", rows=(1,), kind=kind, value=value), "to_k", out, n_rows=3, tokens=None)
    assert torch.allclose(new[1], expect(out))
    assert torch.equal(new[0], out[0]) and torch.equal(new[2], out[2])


def test_set_with_per_copy_values():
    out = _out(copies=2)
    value = torch.stack([torch.zeros(4, 2), torch.ones(4, 2)])  # [uncond, cond]
    new = apply_patch(Patch("s", rows=(1,), kind="set", value={"to_k": value}), "to_k", out, 3, None)
    assert torch.equal(new[1], torch.zeros(4, 2)) and torch.equal(new[4], torch.ones(4, 2))


def test_rows_must_divide_the_batch():
    with pytest.raises(RuntimeError, match="multiple"):
        apply_patch(Patch("s", rows=(1,), source=0), "to_k", _out(copies=1, rows=5), n_rows=3, tokens=None)


def test_patch_validation():
    with pytest.raises(ValueError, match="source"):
        Patch("s", rows=(1,))
    with pytest.raises(ValueError, match="source row"):
        Patch("s", rows=(0,), source=0)
    with pytest.raises(ValueError, match="unknown patch kind"):
        Patch("s", rows=(1,), kind="swap")


def test_step_window():
    w = StepWindow.parse("2:4")
    assert [s in w for s in range(6)] == [False, False, True, True, False, False]
    assert 100 in StepWindow.parse("3:") and 0 not in StepWindow.parse("3:")
    assert StepWindow.parse(None) == StepWindow() and 0 in StepWindow()
    for bad in ("4:2", "x", "-1:3"):
        with pytest.raises(ValueError):
            StepWindow.parse(bad)
