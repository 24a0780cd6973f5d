"""Diffusion training objectives, derived from a pipeline's scheduler: noise -> noisy input -> loss.

One place for what the toy trainers and ``multiloc finetune`` both need: given clean samples ``x0``,
draw the noise and the noise level (in that order, from one seeded generator), build the input the
denoiser reads (and the timestep it is called with), and score its prediction against the target
of the scheduler's ``prediction_type``:

- DDPM-style schedulers (``alphas_cumprod``): ``epsilon`` (target: the noise), ``sample`` (the clean
  sample), ``v_prediction`` (``sqrt(a) noise - sqrt(1 - a) x0``); ``t`` uniform over the training steps.
- Flow matching (``FlowMatchEulerDiscreteScheduler``: SD3, FLUX; SANA's DPM-Solver with ``flow_prediction``): ``x_s = (1 - s) x0 + s noise``,
  target ``noise - x0``, timestep ``s x num_train_timesteps``, ``s`` uniform.
- EDM (schedulers with ``precondition_*``: Stable Audio's CosineDPMSolver, EDM DPM-Solver): ``sigma``
  log-normal, the scheduler's own preconditioning, the loss weighted to unit variance at every sigma.

Example::

    objective = objective_for(pipe.scheduler)
    noised = objective.noise(x0, gen)
    pred = denoiser(noised.x, noised.t, ...)
    loss = noised.loss(pred)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserError


@dataclass
class Noised:
    """A batch ready for the denoiser: its input ``x``, the timestep ``t`` it is called with, and
    ``loss(prediction) -> scalar`` (the objective's mean loss of the denoiser's output).

    >>> noised = objective.noise(x0, gen)
    >>> loss = noised.loss(unet(noised.x, noised.t, encoder_hidden_states=ehs).sample)
    """

    x: torch.Tensor
    t: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``v`` (one value per row) shaped to broadcast over ``like``'s rows."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class Objective:
    """Base class: ``noise(x0, gen)`` draws the noise, then the noise level, and returns :class:`Noised`.

    >>> objective_for(pipe.scheduler).noise(x0, torch.Generator().manual_seed(0)).x.shape == x0.shape
    True
    """

    name: str = ""

    def noise(self, x0: torch.Tensor, gen: torch.Generator) -> Noised:
        raise NotImplementedError


class DDPMObjective(Objective):
    """Discrete-time diffusion with ``alphas_cumprod`` (DDPM, DDIM, PNDM ... schedulers).

    >>> noised = DDPMObjective(pipe.scheduler).noise(x0, torch.Generator().manual_seed(0))
    """

    def __init__(self, scheduler: Any):
        self.alphas = scheduler.alphas_cumprod
        self.steps = scheduler.config.num_train_timesteps
        self.name = scheduler.config.get("prediction_type", "epsilon")
        if self.name not in ("epsilon", "sample", "v_prediction"):
            raise UserError(f"prediction type {self.name!r} of {type(scheduler).__name__} has no training objective here")

    def noise(self, x0: torch.Tensor, gen: torch.Generator) -> Noised:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)  # drawn on the CPU: the same on any device
        t = torch.randint(self.steps, (x0.shape[0],), generator=gen)
        a = _view(self.alphas[t], x0).to(x0.device)
        t = t.to(x0.device)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[self.name]
        return Noised(xt, t, lambda pred: torch.nn.functional.mse_loss(pred, target))


class FlowObjective(Objective):
    """Rectified flow (``FlowMatchEulerDiscreteScheduler``): the velocity ``noise - x0``.

    >>> FlowObjective(FlowMatchEulerDiscreteScheduler()).noise(x0, gen).t   # s x 1000, s uniform
    """

    name = "flow_matching"

    def __init__(self, scheduler: Any):
        self.steps = scheduler.config.num_train_timesteps

    def noise(self, x0: torch.Tensor, gen: torch.Generator) -> Noised:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        s = torch.rand(x0.shape[0], generator=gen).to(x0.device)
        xs = (1 - _view(s, x0)) * x0 + _view(s, x0) * noise
        return Noised(xs, s * self.steps, lambda pred: torch.nn.functional.mse_loss(pred, noise - x0))


class EDMObjective(Objective):
    """EDM (Karras et al.): log-normal ``sigma`` (``p_mean``, ``p_std``), the scheduler's own
    ``precondition_inputs/noise/outputs`` (so training and sampling agree by construction).

    >>> EDMObjective(pipe.scheduler, p_mean=-0.6, p_std=1.4).noise(z0, gen).loss(dit_output)
    """

    name = "edm"

    def __init__(self, scheduler: Any, p_mean: float = -0.6, p_std: float = 1.4):
        self.scheduler, self.p_mean, self.p_std = scheduler, p_mean, p_std
        self.sigma_data = scheduler.config.sigma_data

    def noise(self, x0: torch.Tensor, gen: torch.Generator) -> Noised:
        sched = self.scheduler
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        sigma = _view((torch.randn(x0.shape[0], generator=gen) * self.p_std + self.p_mean).exp(), x0).to(x0.device)
        noisy = x0 + sigma * noise
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2  # unit loss at every sigma

        def loss(pred: torch.Tensor) -> torch.Tensor:
            return (weight * (sched.precondition_outputs(noisy, pred, sigma) - x0) ** 2).mean()

        return Noised(sched.precondition_inputs(noisy, sigma), sched.precondition_noise(sigma.flatten()), loss)


def descend(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """One optimizer step on ``loss``, gradients clipped to norm 1 (the toy trainers' and finetune's step).

    >>> descend(objective.noise(x0, gen).loss(pred), opt, params)
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def objective_for(scheduler: Any, **options: Any) -> Objective:
    """The training objective of ``scheduler``'s family (see the module docstring); ``options`` go to
    the EDM objective (``p_mean``, ``p_std``).

    >>> objective_for(multiloc.load("toy-shapes").pipe.scheduler).name
    'sample'
    """
    if hasattr(scheduler, "precondition_inputs"):
        return EDMObjective(scheduler, **options)
    if "FlowMatch" in type(scheduler).__name__ or scheduler.config.get("prediction_type") == "flow_prediction":
        return FlowObjective(scheduler)  # SANA samples flow with a DPM-Solver set to flow_prediction
    if hasattr(scheduler, "alphas_cumprod"):
        return DDPMObjective(scheduler)
    raise UserError(f"no training objective is known for the {type(scheduler).__name__} scheduler")
