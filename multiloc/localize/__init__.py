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
from .patch import Unit, patch_scores, units_for

METHODS = ("patch",)


def scan(model: Model | Any, concept: Concept | str, method: str = "patch", *, seeds: int = 2,
         steps: int | None = None, guidance: float | None = None, batch_size: int = 8,
         sites: str | Sequence[str] | None = None, step_window: str | StepWindow | None = None,
         scorer: Scorer | str | None = None, out: str | Path | None = None, progress: bool = True,
         samples: bool = True, n_boot: int = 1000, heads: str | Sequence[int] | None = None) -> Result:
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
        out: a directory for result files and the resume state; ``None`` keeps everything in memory.
        samples: with ``out``, also write base / donor / top-site outputs of the first sample.
        heads: head-level patching: a list of head indices patches only those heads of each site;
            ``"each"`` scans every head of every chosen site as a unit of its own (``SITE#hN``), e.g.
            ``scan(model, concept, sites="10", heads="each")`` for the heads of SD3's block 10.

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
        scorer = get_scorer(scorer or concept.scorer, **(concept.scorer_options if scorer is None else {}))
    for what, modality in (("concept", concept.modality), (f"scorer {scorer.name!r}", scorer.modality)):
        if modality not in ("any", model.modality):
            raise UserError(f"{what} is for {modality}, but {model.name} makes {model.modality}")
    try:
        window = step_window if isinstance(step_window, StepWindow) else StepWindow.parse(step_window)
    except ValueError as e:
        raise UserError(str(e)) from None
    chosen = select_sites(model.sites, sites)
    if isinstance(heads, str) and heads != "each":
        raise UserError(f"heads must be 'each' or a list of head indices, got {heads!r}")
    units = units_for(chosen, heads)
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"] if guidance is None else guidance
    config = {"seeds": seeds, "steps": steps, "guidance": guidance, "batch_size": batch_size,
              "step_window": [window.start, window.end], "scorer": scorer.name,
              "sites": [s.name for s in chosen], "pairs": len(concept.pairs),
              "heads": heads if heads is None or isinstance(heads, str) else list(units[0].heads or ()),
              "device": str(model.device), "dtype": str(next(model.denoiser.parameters()).dtype)}
    identity = {**config, "model": model.name, "method": method, "pairs": [vars(p) for p in concept.pairs],
                "target": concept.target, "batch_size": None, "seeds": None}
    state = ScanState(out, identity)

    raw = patch_scores(model, concept, scorer, units, seeds=range(seeds), steps=steps, guidance=guidance,
                       batch_size=batch_size, window=window, state=state, progress=progress)
    eff = stats.effects(raw.base, raw.donor, raw.patched)
    ci = stats.bootstrap_ci(raw.base, raw.donor, raw.patched, n_boot=n_boot)
    picked = stats.select(eff)
    warnings = []
    if not np.isfinite(eff).any():
        warnings.append(f"the {scorer.name} scorer scores donor and base alike, so no effect can be "
                        f"measured; {scorer.flat_hint or 'check the concept pairs and the scorer'}")
    result = Result(
        model=model.name, concept=concept.name, method=method,
        sites=[SiteEffect(u.index, u.name, float(e), [float(c) for c in c2]) for u, e, c2 in zip(units, eff, ci)],
        selected=[units[i].name for i in picked], runtime_s=0.0, config=config,
        extra={"selection_rule": stats.SELECTION_RULE.format(rel=0.5, min_effect=0.1),
               "effect": "mean(s(patched) - s(base)) / mean(s(donor) - s(base)) over samples",
               "samples": {"ids": raw.samples, "base": raw.base.tolist(), "donor": raw.donor.tolist(),
                           "patched": raw.patched.tolist()},
               "resumed_rows": state.resumed, "warnings": warnings},
    )
    if raw.records:
        result.extra["metrics"] = {
            "score": scorer.meaning or f"the {scorer.name} score",
            "base": scorer.summarize(raw.records["base"]), "donor": scorer.summarize(raw.records["donor"]),
            "sites": {s.name: scorer.summarize(raw.records[s.name]) for s in chosen}}
    if out is not None and samples and chosen:
        result.extra["sample_files"] = _write_samples(model, concept, result, Path(out), steps, guidance, window,
                                                      {u.name: u for u in units})
    result.runtime_s = time.perf_counter() - start
    if out is not None:
        result.save(out)
        state.clear()
    return result


def _write_samples(model: Model, concept: Concept, result: Result, out: Path, steps: int,
                   guidance: float, window: StepWindow, units: dict[str, Unit]) -> list[str]:
    """Base, donor, top site patched and the selected set patched, for the first pair and seed 0."""
    from ..interventions import Patch

    pair = concept.pairs[0]
    top = result.ranking[0]
    index = next(s.index for s in result.sites if s.name == top)
    rows = {"donor": [], "base": [], f"top-site{index:02d}": [top]}
    if len(result.selected) > 1:
        rows["selected-set"] = result.selected
    prompts = [pair.donor] + [pair.base] * (len(rows) - 1)
    # Two units of one site (heads) in one row are one patch over the union of their heads.
    merged: dict[tuple[int, str], tuple[int, ...] | None] = {}
    for r, names in enumerate(rows.values()):
        for label in names:
            u = units[label]
            key = (r, u.site)
            old = merged.get(key, ())
            merged[key] = None if u.heads is None or old is None else tuple(sorted({*old, *u.heads}))
    plan = [Patch(site, rows=(r,), source=0, window=window, heads=h) for (r, site), h in merged.items()]
    outs = model.generate(prompts, plan, seed=0, steps=steps, guidance=guidance)
    return [str(save_output(out / "samples" / label, o, model.modality).relative_to(out))
            for label, o in zip(rows, outs)]
