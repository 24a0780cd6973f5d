"""The batched sweep every patching method runs on.

A :class:`Unit` is one sample: a donor and a base (prompts, or a base conditioning such as a
corrupted donor), a seed and a scorer target. A :class:`Row` says what to patch in one base row: a
set of sites, optionally at some steps only. :func:`evaluate` scores the donor, the base and every
row for every unit, in generations of ``batch_size`` prompt rows with the donor as the in-batch
source of every chunk:

    chunk 0:  [donor, base, row0, row1, ...]
    chunk 1:  [donor, row(B-2), ...]

Scores are kept in a :class:`~multiloc.results.ScanState` after each generation, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapter import Conditioning
from ..interventions import Patch, StepWindow
from ..model import Model
from ..results import ScanState
from ..scorers import Scorer

BASE, DONOR = "base", "donor"


@dataclass(frozen=True)
class Row:
    """Patch ``sites`` (jointly) from the donor, at ``window`` (None: the run's window)."""

    sites: tuple[str, ...]
    window: StepWindow | None = None

    @property
    def key(self) -> str:
        w = "" if self.window is None else f"@{self.window.start}:{'' if self.window.end is None else self.window.end}"
        return "+".join(self.sites) + w


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
    """``base``/``donor``: (U,), ``rows``: (U, R) scores, for units and rows in the order asked."""

    units: list[str]
    base: np.ndarray
    donor: np.ndarray
    rows: np.ndarray


def chunks(n_rows: int, batch_size: int, with_base: bool = True) -> list[tuple[bool, range]]:
    """(holds the base row, row range) per generation; the donor takes one slot in each."""
    out, start, first = [], 0, with_base
    while start < n_rows or first:
        room = batch_size - (2 if first else 1)
        out.append((first, range(start, min(start + room, n_rows))))
        start += room
        first = False
    return out


def evaluate(model: Model, scorer: Scorer, units: Sequence[Unit], rows: Sequence[Row], *, steps: int,
             guidance: float, batch_size: int, window: StepWindow, state: ScanState,
             progress: bool = True, desc: str = "patch") -> Scores:
    """Score donor, base and every row for every unit (resumable, see the module docstring)."""
    layout = {u.id: chunks(len(rows), batch_size) for u in units}
    bar = tqdm(total=sum(len(c) for c in layout.values()), desc=f"{desc} {model.name}", unit="gen",
               disable=not progress)
    for unit in units:
        done = state.get(unit.id)
        base_row: str | Conditioning = unit.base if unit.base_cond is None else unit.base_cond
        for with_base, span in layout[unit.id]:
            todo = [rows[i] for i in span if rows[i].key not in done]
            need_base = with_base and (BASE not in done or DONOR not in done)
            if not todo and not need_base:
                bar.update(1)
                continue
            batch = [unit.donor] + [base_row] * (int(need_base) + len(todo))
            first = 1 + int(need_base)
            plan = [Patch(site, rows=(first + j,), source=0, window=row.window or window)
                    for j, row in enumerate(todo) for site in row.sites]
            outs = model.generate(batch, plan, seed=unit.seed, steps=steps, guidance=guidance)
            # The donor is scored once; other chunks need it only as the reference output.
            scored = outs if need_base else outs[1:]
            targets = [outs[0] if scorer.reference else unit.target] * len(scored)
            names = ([DONOR, BASE] if need_base else []) + [r.key for r in todo]
            done.update(zip(names, map(float, scorer.score(scored, targets))))
            state.flush()
            bar.update(1)
    bar.close()
    got = [state.get(u.id) for u in units]
    return Scores(units=[u.id for u in units], base=np.array([g[BASE] for g in got]),
                  donor=np.array([g[DONOR] for g in got]),
                  rows=np.array([[g[r.key] for r in rows] for g in got]).reshape(len(units), len(rows)))
