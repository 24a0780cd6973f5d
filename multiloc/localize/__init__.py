"""Localization: :func:`scan` finds the sites that carry a concept. One file per method.

Example::

    result = multiloc.scan("tiny-sd", "colour", method="patch", seeds=2, steps=10, batch_size=8)
    result.ranking[:3], result.selected
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..concepts import Concept
from ..errors import UserError
from ..interventions import StepWindow
from ..media import save_output
from ..model import Model, load
from ..results import Result, ScanState, SiteEffect
from ..scorers import Scorer, get_scorer
from ..sites import select_sites

METHODS = ("patch",)


def scan(model: Model | Any, concept: Concept | str, method: str = "patch", *, seeds: int = 2,
         steps: int | None = None, guidance: float | None = None, batch_size: int = 8,
         sites: str | Sequence[str] | None = None, step_window: str | StepWindow | None = None,
         scorer: Scorer | str | None = None, out: str | Path | None = None, progress: bool = True,
         samples: bool = True, n_boot: int = 1000, stream: str | None = None,
         scorer_options: dict[str, Any] | None = None) -> Result:
    """Localize ``concept`` in ``model``.

    Args:
        model: a :class:`Model`, or anything :func:`multiloc.load` takes.
        concept: a :class:`Concept`, a built-in concept name or a concept YAML path.
        method: ``"patch"`` (single-site patching, batched).
        seeds: seeds per prompt pair (samples = pairs x seeds).
        steps, guidance: denoising steps and CFG scale (default: the model's settings).
        batch_size: prompt rows per generation (CFG doubles them inside the pipeline); at least 2.
        sites: restrict to some sites (indices ``"0-3,9"`` or name patterns); default all.
        step_window: patch only at steps ``"a:b"``.
        scorer: overrides the concept's scorer.
        stream: only the sites reading this conditioning stream (AudioLDM2: ``"gpt2"`` or ``"t5"``);
            default every site, each patched from the donor in its own stream.
        scorer_options: options for the scorer, over the concept's ``scorer_options`` (e.g.
            ``{"model": "/data/clap"}``: a local checkpoint for the CLAP scorer).
        out: a directory for result files and the resume state; ``None`` keeps everything in memory.
        samples: with ``out``, also write base / donor / top-site outputs of the first sample.

    Returns:
        A :class:`Result`: ``ranking``, ``effects``, ``selected`` and per-site bootstrap CIs.
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    for label, value, least in (("seeds", seeds, 1), ("batch size", batch_size, 2), ("steps", steps, 1)):
        if value is not None and value < least:
            raise UserError(f"{label} must be at least {least}, got {value}")
    if not isinstance(model, Model):
        model = load(model)
    if not isinstance(concept, Concept):
        concept = Concept.load(concept)
    if scorer is None or isinstance(scorer, str):
        options = {**(concept.scorer_options if scorer is None else {}), **(scorer_options or {})}
        scorer = get_scorer(scorer or concept.scorer, **options)
    if hasattr(scorer, "sample_rate") and not scorer.sample_rate:
        scorer.sample_rate = model.sample_rate  # audio scorers learn the rate of the model's clips
    for what, modality in (("concept", concept.modality), (f"scorer {scorer.name!r}", scorer.modality)):
        if modality not in ("any", model.modality):
            raise UserError(f"{what} is for {modality}, but {model.name} makes {model.modality}")
    try:
        window = step_window if isinstance(step_window, StepWindow) else StepWindow.parse(step_window)
    except ValueError as e:
        raise UserError(str(e)) from None
    chosen = select_sites(model.sites, sites, stream)
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"] if guidance is None else guidance
    config = {"seeds": seeds, "steps": steps, "guidance": guidance, "batch_size": batch_size,
              "step_window": [window.start, window.end], "scorer": scorer.name, "stream": stream,
              "sites": [s.name for s in chosen], "pairs": len(concept.pairs),
              "device": str(model.device), "dtype": str(next(model.denoiser.parameters()).dtype)}
    identity = {**config, "model": model.name, "method": method, "pairs": [vars(p) for p in concept.pairs],
                "target": concept.target, "batch_size": None, "seeds": None}
    state = ScanState(out, identity)

    from .patch import patch_scores

    raw = patch_scores(model, concept, scorer, chosen, seeds=range(seeds), steps=steps, guidance=guidance,
                       batch_size=batch_size, window=window, state=state, progress=progress)
    eff = stats.effects(raw.base, raw.donor, raw.patched)
    ci = stats.bootstrap_ci(raw.base, raw.donor, raw.patched, n_boot=n_boot)
    picked = stats.select(eff)
    warnings = []
    if not np.isfinite(eff).any():
        warnings.append(f"the {scorer.name} scorer scores donor and base alike, so no effect can be "
                        "measured; check the concept's pairs and scorer")
    result = Result(
        model=model.name, concept=concept.name, method=method,
        sites=[SiteEffect(s.index, s.name, float(e), [float(c) for c in c2]) for s, e, c2 in zip(chosen, eff, ci)],
        selected=[chosen[i].name for i in picked], runtime_s=0.0, config=config,
        extra={"selection_rule": stats.SELECTION_RULE.format(rel=0.5, min_effect=0.1),
               "effect": "mean(s(patched) - s(base)) / mean(s(donor) - s(base)) over samples",
               "samples": {"ids": raw.samples, "base": raw.base.tolist(), "donor": raw.donor.tolist(),
                           "patched": raw.patched.tolist()},
               "resumed_rows": state.resumed, "warnings": warnings},
    )
    if out is not None and samples and chosen:
        result.extra["sample_files"] = _write_samples(model, concept, result, Path(out), steps, guidance, window)
    result.runtime_s = time.perf_counter() - start
    if out is not None:
        result.save(out)
        state.clear()
    return result


def _write_samples(model: Model, concept: Concept, result: Result, out: Path, steps: int,
                   guidance: float, window: StepWindow) -> list[str]:
    """Base, donor, top site patched and the selected set patched, for the first pair and seed 0."""
    from ..interventions import Patch

    pair = concept.pairs[0]
    top = result.ranking[0]
    index = next(s.index for s in result.sites if s.name == top)
    rows = {"donor": [], "base": [], f"top-site{index:02d}": [top]}
    if len(result.selected) > 1:
        rows["selected-set"] = result.selected
    prompts = [pair.donor] + [pair.base] * (len(rows) - 1)
    plan = [Patch(s, rows=(r,), source=0, window=window)
            for r, names in enumerate(rows.values()) for s in names]
    outs = model.generate(prompts, plan, seed=0, steps=steps, guidance=guidance)
    return [str(save_output(out / "samples" / label, o, model.modality, model.sample_rate).relative_to(out))
            for label, o in zip(rows, outs)]
