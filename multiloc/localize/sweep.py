"""The batched sweep every patching method runs on.

A :class:`Unit` is one sample: a donor and a base (prompts, or a base conditioning such as a
corrupted donor), a seed and a scorer target. A :class:`Row` says what to patch in one base row: a
set of sites, optionally at some steps only. :func:`evaluate` scores the donor, the base and every
row for every unit, in generations of ``batch_size`` prompt rows with the donor as the in-batch
source of every chunk:

    chunk 0:  [donor, base, row0, row1, ...]
    chunk 1:  [donor, row(B-2), ...]

Where the family's conditioning does not depend on the step (pure cross-attention: ``adapter.cached_donor``)
the donor's keys/values at every site are captured once per sample (one denoiser call, stopped there)
and set in the patched rows, so only the chunk with the base holds the donor (it is scored there):

    chunk 0:  [donor, base, row0, ...]
    chunk 1:  [row(B-2), ..., row(2B-3)]

Scores are kept in a :class:`~multiloc.results.ScanState` after each generation, so an interrupted
run resumes where it stopped. Under ``torchrun``/``accelerate launch`` the generations are shared out
across the processes (:mod:`multiloc.distributed`) and the scores merged: the same scores as one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapter import Conditioning
from ..distributed import Processes, processes
from ..errors import UserError
from ..hooks import _key as tap_key
from ..hooks import capture, hooks
from ..interventions import Patch, StepWindow
from ..memory import out_of_memory, release
from ..model import Model
from ..results import ScanState
from ..scorers import Scorer

BASE, DONOR = "base", "donor"


@dataclass(frozen=True)
class Row:
    """What one base row patches from the donor: ``sites`` jointly (``heads``: per site, only those
    heads; None: whole sites), at ``window`` (None: the run's window). ``label`` and ``index`` name
    the row in results (a site's name and execution index, or ``SITE#hN`` for a head)."""

    sites: tuple[str, ...]
    window: StepWindow | None = None
    heads: tuple[tuple[int, ...] | None, ...] | None = None
    label: str | None = None
    index: int = -1

    @property
    def key(self) -> str:
        if self.label is not None and self.window is None:
            return self.label
        parts = [s if h is None else f"{s}#h{','.join(map(str, h))}" for s, h in self.patches()]
        w = "" if self.window is None else f"@{self.window.start}:{'' if self.window.end is None else self.window.end}"
        return "+".join(parts) + w

    def patches(self) -> list[tuple[str, tuple[int, ...] | None]]:
        """(site, heads) pairs, one per site: heads of the same site merged, None (all) wins."""
        merged: dict[str, tuple[int, ...] | None] = {}
        for i, site in enumerate(self.sites):
            h = None if self.heads is None else self.heads[i]
            old = merged.get(site, ())
            merged[site] = None if h is None or old is None else tuple(sorted({*old, *h}))
        return list(merged.items())

    def at(self, window: StepWindow) -> Row:
        """The same patch, at ``window`` only."""
        return Row(self.sites, window, self.heads, self.label, self.index)


def join(rows: Sequence[Row], label: str | None = None) -> Row:
    """One row patching everything ``rows`` patch (windows are not joined)."""
    sites = tuple(s for r in rows for s in r.sites)
    heads = tuple(h for r in rows for h in (r.heads or (None,) * len(r.sites)))
    return Row(sites, None, None if all(h is None for h in heads) else heads, label)


@dataclass
class Unit:
    """One sample: ``base_cond`` (optional) replaces the encoded base prompt."""

    id: str
    seed: int
    base: str
    donor: str
    target: Any = None
    base_cond: Conditioning | None = field(default=None, repr=False)


@dataclass
class Scores:
    """``base``/``donor``: (U,), ``rows``: (U, R) scores, for units and rows in the order asked;
    ``records``: the scorer's per-output records by row key (``"base"``, ``"donor"``, a row's key),
    one per unit, where the scorer keeps any for every row."""

    units: list[str]
    base: np.ndarray
    donor: np.ndarray
    rows: np.ndarray
    records: dict[str, list[dict]] = field(default_factory=dict)


def chunks(n_rows: int, batch_size: int, with_base: bool = True, donor: bool = True) -> list[tuple[bool, range]]:
    """(holds the base row, row range) per generation; the donor takes one slot in each (``donor=False``,
    a cached donor: only in the one with the base)."""
    out, start, first = [], 0, with_base
    while start < n_rows or first:
        room = batch_size - (2 if first else int(donor))
        out.append((first, range(start, min(start + room, n_rows))))
        start += room
        first = False
    return out


def evaluate(model: Model, scorer: Scorer, units: Sequence[Unit], rows: Sequence[Row], *, steps: int,
             guidance: float, batch_size: int, window: StepWindow, state: ScanState,
             progress: bool = True, desc: str = "patch", group: Processes | None = None,
             fits: dict[str, int] | None = None, donors: dict[str, Any] | None = None,
             run: Callable[[Unit, list[Row], bool], list[np.ndarray]] | None = None) -> Scores:
    """Score donor, base and every row for every unit (resumable, see the module docstring).

    ``run(unit, rows, with_base)``, when given, makes a chunk's outputs ``[donor, (base), rows...]``
    itself (rows that are not denoiser patches, e.g. causal tracing inside the text encoder).

    Under several processes (``group``, default: :func:`~multiloc.distributed.processes`) the pending
    generations are shared out, each process scores its own, and the scores are merged on every process,
    so every process returns the same :class:`Scores`. Every process must call it with the same arguments.

    A generation that runs out of device memory is split in two and retried (each part with the donor),
    down to the donor and one row; ``fits["rows"]`` keeps the most prompt rows that fit, and later
    generations (pass the same dict to later calls) are split to it before they run.

    Where the family's conditioning does not depend on the step (``adapter.cached_donor``) and
    ``donors`` is a dict (a cache kept across calls), a generation without the base row leaves the donor
    row out: the donor's taps at every site are captured once per sample (one denoiser call) and set in
    the patched rows. A scorer that compares with the donor's output gets the one this process made;
    where this process has not made it yet, the generation keeps the donor (``batch_size`` + 1 prompts).
    """
    group = group or processes()
    fits = {} if fits is None else fits
    cache = donors if donors is not None and model.adapter.cached_donor and run is None else None
    units_by_id = {u.id: u for u in units}
    pending = []  # (unit id, holds the base, row span): the same list on every process
    for unit in units:
        done = state.get(unit.id)
        for with_base, span in chunks(len(rows), batch_size, donor=cache is None):
            todo = sum(rows[i].key not in done for i in span)
            need_base = with_base and (BASE not in done or DONOR not in done)
            if todo or need_base:
                pending.append((unit.id, with_base, span, 1 + need_base + todo))
    mine = group.share(pending, cost=lambda p: p[3])  # cost: the generation's rows
    fresh: tuple[dict[str, dict[str, float]], dict[str, dict]] = ({}, {})  # what this process scored
    bar = tqdm(total=len(mine), desc=f"{desc} {model.name}", unit="gen", disable=not progress or not group.main)
    for unit_id, with_base, span, _ in mine:
        unit = units_by_id[unit_id]
        done = state.get(unit.id)
        base_row: str | Conditioning = unit.base if unit.base_cond is None else unit.base_cond
        todo = [rows[i] for i in span if rows[i].key not in done]
        need_base = with_base and (BASE not in done or DONOR not in done)
        sampling = {"steps": steps, "guidance": guidance}
        outputs = cache.setdefault("outputs", {}) if cache is not None else {}
        cached = cache is not None and not need_base and (unit.id in outputs or not scorer.reference)
        if run is not None:
            outs = run(unit, todo, need_base)
        else:
            taps = _donor_taps(model, unit, cache, sampling) if cached else None
            outs = _outputs(model, unit, base_row, need_base, todo, window, fits, taps, **sampling)
        if not cached:
            donor, outs = outs[0], outs[1:]
            if cache is not None and scorer.reference:
                # The later generations of this sample leave the donor out; one sample's kept (this
                # process's generations come sample by sample), so big outputs do not pile up.
                cache["outputs"] = {unit.id: donor}
        # The donor is scored once; other chunks need it only as the reference output.
        scored = [donor] + outs if need_base else outs
        targets = [(outputs[unit.id] if cached else donor) if scorer.reference else unit.target] * len(scored)
        names = ([DONOR, BASE] if need_base else []) + [r.key for r in todo]
        values, records = scorer.evaluate(scored, targets)
        got = dict(zip(names, map(float, values)))
        done.update(got)
        fresh[0].setdefault(unit.id, {}).update(got)
        if records is not None:
            kept = dict(zip(names, records))
            state.records.setdefault(unit.id, {}).update(kept)
            fresh[1].setdefault(unit.id, {}).update(kept)
        state.computed += len(names)
        state.flush()
        bar.update(1)
    if group.world > 1:
        state.merge(group.gather(fresh))
        state.flush()  # every process's file now holds everything: a resume under any count finds it
    bar.close()
    got = [state.get(u.id) for u in units]
    kept = [state.records.get(u.id, {}) for u in units]
    names = [BASE, DONOR] + [r.key for r in rows]
    records = {n: [k[n] for k in kept] for n in names} if all(n in k for k in kept for n in names) else {}
    return Scores(units=[u.id for u in units], base=np.array([g[BASE] for g in got]),
                  donor=np.array([g[DONOR] for g in got]),
                  rows=np.array([[g[r.key] for r in rows] for g in got]).reshape(len(units), len(rows)),
                  records=records)


def _outputs(model: Model, unit: Unit, base_row: str | Conditioning, need_base: bool, todo: Sequence[Row],
             window: StepWindow, fits: dict[str, int], taps: dict[str, dict] | None = None,
             **sampling: Any) -> list:
    """The donor's (none with ``taps``, its cached conditioning per site), the base's (``need_base``)
    and ``todo``'s outputs, in that order, from one generation, or from several when one does not fit
    in memory (see :func:`evaluate`)."""
    lead = int(taps is None)  # the in-batch donor row
    n = lead + int(need_base) + len(todo)
    if n <= fits.get("rows", n):
        try:
            batch = [unit.donor] * lead + [base_row] * (n - lead)
            first = lead + int(need_base)
            plan = [Patch(site, rows=(first + j,), window=row.window or window, heads=heads,
                          **({"source": 0} if taps is None else {"kind": "set", "value": taps[site]}))
                    for j, row in enumerate(todo) for site, heads in row.patches()]
            return model.generate(batch, plan, seed=unit.seed, **sampling)
        except Exception as e:
            if not out_of_memory(e):
                raise
            release(model.device)
            if n <= 1 + lead:
                raise UserError(f"out of memory on {model.device} with one row{' and the donor' * lead} "
                                f"({n} prompts); use a smaller dtype, fewer pixels or frames, or a bigger device") from e
            fits["rows"] = max(1 + lead, n // 2)
    outs: list = []
    for with_base, span in chunks(len(todo), fits["rows"], with_base=need_base, donor=bool(lead)):
        part = _outputs(model, unit, base_row, with_base, [todo[i] for i in span], window, fits, taps, **sampling)
        outs += part if not outs or taps is not None else part[1:]  # the in-batch donor once: rows are batch-independent
    return outs


class _Captured(Exception):
    """Stops a generation after its first denoiser call (the donor's taps are captured by then)."""


def _donor_taps(model: Model, unit: Unit, cache: dict[str, Any], sampling: dict[str, Any]) -> dict[str, dict]:
    """The donor's taps at every site (site -> tap path -> tensor, with the CFG copies), from the first
    denoiser call of a donor-only generation; the latest sample's are kept in ``cache``."""
    if cache.get("taps_of") != unit.id:
        def stop(module: Any, args: Any, out: Any) -> None:
            raise _Captured

        with capture(model.denoiser, model.sites) as store, hooks(forward=[(model.denoiser, stop)]):
            try:
                model.generate([unit.donor], seed=unit.seed, **sampling)
            except _Captured:
                pass
        keys = {(s.name, t.path if t.kwarg is None else tap_key(t)): (s.name, t.path) for s in model.sites for t in s.taps}
        taps: dict[str, dict] = {}
        for key, calls in store.items():
            site, path = keys[key]
            taps.setdefault(site, {})[path] = calls[0]
        cache.update(taps_of=unit.id, taps=taps)
    return cache["taps"]
