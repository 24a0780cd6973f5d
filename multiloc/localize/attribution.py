"""The ``attribution`` method: attribution patching, every single-site patch effect from ONE
forward and backward pass per sample.

Patching site *i* from the donor changes its tap values (``to_k``/``to_v`` outputs ...) by
Δ_i = taps_donor − taps_base at every step. To first order the score moves by

    Σ_steps ⟨Δ_i, ∂score/∂taps_i⟩,

so one backward pass through the whole denoising chain of the base row (with the donor in the same
batch, as the sweep runs it) estimates the patch effect of every site, and of every head (the
channels of a head's slice), at once. With ``points`` > 0 (default 4) the gradient is averaged over
``points`` midpoints of the straight path from base to donor taps of all sites (integrated gradients,
one extra row per point in the same batch) instead of taken at the base: the estimates of all sites then
add up to the effect of patching all of them (completeness), and one point is already exact when the
score is quadratic in the taps, as the reference score of a near-linear chain is, where the plain
gradient (``points=0``) counts the effect twice. Attention-mask taps (PixArt, SANA: the donor's mask
comes with its keys when prompt lengths differ) are not differentiable and are not followed.

The score differentiated is the reference score, −mean((output − donor output)²), on the pipeline's
own tensor output: it needs no weights and is differentiable for every family. For the reference
scorer it is the scorer itself; for any other scorer (the toy pixel and tone scorers read hard
palette / pitch decisions, CLIP/CLAP/OCR are outside the graph) it is a surrogate: "how far towards
the donor's output", and ``--method auto`` confirms the candidates with the real scorer by patching.

Effects are shown like the sweep's: estimated (patched − base) / (donor − base) in that score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..hooks import tap_gradients
from ..interventions import StepWindow
from ..model import Model
from ..sites import Tap
from .sweep import Row, Unit

DEFAULT_POINTS = 4  # benchmarks/localize.py: the top site of all six toy concepts (midpoint only: 3 of 6)
SURROGATE = "reference score -mean((output - donor output)^2) on the pipeline's tensor output"


def _mixer(alphas: Sequence[float], window: StepWindow):
    """Rows 2.. move their tap values a share ``alpha`` of the way to the donor row's (row 0), inside
    ``window`` and the tap's token range: the integrated-gradients path of a joint patch."""
    n_rows = 2 + len(alphas)

    def mix(out: torch.Tensor, step: int, tap: Tap) -> torch.Tensor:
        if step not in window or not alphas:
            return out
        view = out.view(out.shape[0] // n_rows, n_rows, *out.shape[1:])
        donor = view[:, :1].detach()
        share = torch.tensor([0.0, 0.0, *alphas], dtype=out.dtype, device=out.device)
        share = share.view(1, n_rows, *([1] * (out.dim() - 1)))
        if tap.tokens:
            keep = torch.zeros(out.shape[1], dtype=out.dtype, device=out.device)
            keep[slice(*tap.tokens)] = 1
            share = share * keep.view(1, 1, -1, *([1] * (out.dim() - 2)))
        return (view + share * (donor - view)).reshape(out.shape)

    return mix


def attribution_scores(model: Model, units: Sequence[Unit], rows: Sequence[Row], *, steps: int, guidance: float,
                       window: StepWindow | None = None, points: int = DEFAULT_POINTS,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base (U,), donor (U,), estimated patched (U, R)) surrogate scores, one pass per unit.

    >>> base, donor, patched = attribution_scores(model, units, single_site_rows(model.sites), steps=4,
    ...                                           guidance=7.5)
    >>> stats.effects(base, donor, patched)          # ~ the sweep's effects under the reference scorer
    """
    window = window or StepWindow()
    if points < 0:
        raise UserError(f"points must be at least 0, got {points}")
    alphas = [(k + 0.5) / points for k in range(points)]
    grad_rows = list(range(2, 2 + points)) if points else [1]
    by_name = {s.name: s for s in model.sites}
    needed = [by_name[name] for name in dict.fromkeys(s for r in rows for s in r.sites)]
    n_rows = 2 + points
    base, donor = np.zeros(len(units)), np.zeros(len(units))
    est = np.zeros((len(units), len(rows)))
    bar = tqdm(total=len(units), desc=f"attribution {model.name}", unit="gen", disable=not progress)
    for u, unit in enumerate(units):
        prompts = [unit.donor] + [unit.base] * (n_rows - 1)
        cond = model.encode(prompts) if unit.base_cond is None else None
        if cond is None:
            raise UserError("attribution runs on prompt pairs (not on corrupted conditioning)")
        with tap_gradients(model.denoiser, needed, n_rows, _mixer(alphas, window),
                           model.adapter.calls_per_step) as store:
            outs = model.adapter.generate(model.pipe, cond, seed=unit.seed, steps=steps, guidance=guidance,
                                          settings=model.settings, output_type="pt")
            outs = torch.stack([o.float() for o in outs])
            if not outs.requires_grad:
                raise UserError(f"the {model.name} pipeline's output does not depend differentiably on its "
                                "conditioning here; use --method patch")
            with torch.enable_grad():
                scores = -((outs - outs[0].detach()) ** 2).flatten(1).mean(dim=1)
                scores[grad_rows].sum().backward()
            base[u], donor[u] = float(scores[1].detach()), 0.0
            est[u] = _estimates(store, rows, by_name, n_rows, grad_rows, window)
        bar.update(1)
    bar.close()
    return base, donor, base[:, None] + est


def _estimates(store: dict, rows: Sequence[Row], by_name: dict, n_rows: int, grad_rows: list[int],
               window: StepWindow) -> np.ndarray:
    """Per row: Σ over calls in the window and the row's taps of ⟨Δ, gradient⟩, averaged over the
    gradient rows (their heads' channel slices only, for head-level rows)."""
    per_site: dict[str, torch.Tensor] = {}  # site -> per channel sums (C,)
    for (site, _path), calls in store.items():
        for step, value, z in calls:
            if step not in window or z.grad is None:
                continue
            v = value.view(value.shape[0] // n_rows, n_rows, *value.shape[1:])
            g = z.grad.view_as(v)
            delta = v[:, :1] - v[:, grad_rows]
            tap = next(t for t in by_name[site].taps if t.path == _path and t.kwarg is None)
            prod = (delta * g[:, grad_rows]).float()
            if tap.tokens:
                prod = prod[:, :, slice(*tap.tokens)]
            channels = prod.reshape(-1, prod.shape[-1]).sum(dim=0) / len(grad_rows)
            per_site[site] = per_site.get(site, 0) + channels
    out = np.zeros(len(rows))
    for j, row in enumerate(rows):
        total = 0.0
        for site, heads in row.patches():
            ch = per_site.get(site)
            if ch is None:
                continue
            if heads is None:
                total += float(ch.sum())
            else:
                n = by_name[site].heads
                total += float(ch.view(n, -1)[list(heads)].sum())
        out[j] = total
    return out
