"""Localization: :func:`scan` finds the sites that carry a concept. One file per method.

- ``patch``: each site alone patched from the donor (the papers' sweep, batched) — ``patch.py``
- ``trace``: causal tracing, restore one site's clean conditioning in a corrupted run — ``trace.py``
- ``contribution``: one generation, attention output flowing from the concept's tokens — ``contribution.py``
- ``attribution``: attribution patching, every site's patch effect to first order from one forward and
  backward pass — ``attribution.py``
- ``auto``: attribution first, then patching on only the sites it cannot rule out — ``auto.py``

On top of a ranking: ``adaptive`` sampling (``adaptive.py``), set ``search`` (``search.py``) and a
site x step map (``stepmap.py``). All patching runs through one batched, resumable sweep
(``sweep.py``).

Example::

    result = multiloc.scan("tiny-sd", "colour", method="patch", seeds=2, steps=10, batch_size=8)
    result.ranking[:3], result.selected
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..concepts import Concept
from ..distributed import processes
from ..errors import UserError
from ..interventions import Patch, StepWindow
from ..media import save_output
from ..memory import peak_memory_mb
from ..model import Model, load
from ..results import Result, ScanState, SiteEffect, versions
from ..scorers import Scorer, get_scorer
from ..sites import select_sites
from .patch import single_site_rows
from .sweep import Row, Unit, chunks, evaluate, join

METHODS = ("patch", "contribution", "trace", "attribution", "auto")
SEARCHES = ("greedy", "window")
# What a site's effect means under each method (written into result.json).
EFFECTS = {
    "patch": "mean(s(patched) - s(base)) / mean(s(donor) - s(base)) over samples",
    "trace": "mean(s(restored) - s(corrupted)) / mean(s(clean) - s(corrupted)) over samples",
    "contribution": "attention output from the concept's tokens, relative to the top site (top = 1)",
    "attribution": "first-order estimate of mean(s(patched) - s(base)) / mean(s(donor) - s(base)), s = the "
                   "reference score (-MSE to the donor's output), integrated gradients over 4 points",
    "auto": "as patch, for the sites attribution did not rule out (the others: NaN, see auto)",
}


def scorer_for(model: Model, concept: Concept, scorer: str | Scorer | None = None,
               scorer_options: dict[str, Any] | None = None) -> Scorer:
    """The scorer for ``concept`` on ``model`` (the concept's own unless ``scorer`` names or is one),
    checked against the model's modality; audio scorers learn the model's sample rate.

    >>> scorer_for(multiloc.load("toy-tones"), Concept.load("toy-instrument")).name
    'instrument'
    """
    if scorer is None or isinstance(scorer, str):
        options = {**(concept.scorer_options if scorer is None else {}), **(scorer_options or {})}
        scorer = get_scorer(scorer or concept.scorer, **options)
    if hasattr(scorer, "sample_rate") and not scorer.sample_rate:
        scorer.sample_rate = model.sample_rate  # audio scorers learn the rate of the model's clips
    for what, modality in (("concept", concept.modality), (f"scorer {scorer.name!r}", scorer.modality)):
        if modality not in ("any", model.modality):
            raise UserError(f"{what} is for {modality}, but {model.name} makes {model.modality}")
    return scorer


def scan(model: Model | Any, concept: Concept | str, method: str = "patch", *, seeds: int = 2,
         steps: int | None = None, guidance: float | None = None, batch_size: int | str = 8,
         sites: str | Sequence[str] | None = None, step_window: str | StepWindow | None = None,
         scorer: Scorer | str | None = None, out: str | Path | None = None, progress: bool = True,
         samples: bool = True, n_boot: int = 1000, heads: str | Sequence[int] | None = None,
         adaptive: bool = False, search: str | None = None, window_size: int = 3, tau: float = 0.9,
         step_map: int = 0, control: int = 0, stream: str | None = None,
         scorer_options: dict[str, Any] | None = None, max_pairs: int | None = None,
         cached_donor: bool = True) -> Result:
    """Localize ``concept`` in ``model``.

    Args:
        model: a :class:`Model`, or anything :func:`multiloc.load` takes.
        concept: a :class:`Concept`, a built-in concept name or a concept YAML path.
        method: ``"patch"``, ``"trace"``, ``"contribution"``, ``"attribution"`` or ``"auto"`` (see the
            module docstring).
        seeds: seeds per prompt pair (samples = pairs x seeds).
        steps, guidance: denoising steps and CFG scale (default: the model's settings).
        batch_size: prompt rows per generation (CFG doubles them inside the pipeline); at least 2.
            ``"auto"``: every row of a sample in one generation, split in two (and retried) while it does
            not fit in memory; the most rows that fit are kept for the rest of the scan. A generation
            that runs out of memory is split like this under any batch size, losing no rows.
        max_pairs: a seeded subset of this many of the concept's pairs (the same subset every run).
        cached_donor: where the family's conditioning does not depend on the step (pure cross-attention:
            U-Nets, PixArt/SANA, AudioLDM2, Stable Audio, ACE-Step), capture the donor's keys/values once
            per sample and leave the donor row out of the sweep's generations; ``False``, or a joint-
            attention family (SD3, FLUX): the donor rides along in every generation.
        sites: restrict to some sites (indices ``"0-3,9"`` or name patterns); default all.
        step_window: patch only at steps ``"a:b"``.
        scorer: overrides the concept's scorer.
        stream: only the sites reading this conditioning stream (AudioLDM2: ``"gpt2"`` or ``"t5"``);
            default every site, each patched from the donor in its own stream.
        scorer_options: options for the scorer, over the concept's ``scorer_options`` (e.g.
            ``{"model": "/data/clap"}``: a local checkpoint for the CLAP scorer).
        out: a directory for result files and the resume state; ``None`` keeps everything in memory.
        samples: with ``out``, also write base / donor / top-site outputs of the first sample.
        heads: head-level patching: a list of head indices patches only those heads of each site;
            ``"each"`` scans every head of every chosen site as a unit of its own (``SITE#hN``), e.g.
            ``scan(model, concept, sites="10", heads="each")`` for the heads of SD3's block 10.
        adaptive: successive halving over samples (patch/trace): fewer rows, same leaders.
        search: ``"greedy"`` or ``"window"`` set search after the ranking, with necessity.
        window_size, tau: the window search's width; the greedy search's target joint effect.
        step_map: cut the steps into this many windows and map the leading sites' effect per window.
        control: with ``search``, also patch this many random sets of the found set's size (the
            specificity control: ``result.extra["set_search"]["random_sets"]``).

    Returns:
        A :class:`Result`: ``ranking``, ``effects``, ``selected`` and per-site bootstrap CIs; set search,
        step map and adaptive reports under ``result.extra``.
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if search is not None and search not in SEARCHES:
        raise UserError(f"unknown search {search!r}; known: {', '.join(SEARCHES)}")
    if batch_size != "auto" and not isinstance(batch_size, int):
        raise UserError(f"batch size is a number of prompt rows or 'auto', got {batch_size!r}")
    for label, value, least in (("seeds", seeds, 1), ("batch size", None if batch_size == "auto" else batch_size, 2),
                                ("max pairs", max_pairs, 1), ("steps", steps, 1),
                                ("window size", window_size, 1), ("step map", step_map, 0),
                                ("control", control, 0)):
        if value is not None and value < least:
            raise UserError(f"{label} must be at least {least}, got {value}")
    if not 0 < tau <= 1.5:
        raise UserError(f"tau is a target joint effect (1 = the donor's score), got {tau}")
    if not isinstance(model, Model):
        model = load(model)
    if not isinstance(concept, Concept):
        concept = Concept.load(concept)
    if max_pairs is not None and max_pairs < len(concept.pairs):
        keep = sorted(random.Random(0).sample(range(len(concept.pairs)), max_pairs))
        concept = dataclasses.replace(concept, pairs=[concept.pairs[i] for i in keep])
    scorer = scorer_for(model, concept, scorer, scorer_options)
    try:
        window = step_window if isinstance(step_window, StepWindow) else StepWindow.parse(step_window)
    except ValueError as e:
        raise UserError(str(e)) from None
    chosen = select_sites(model.sites, sites, stream)
    rows = single_site_rows(chosen, heads)
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"] if guidance is None else guidance
    warnings: list[str] = []
    if method == "contribution":
        from .contribution import supported

        if heads is not None or not supported(chosen):
            why = "head-level units" if heads is not None else "sites that declare no value taps"
            warnings.append(f"contribution cannot score {why}; fell back to the patch method")
            method = "patch"
    config = {"seeds": seeds, "steps": steps, "guidance": guidance, "batch_size": batch_size, "max_pairs": max_pairs,
              "step_window": [window.start, window.end], "scorer": scorer.name, "stream": stream,
              "sites": [s.name for s in chosen], "pairs": len(concept.pairs),
              "heads": heads if heads is None or isinstance(heads, str) else sorted({int(h) for h in heads}),
              "adaptive": adaptive, "search": search, "step_map": step_map, "control": control,
              "donor": "cached" if cached_donor and model.adapter.cached_donor else "in-batch",
              "device": str(model.device), "dtype": str(next(model.denoiser.parameters()).dtype)}
    # What the resumable scores depend on (not batching, seeds count or extras: those reuse rows).
    identity = {k: config[k] for k in ("steps", "guidance", "step_window", "scorer")}
    identity.update(model=model.name, method=method, pairs=[vars(p) for p in concept.pairs], target=concept.target)
    group = processes()
    state = ScanState(out, identity, group.rank, group.world)
    if group.world > 1:
        # Every process starts from what any of them found (no shared filesystem needed), and all have
        # read before any writes: they share out the same pending work.
        state.merge(group.gather((state.samples, state.records)))
        state.resumed = sum(len(v) for v in state.samples.values())
    seed_ids = range(seeds)
    units = _units(model, concept, method, seed_ids)
    size = len(rows) + 2 if batch_size == "auto" else batch_size  # auto: one generation per sample, split to fit
    generations = len(units) * len(chunks(len(rows), size))
    if group.world > generations and method != "contribution":
        warnings.append(f"{group.world} processes share {generations} generations: "
                        f"{group.world - generations} of them had nothing to do")
    fits: dict[str, int] = {}  # the most prompt rows per generation that fit in memory, once one did not
    donors: dict[str, Any] | None = {} if cached_donor else None  # the donor's taps (and output), once per sample
    run = partial(evaluate, model, scorer, steps=steps, guidance=guidance, batch_size=size,
                  window=window, state=state, progress=progress, fits=fits, donors=donors)
    extra: dict[str, Any] = {}

    if method == "contribution":
        from .contribution import contribution_scores

        raw = contribution_scores(model, concept, chosen, seeds=seed_ids, steps=steps, guidance=guidance,
                                  batch_size=size, progress=progress)
        top = float(np.max(raw.mean(axis=0))) or 1.0
        eff, ci = raw.mean(axis=0) / top, stats.bootstrap_mean_ci(raw / top, n_boot=n_boot)
        extra["contribution"] = {"raw": raw.mean(axis=0).tolist(), "per_sample": raw.tolist()}
    elif method == "attribution":
        from .attribution import SURROGATE, attribution_scores

        if scorer.name != "reference":
            warnings.append(f"the {scorer.name} scorer is not differentiable; attribution ranks by the "
                            f"{SURROGATE} (--method auto confirms the candidates with {scorer.name})")
        base, donor, patched = attribution_scores(model, units, rows, steps=steps, guidance=guidance,
                                                  window=window, progress=progress)
        eff, ci = stats.effects(base, donor, patched), stats.bootstrap_ci(base, donor, patched, n_boot=n_boot)
        extra["samples"] = {"ids": [u.id for u in units], "base": base.tolist(), "donor": donor.tolist(),
                            "patched": patched.tolist(), "score": SURROGATE}
    elif method == "auto":
        from .auto import auto

        eff, ci, extra["auto"] = auto(partial(run, desc="auto: patch"), model, units, rows, steps=steps,
                                      guidance=guidance, window=window, n_boot=n_boot, progress=progress)
    elif adaptive:
        from .adaptive import successive_halving

        eff, ci, extra["adaptive"] = successive_halving(partial(run, desc=f"{method} adaptive"), units, rows,
                                                        n_boot=n_boot)
    else:
        raw = run(units, rows, desc=method)
        eff = stats.effects(raw.base, raw.donor, raw.rows)
        ci = stats.bootstrap_ci(raw.base, raw.donor, raw.rows, n_boot=n_boot)
        extra["samples"] = {"ids": raw.units, "base": raw.base.tolist(), "donor": raw.donor.tolist(),
                            "patched": raw.rows.tolist()}
        if raw.records:
            extra["metrics"] = {
                "score": scorer.meaning or f"the {scorer.name} score",
                "base": scorer.summarize(raw.records["base"]), "donor": scorer.summarize(raw.records["donor"]),
                "sites": {r.key: scorer.summarize(raw.records[r.key]) for r in rows}}
    extra["effect"] = EFFECTS[method]
    if not np.isfinite(eff).any():
        warnings.append(f"the {scorer.name} scorer scores donor and base alike, so no effect can be "
                        f"measured; {scorer.flat_hint or 'check the concept pairs and the scorer'}")
    picked = stats.select(eff, ci=ci)
    extra["undecided"] = {rows[i].key: {"effect": float(eff[i]), "ci": [float(c) for c in ci[i]],
                                        "samples_needed": n}
                          for i, n in stats.undecided(eff, ci, len(units)).items()}
    result = Result(
        model=model.name, concept=concept.name, method=method,
        sites=[SiteEffect(r.index, r.key, float(e), [float(c) for c in c2]) for r, e, c2 in zip(rows, eff, ci)],
        selected=[rows[i].key for i in picked], runtime_s=0.0, config=config,
        extra={"selection_rule": stats.SELECTION_RULE.format(rel=0.5, min_effect=0.1) + ", " + stats.CI_RULE,
               **extra,
               "resumed_rows": state.resumed, "warnings": warnings, "versions": versions(),
               # the report lays out sites per conditioning stream (AudioLDM2's two side by side)
               **({"site_streams": {s.name: s.stream for s in chosen}}
                  if len({s.stream for s in chosen}) > 1 else {})},
    )
    by_key = {r.key: r for r in rows}
    if search:
        from . import search as set_search

        how = set_search.greedy if search == "greedy" else set_search.windows
        arg = {"tau": tau} if search == "greedy" else {"size": window_size}
        found = result.extra["set_search"] = how(partial(run, units, desc=search), rows, **arg)
        if control and found["sites"]:
            found["random_sets"] = set_search.random_sets(partial(run, units, desc="control"), rows,
                                                          size=len(found["sites"]), n=control,
                                                          exclude=found["sites"])
    if step_map:
        from .stepmap import step_map as map_steps

        leaders = [by_key[k] for k in (result.selected or result.ranking[:3])]
        result.extra["step_map"] = map_steps(partial(run, units, desc="step map"), leaders, steps, step_map)
    if out is not None and samples and chosen and group.main:
        result.extra["sample_files"] = _write_samples(model, concept, result, by_key, Path(out), steps,
                                                      guidance, window)
    # Every process scored its share of the rows; the results are the same on every process.
    peaks = group.gather(peak_memory_mb(model.device))
    config.update(processes=group.world, rows_per_process=group.gather(state.computed),
                  rows_per_generation_fit=fits.get("rows"),
                  peak_memory_mb={"kind": peaks[0]["kind"], "per_process": [p["mb"] for p in peaks]})
    result.runtime_s = time.perf_counter() - start
    if out is not None and group.main:
        result.save(out)
        state.clear()
    return result


