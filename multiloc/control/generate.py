"""Plain generation with control applied: weight files, LoRA adapters and steering vectors.

A *modifier* is anything that changes how a model generates, for the duration of a ``with`` block:
``modifier.applied(model)`` is a context manager that yields either ``None`` or a function
``plan(n_rows) -> list[Patch]`` giving the patches a batch of ``n_rows`` prompts runs under (a
steering vector adds at its sites in every row). Weight files change parameters and yield None.
Everything a modifier changed is undone when the block ends, also on an exception.

Example::

    outs = generate(model, ["a red circle", "a blue square"], seeds=[0, 1],
                    modifiers=[Weights(["edit.safetensors"]), Steer("blue.safetensors", alpha=2.0)])
    outs[1][0]          # seed 1, first prompt
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..errors import UserError
from ..interventions import Patch
from ..media import save_output
from ..results import write_atomic

PlanFn = Callable[[int], list[Patch]]


class Modifier(Protocol):
    """Changes a model while it generates (see the module docstring)."""

    def applied(self, model: Any) -> Any:  # a context manager yielding PlanFn | None
        ...

    def describe(self) -> dict[str, Any]:
        ...


@dataclass
class Weights:
    """Weight files (``multiloc rewrite`` output) applied for the generation."""

    paths: Sequence[str | Path]

    @contextmanager
    def applied(self, model: Any) -> Iterator[None]:
        with model.applied(*self.paths):
            yield None

    def describe(self) -> dict[str, Any]:
        return {"weights": [str(p) for p in self.paths]}


@dataclass
class Steer:
    """Steering vectors (``multiloc steer`` output, or a :class:`~multiloc.control.steer.SteeringVectors`)
    added ``alpha`` times at their sites, in every row and step.

    ``steps``: the steps the generation runs (default: the model's), so each step takes the vector of
    the same point of the schedule. ``alpha`` 0 leaves the outputs bit-identical.

    >>> generate(model, ["slow low sine notes"], modifiers=[Steer("saw.safetensors", alpha=4.0)])
    """

    vectors: Any  # SteeringVectors | str | Path
    alpha: float
    steps: int | None = None
    _checked: Any = field(default=None, init=False, repr=False, compare=False)  # the model checked against

    def load(self, model: Any) -> Any:
        """The vectors, read if a path, checked against ``model`` (once per model)."""
        from .steer import SteeringVectors, check_steering, read_steering

        if not isinstance(self.vectors, SteeringVectors):
            self.vectors = read_steering(self.vectors)
        if self._checked is not model:
            check_steering(model, self.vectors)
            self._checked = model
        return self.vectors

    @contextmanager
    def applied(self, model: Any) -> Iterator[PlanFn]:
        vectors = self.load(model)
        steps = self.steps or model.settings["steps"]
        yield lambda n_rows: vectors.plan(n_rows, self.alpha, steps)

    def describe(self) -> dict[str, Any]:
        from .steer import SteeringVectors

        v = self.vectors
        source = str(v.path or v.concept) if isinstance(v, SteeringVectors) else str(v)
        return {"steer": source, "alpha": float(self.alpha)}


@dataclass
class Lora:
    """A LoRA folder (``multiloc finetune`` output, either format) loaded for the generation and
    unloaded after: the base weights are bit-identical afterwards."""

    path: str | Path

    @contextmanager
    def applied(self, model: Any) -> Iterator[None]:
        from .lora import lora_applied

        with lora_applied(model, self.path):
            yield None

    def describe(self) -> dict[str, Any]:
        return {"lora": str(self.path)}


def generate(model: Any, prompts: Sequence[str], *, seeds: Sequence[int] = (0,),
             modifiers: Sequence[Modifier] = (), steps: int | None = None, guidance: float | None = None,
             batch_size: int = 8, progress: bool = False) -> list[list[np.ndarray]]:
    """One output per (seed, prompt), with every modifier applied: ``outs[seed_index][prompt_index]``.

    Every row of a seed starts from the noise of that seed, so outputs with and without a modifier
    differ only by the modifier.
    """
    if not prompts:
        raise UserError("generate needs at least one prompt")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    spans = [range(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
    outs: list[list[np.ndarray]] = []
    with ExitStack() as stack:
        plans = [p for p in (stack.enter_context(m.applied(model)) for m in modifiers) if p is not None]
        bar = tqdm(total=len(seeds) * len(spans), desc=f"generate {model.name}", unit="gen", disable=not progress)
        for seed in seeds:
            row: list[np.ndarray] = []
            for span in spans:
                plan = [patch for fn in plans for patch in fn(len(span))]
                row += model.generate([prompts[i] for i in span], plan, seed=seed, steps=steps, guidance=guidance)
                bar.update(1)
            outs.append(row)
        bar.close()
    return outs


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "prompt"


def save_generations(out: str | Path, model: Any, prompts: Sequence[str], seeds: Sequence[int],
                     outs: Sequence[Sequence[np.ndarray]], info: dict[str, Any] | None = None,
                     prefix: str = "") -> list[str]:
    """Write every output as ``DIR/[PREFIX]NN-SLUG-sSEED.png|wav`` and ``DIR/[PREFIX]generate.json``."""
    out = Path(out)
    files = []
    for seed, row in zip(seeds, outs):
        for i, (prompt, o) in enumerate(zip(prompts, row)):
            name = f"{prefix}{i:02d}-{slug(prompt)}-s{seed}"
            files.append(str(save_output(out / name, o, model.modality, model.sample_rate).relative_to(out)))
    record = {"model": model.name, "prompts": list(prompts), "seeds": list(seeds), "files": files, **(info or {})}
    write_atomic(out / f"{prefix}generate.json", json.dumps(record, indent=2) + "\n")
    return files
