"""The one place that touches torch hooks. Every hook is removed on exit, also on exceptions.

Example::

    with intervene(unet, sites, plan, n_rows=4):
        pipe(...)                     # patched
    pipe(...)                         # the model exactly as it was

    with capture(unet, sites) as store:
        pipe(...)
    store[("up_blocks.0.attentions.2.transformer_blocks.1.attn2", "to_k")]  # list of per-step outputs
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .interventions import Patch, apply_patch, check_plan
from .sites import INPUT_TAP, Site


class StepCounter:
    """Counts denoiser calls; ``step`` is the current denoising step (0-based)."""

    def __init__(self, calls_per_step: int = 1) -> None:
        self.calls = 0
        self.calls_per_step = calls_per_step

    @property
    def step(self) -> int:
        return max(self.calls - 1, 0) // self.calls_per_step

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1


@contextmanager
def hooks(forward: Sequence[tuple[nn.Module, Callable]] = (),
          pre: Sequence[tuple[nn.Module, Callable]] = (),
          pre_kwargs: Sequence[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register forward hooks and forward pre-hooks (``pre_kwargs``: pre-hooks that see and may rewrite
    keyword arguments); remove all of them on exit, whatever happens.

    >>> with hooks(forward=[(unet.mid_block, lambda m, a, o: print(o.shape))]):
    ...     unet(x, t, ehs)
    """
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in pre_kwargs:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in forward:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def intervene(denoiser: nn.Module, sites: Sequence[Site], plan: Sequence[Patch], n_rows: int,
              calls_per_step: int = 1) -> Iterator[StepCounter]:
    """Apply an intervention plan to every denoiser call inside the block.

    ``n_rows`` is the number of logical rows (prompts) of each generation; the counter yielded tells
    the current step, which the patches' step windows are checked against.
    """
    by_name = {s.name: s for s in sites}
    check_plan(plan, list(by_name), n_rows)
    counter = StepCounter(calls_per_step)
    per_tap: dict[tuple[str, str], list[Patch]] = defaultdict(list)
    for p in plan:
        for tap in by_name[p.site].taps:
            per_tap[(p.site, tap.path)].append(p)

    def make_hook(site: Site, tap_path: str, patches: list[Patch]) -> Callable:
        tokens = next(t.tokens for t in site.taps if t.path == tap_path)

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            step = counter.step
            for p in patches:
                if step in p.window:
                    out = apply_patch(p, tap_path, out, n_rows, tokens)
            return out

        return hook

    def make_input_hook(kwarg: str, patches: list[Patch]) -> Callable:
        # An input tap (e.g. the attention mask of the conditioning) follows inject patches only: it
        # says which of the donor's tokens are visible, so it travels with the donor's keys and values.
        injects = [p for p in patches if p.kind == "inject"]

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            value = kwargs.get(kwarg)
            if value is None or not injects:
                return args, kwargs
            step = counter.step
            for p in injects:
                if step in p.window:
                    value = apply_patch(p, kwarg, value, n_rows, None)
            return args, {**kwargs, kwarg: value}

        return hook

    forward, pre_kwargs = [], []
    for (site_name, tap_path), patches in per_tap.items():
        site_module = denoiser.get_submodule(site_name)
        if tap_path.startswith(INPUT_TAP):
            pre_kwargs.append((site_module, make_input_hook(tap_path[len(INPUT_TAP):], patches)))
        else:
            forward.append((site_module.get_submodule(tap_path), make_hook(by_name[site_name], tap_path, patches)))
    with hooks(forward=forward, pre=[(denoiser, counter)], pre_kwargs=pre_kwargs):
        yield counter


@contextmanager
def capture(denoiser: nn.Module, sites: Sequence[Site]) -> Iterator[dict[tuple[str, str], list[torch.Tensor]]]:
    """Record every tap output of ``sites`` at every denoiser call (detached, on the same device).

    The store maps ``(site name, tap path)`` to a list with one tensor per call.
    """
    store: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)

    def make_hook(key: tuple[str, str]) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            store[key].append(out.detach().clone())
        return hook

    forward = [(denoiser.get_submodule(s.name).get_submodule(t.path), make_hook((s.name, t.path)))
               for s in sites for t in s.taps if not t.path.startswith(INPUT_TAP)]
    with hooks(forward=forward):
        yield store