def _units(model: Model, concept: Concept, method: str, seeds: Sequence[int]) -> list[Unit]:
    """The samples: (pair, seed). ``trace`` pairs the clean donor with its corrupted self."""
    if method == "trace":
        from .trace import trace_units

        return trace_units(model, concept, seeds)
    return [Unit(f"{p}/{s}", s, pair.base, pair.donor, concept.target_for(pair))
            for p, pair in enumerate(concept.pairs) for s in seeds]


def _write_samples(model: Model, concept: Concept, result: Result, by_key: dict[str, Row], out: Path,
                   steps: int, guidance: float, window: StepWindow) -> list[str]:
    """Base, donor, top site patched and the selected set patched, for the first pair and seed 0."""
    pair = concept.pairs[0]
    top = by_key[result.ranking[0]]
    rows = {"donor": None, "base": None, f"top-site{top.index:02d}": top}
    if len(result.selected) > 1:
        rows["selected-set"] = join([by_key[k] for k in result.selected])
    prompts = [pair.donor] + [pair.base] * (len(rows) - 1)
    plan = [Patch(site, rows=(r,), source=0, window=window, heads=h)
            for r, row in enumerate(rows.values()) if row is not None for site, h in row.patches()]
    outs = model.generate(prompts, plan, seed=0, steps=steps, guidance=guidance)
    return [str(save_output(out / "samples" / label, o, model.modality, model.sample_rate).relative_to(out))
            for label, o in zip(rows, outs)]
