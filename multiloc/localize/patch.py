"""The ``patch`` method: every site as a row of batched generations.

For each prompt pair and seed, rows are the donor, the base, and the base with one site's
conditioning taps patched from the donor row (same step, same noise). Rows are chunked into
generations of ``batch_size`` prompts (the donor rides in every chunk as the in-batch source):

    chunk 0:  [donor, base, base+site0, base+site1, ...]
    chunk 1:  [donor, base+site(B-2), ...]

so N sites cost about N / (B - 1) generations instead of the papers' 1 + N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..concepts import Concept
from ..errors import UserError
from ..interventions import Patch, StepWindow
from ..model import Model
from ..results import ScanState
from ..scorers import Scorer
from ..sites import Site


@dataclass(frozen=True)
class Unit:
    """What one patched row patches: a whole site, or some of its heads (``name`` labels the row)."""

    name: str
    site: str
    index: int
    heads: tuple[int, ...] | None = None


def units_for(sites: Sequence[Site], heads: str | Sequence[int] | None) -> list[Unit]:
    """Scan units: one per site (``heads=None``: all heads; a list: only those heads of every site), or
    with ``heads="each"`` one per head of every site, labelled ``SITE#hN``."""
    if heads is None:
        return [Unit(s.name, s.name, s.index) for s in sites]
    for s in sites:
        if not s.heads:
            raise UserError(f"site {s.name!r} has no attention heads; head-level patching needs them")
    if heads == "each":
        return [Unit(f"{s.name}#h{h}", s.name, s.index, (h,)) for s in sites for h in range(s.heads)]
    chosen = tuple(sorted(set(int(h) for h in heads)))
    for s in sites:
        bad = [h for h in chosen if not 0 <= h < s.heads]
        if bad:
            raise UserError(f"head {bad[0]} does not exist in {s.name!r}, which has heads 0-{s.heads - 1}")
    return [Unit(s.name, s.name, s.index, chosen) for s in sites]


@dataclass
class Scores:
    """Raw scores: ``base``/``donor`` per sample (U,), ``patched`` per sample and site (U, N);
    ``records``: the scorer's per-output records by row (``"base"``, ``"donor"``, site name), one per
    sample, where the scorer keeps any."""

    samples: list[str]
    base: np.ndarray
    donor: np.ndarray
    patched: np.ndarray
    records: dict[str, list[dict]] = field(default_factory=dict)


def chunks(n_sites: int, batch_size: int) -> list[tuple[bool, range]]:
    """(with_base, site range) per generation: chunk 0 also holds the base row."""
    out, start, first = [], 0, True
    while start < n_sites or first:
        room = batch_size - (2 if first else 1)
        out.append((first, range(start, min(start + room, n_sites))))
        start += room
        first = False
    return out


def patch_scores(model: Model, concept: Concept, scorer: Scorer, sites: Sequence[Unit], *,
                 seeds: Sequence[int], steps: int, guidance: float, batch_size: int,
                 window: StepWindow, state: ScanState, progress: bool = True) -> Scores:
    """Score base, donor and every unit's patch (see :class:`Unit`) for every pair and seed (resumable)."""
    plan_chunks = chunks(len(sites), batch_size)
    samples = [(p, s) for p in range(len(concept.pairs)) for s in seeds]
    bar = tqdm(total=len(samples) * len(plan_chunks), desc=f"patch {model.name}", unit="gen",
               disable=not progress)
    for p, seed in samples:
        pair = concept.pairs[p]
        done = state.get(f"{p}/{seed}")
        target = None if scorer.reference else concept.target_for(pair)
        for with_base, site_range in plan_chunks:
            todo = [i for i in site_range if sites[i].name not in done]
            if not todo and (not with_base or "base" in done):
                bar.update(1)
                continue
            prompts = [pair.donor] + ([pair.base] if with_base else []) + [pair.base] * len(todo)
            first = 2 if with_base else 1
            plan = [Patch(sites[i].site, rows=(first + j,), source=0, window=window, heads=sites[i].heads)
                    for j, i in enumerate(todo)]
            outs = model.generate(prompts, plan, seed=seed, steps=steps, guidance=guidance)
            # The donor is scored once (chunk 0); later chunks only need it as the reference.
            scored = outs if with_base else outs[1:]
            targets = [outs[0] if scorer.reference else target] * len(scored)
            values, records = scorer.evaluate(scored, targets)
            names = (["donor", "base"] if with_base else []) + [sites[i].name for i in todo]
            done.update(zip(names, map(float, values)))
            if records is not None:
                state.records.setdefault(f"{p}/{seed}", {}).update(zip(names, records))
            state.flush()
            bar.update(1)
    bar.close()
    keys = [f"{p}/{s}" for p, s in samples]
    rows = [state.get(k) for k in keys]
    kept = [state.records.get(k, {}) for k in keys]
    names = ["base", "donor"] + [s.name for s in sites]
    # Records only when every row of every sample has one (a scorer that keeps none: empty).
    records = ({n: [r[n] for r in kept] for n in names}
               if all(n in r for r in kept for n in names) else {})
    return Scores(
        samples=keys,
        base=np.array([r["base"] for r in rows]),
        donor=np.array([r["donor"] for r in rows]),
        patched=np.array([[r[s.name] for s in sites] for r in rows]).reshape(len(rows), len(sites)),
        records=records,
    )
