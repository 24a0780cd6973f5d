"""Exact scorers for the toy audio world (``toy-tones``): ``instrument`` and ``pitch``.

They read a clip the way :mod:`multiloc.toy.tones` synthesizes one, so they need no weights and are
exact on clean renders.

- ``instrument``: how surely the clip is the target instrument (``"saw"``): its harmonic profile and
  sustain against each instrument's centroid, ``d_others / (d_target + d_others)``: 1 at the target's
  centroid, 0.5 on the border with another instrument, towards 0 at another's.
- ``pitch``: 1 when the clip's pitch (of the world's three, the one whose harmonics hold the most
  energy) is the target (``"low"``, ``"mid"`` or ``"high"``), else 0.

Example::

    clip = render("saw", "low", "slow")
    get_scorer("instrument").score([clip], ["saw"])    # [0.91]
    get_scorer("pitch").score([clip], ["low"])         # [1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..toy import tones
from . import Scorer
from .pixels import _check


class _ToneScorer(Scorer):
    """Reads each clip against one target word of ``known``: :meth:`read` gives the score."""

    modality = "audio"
    known: tuple[str, ...] = ()

    def __init__(self, sample_rate: int | None = None) -> None:
        self.sample_rate = sample_rate

    def read(self, clip: Any, target: str, rate: int) -> float:
        raise NotImplementedError

    def score(self, outputs: Sequence[Any], targets: Sequence[Any], sample_rate: int | None = None) -> list[float]:
        words = _check(targets, self.known, self.name)
        rate = sample_rate or self.sample_rate or tones.SAMPLE_RATE
        return [self.read(o, w, rate) for o, w in zip(outputs, words)]


class InstrumentScorer(_ToneScorer):
    """How surely a clip is the target toy instrument (see the module docstring)."""

    name = "instrument"
    known = tones.INSTRUMENTS
    meaning = "d_others / (d_target + d_others) over harmonic profile and sustain (toy instruments)"
    flat_hint = "the instrument scorer knows the toy instruments only (toy-tones outputs)"

    def read(self, clip: Any, target: str, rate: int) -> float:
        return tones.instrument_scores(clip, rate)[target]


class PitchScorer(_ToneScorer):
    """1 when a clip's pitch is the target toy pitch, else 0 (see the module docstring)."""

    name = "pitch"
    known = tuple(tones.PITCHES)
    meaning = "1 if the clip's pitch (the toy pitch whose harmonics hold most energy) is the target"
    flat_hint = "the pitch scorer knows the toy pitches only (toy-tones outputs)"

    def read(self, clip: Any, target: str, rate: int) -> float:
        return float(tones.pitch_of(clip, rate) == target)
