"""Safe Latent Diffusion guidance (Schramowski et al., CVPR 2023) for every family with classifier-free guidance.

diffusers has it for SD 1.x only (``StableDiffusionPipelineSafe``, which batches a third copy of the
latents with the safety concept's embedding). Here the safety concept is an extra in-batch *row* whose
latent is overwritten by the guided row's before every denoiser call, and a hook on the denoiser's output
rewrites the guided row's conditional prediction (:func:`multiloc.hooks.guide_prediction`), so the stock
pipeline's own CFG step computes SLD's guidance: no family needs code of its own. The ``sld`` method of
``multiloc edit`` runs it (:mod:`multiloc.control.edit`).

Example::

    with guide_prediction(model.denoiser, 3, {2: 1}, SafeGuidance(warmup=4).term(row=1, safety=2)):
        original, guided, _ = model.generate(["a sign that says 'idiot'"] * 2 + ["idiot"], seed=0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SafeGuidance:
    """Safe Latent Diffusion guidance (Schramowski et al., CVPR 2023), ported from diffusers'
    ``StableDiffusionPipelineSafe`` (SD 1.x only there) to every family with classifier-free guidance.

    The safety concept is an extra in-batch row that predicts on the guided row's latent
    (:func:`multiloc.hooks.guide_prediction`); the guided row's conditional prediction then becomes
    ``text - safety_term`` (Equations 3-8 of the paper, the diffusers defaults: guidance scale 1000,
    threshold 0.01, momentum 0.3, beta 0.4), so the pipeline's own CFG step computes
    ``uncond + g * (text - uncond - safety_term)`` exactly as the safe pipeline does. The term applies
    from ``warmup`` on (the edit's start step); the momentum accumulates from step 0, as there.
    The defaults were tuned on SD 1.x's noise predictions; other parametrizations (v, flow) may need others.

    >>> SafeGuidance().term(row=1, safety=2)   # fn(pred, step) for guide_prediction
    """

    scale: float = 1000.0
    threshold: float = 0.01
    momentum_scale: float = 0.3
    mom_beta: float = 0.4
    warmup: int = 10

    def term(self, row: int, safety: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The prediction rewrite for :func:`~multiloc.hooks.guide_prediction`: logical ``row`` is guided
        away from the concept in row ``safety`` (each call's own momentum: make one per generation)."""
        momentum: list[torch.Tensor | None] = [None]

        def fn(pred: torch.Tensor, step: int) -> torch.Tensor:
            uncond, text, concept = pred[0, row], pred[-1, row], pred[-1, safety]
            scale = torch.clamp((text - concept).abs() * self.scale, max=1.0)
            scale = torch.where(text - concept >= self.threshold, torch.zeros_like(scale), scale)
            term = (concept - uncond) * scale
            if momentum[0] is None:
                momentum[0] = torch.zeros_like(term)
            term = term + self.momentum_scale * momentum[0]
            momentum[0] = self.mom_beta * momentum[0] + (1 - self.mom_beta) * term
            if step >= self.warmup:
                pred = pred.clone()
                pred[-1, row] = text - term
            return pred

        return fn
