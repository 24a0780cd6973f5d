"""A loaded model: a pipeline, the adapter of its family, its sites and its default settings.

Example::

    model = multiloc.load("sdxl")                       # registry name
    model = multiloc.load("stabilityai/sdxl-turbo")     # hub id
    model = multiloc.load("/data/my-checkpoint")        # local diffusers folder
    model = multiloc.load(pipe)                          # a pipeline object you already have
    images = model.generate(["a red cube", "a blue cube"], seed=0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import registry
from .adapter import Adapter, Conditioning
from .build import build_pipeline
from .errors import UserError
from .hooks import intervene
from .interventions import Patch
from .sites import Site


class Model:
    """A pipeline together with its adapter (see :func:`load`)."""

    def __init__(self, pipe: Any, adapter: Adapter, name: str, settings: dict[str, Any] | None = None,
                 spec: dict[str, Any] | None = None):
        self.pipe = pipe
        self.adapter = adapter
        self.name = name
        self.settings = {**adapter.defaults, **(settings or {})}
        self.spec = spec or {}  # the registry entry, when loaded by name (its published ``localized`` sites)
        self._cond_cache: dict[str, Conditioning] = {}

    def __repr__(self) -> str:
        return f"Model({self.name!r}, adapter={self.adapter.name!r}, sites={len(self.sites)})"

    @property
    def modality(self) -> str:
        return self.adapter.modality

    @property
    def sample_rate(self) -> int | None:
        """Audio models: the outputs' sample rate in Hz (None for images)."""
        return self.adapter.sample_rate(self.pipe)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.adapter.denoiser(self.pipe)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @cached_property
    def sites(self) -> list[Site]:
        """The sites in execution order."""
        return self.adapter.sites(self.denoiser, self.settings)

    @cached_property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def applied(self, *weights: Any) -> Any:
        """A context manager applying weight files (``multiloc rewrite`` output) for the block only.

        >>> with model.applied("edit.safetensors"):
        ...     edited = model.generate(["a red cube"])
        >>> # here the weights are bit-identical to before
        """
        from .control.weights import applied

        return applied(self, *weights)

    def clear_cache(self) -> None:
        """Forget cached prompt conditioning (after a text encoder changed)."""
        self._cond_cache.clear()

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Embeddings for ``prompts`` (cached per prompt), stacked along dim 0."""
        if self.adapter.prompt_in_call:
            return {"prompt": list(prompts)}
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cond_cache]
        if missing:
            with torch.no_grad():
                cond = self.adapter.encode(self.pipe, missing, self.device, settings=self.settings)
            for i, p in enumerate(missing):
                self._cond_cache[p] = {k: v[i:i + 1] for k, v in cond.items()}
        rows = [self._cond_cache[p] for p in prompts]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

    def with_negative(self, cond: Conditioning, negative: Sequence[str]) -> Conditioning:
        """``cond`` with each row's unconditional copy reading the matching ``negative`` prompt.

        >>> model.generate(["a red circle"], negative=["red"])   # as pipe(prompt, negative_prompt=...)
        """
        keys = self.adapter.negative_keys
        if not keys:
            raise UserError(f"{self.name} cannot take a negative prompt: {self.adapter.no_negative}")
        n = len(next(iter(cond.values())))
        if len(negative) != n:
            raise ValueError(f"{len(negative)} negative prompts for {n} rows")
        neg = {"prompt": list(negative)} if self.adapter.prompt_in_call else self.encode(negative)
        return {**cond, **{nk: neg[pk] for pk, nk in keys.items() if pk in cond}}

    def generate(self, rows: Sequence[str | Conditioning], plan: Sequence[Patch] = (), *, seed: int = 0,
                 steps: int | None = None, guidance: float | None = None,
                 negative: Sequence[str] | None = None) -> list[np.ndarray]:
        """Generate one output per row, all from the noise of ``seed``, with ``plan`` active.

        A row is a prompt, or a one-row conditioning (e.g. ``model.encode([p])`` with noise added:
        causal tracing corrupts embeddings this way). ``negative`` gives every row a negative prompt
        (it acts only under classifier-free guidance, ``guidance`` above 1).
        """
        steps = steps or self.settings["steps"]
        guidance = self.settings["guidance"] if guidance is None else guidance
        if all(isinstance(r, str) for r in rows):
            cond = self.encode(rows)
        elif self.adapter.prompt_in_call:
            raise UserError(f"{self.name} encodes prompts inside its pipeline call, so rows must be prompts "
                            "(edited embeddings, as causal tracing uses, cannot be passed in)")
        else:
            parts = [self.encode([r]) if isinstance(r, str) else r for r in rows]
            cond = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if negative is not None:
            cond = self.with_negative(cond, negative)
        with intervene(self.denoiser, self.sites, plan, len(rows), self.adapter.calls_per_step):
            return self.adapter.generate(self.pipe, cond, seed=seed, steps=steps, guidance=guidance,
                                         settings=self.settings)


def _pipeline_class(name: str | None) -> Any:
    import diffusers

    return getattr(diffusers, name) if name else diffusers.DiffusionPipeline


def _from_pretrained(source: str, pipeline: str | None, dtype: torch.dtype | None) -> Any:
    """Load a pipeline from a local folder or a hub id; fail fast and clearly without a network."""
    cls = _pipeline_class(pipeline)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if Path(source).exists():
        try:
            return cls.from_pretrained(source, local_files_only=True, **kwargs)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a pipeline from {source}: {str(e).splitlines()[0]}") from None
    try:  # the local cache first: works offline for models fetched before
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    reason = _hub_unreachable(source)
    if reason:
        raise UserError(f"cannot fetch {source!r} from the Hugging Face hub ({reason}); download it "
                        "where there is a network and pass its local directory instead") from None
    return cls.from_pretrained(source, **kwargs)


def _hub_unreachable(repo_id: str) -> str | None:
    """Why the hub cannot serve ``repo_id`` right now, or None; answers in seconds, never retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=5)
    except Exception as e:  # noqa: BLE001 - any failure means: not reachable, say why
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def load(source: Any, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         settings: dict[str, Any] | None = None) -> Model:
    """Load a model from a registry name, a hub id, a local directory or a pipeline object.

    The adapter is chosen from the registry entry or, for other sources, from the denoiser's class.
    ``device``/``dtype`` move the pipeline (a pipeline object you pass is moved only if you ask).
    ``settings`` override the defaults (``steps``, ``guidance``, ``height``, ``width`` ...).

    >>> model = multiloc.load("tiny-sd")
    >>> [s.index for s in model.sites][:3]
    [0, 1, 2]
    """
    spec: dict[str, Any] = {}
    if not isinstance(source, (str, os.PathLike)):
        pipe, name = source, type(source).__name__
        adapter = registry.adapter_for(pipe)
    else:
        source = str(source)
        if source in registry.model_names():
            spec = registry.model_spec(source)
            name = spec["name"]
            if "build" in spec:
                pipe = build_pipeline(spec["build"], seed=spec["build"].get("seed", 0))
            else:
                pipe = _from_pretrained(spec["hub_id"], spec.get("pipeline"), dtype)
            adapter = registry.get_adapter(spec["adapter"])
        elif Path(source).exists() or source.count("/") == 1:
            pipe, name = _from_pretrained(source, None, dtype), source
            adapter = registry.adapter_for(pipe)
        else:
            registry.model_spec(source)  # raises the "unknown model" error listing known names
            raise AssertionError("unreachable")
    pipe = adapter.prepare(pipe)
    if device is not None or dtype is not None:
        pipe.to(device=device, dtype=dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # multiloc shows its own progress
    return Model(pipe, adapter, name, {**spec.get("defaults", {}), **(settings or {})}, spec=spec)
