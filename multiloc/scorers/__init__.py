"""Scorers: how much of a concept an output shows. One file per scorer; :func:`get_scorer` by name.

A scorer returns one float per output, higher meaning more of the concept. ``reference`` scorers
compare each output with the donor's own output (``targets`` are outputs); the others look for a
text target (``targets`` are strings: a word for OCR, a caption for CLIP/CLAP).

A scorer may also keep per-output records of further metrics (:meth:`Scorer.evaluate`, e.g. the
text OCR read and its precision / recall) and sum them up over a corpus (:meth:`Scorer.summarize`);
a scan then reports those summaries for the base, the donor and every site in ``result.json``.

Example::

    scorer = multiloc.get_scorer("reference")
    scorer.score([patched_img], [donor_img])     # [-0.0012]
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from typing import Any, ClassVar

from ..errors import UserError


class Scorer:
    """Base class: ``score(outputs, targets) -> list[float]``, one per output."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "any"  # "image", "audio" or "any"
    reference: ClassVar[bool] = False  # True: targets are the donor's outputs
    meaning: ClassVar[str] = ""  # what one score is, for result.json
    flat_hint: ClassVar[str] = ""  # why donor and base might score alike, for the scan's warning

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        raise NotImplementedError

    def evaluate(self, outputs: Sequence[Any], targets: Sequence[Any]
                 ) -> tuple[list[float], list[dict[str, Any]] | None]:
        """Scores and per-output records of further metrics (JSON-safe dicts), or ``None``."""
        return self.score(outputs, targets), None

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Corpus-level metrics from the records of several outputs (default: none)."""
        return {}


# name -> "module:Class", imported on first use so heavy scorers cost nothing until asked for.
BUILTIN: dict[str, str] = {
    "reference": "multiloc.scorers.reference:ReferenceScorer",
    "ocr": "multiloc.scorers.ocr:OcrScorer",
    "clip": "multiloc.scorers.clip:ClipScorer",
    "toxicity": "multiloc.scorers.toxicity:ToxicityScorer",
    "colour": "multiloc.scorers.pixels:ColourScorer",
    "shape": "multiloc.scorers.pixels:ShapeScorer",
    "instrument": "multiloc.scorers.tones:InstrumentScorer",
    "pitch": "multiloc.scorers.tones:PitchScorer",
    "clap": "multiloc.scorers.clap:ClapScorer",
    "audio-features": "multiloc.scorers.audio_features:AudioFeatureScorer",
}
_EXTRA: dict[str, type[Scorer]] = {}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Make a scorer class known to :func:`get_scorer` (usable as a decorator)."""
    _EXTRA[cls.name] = cls
    return cls


def scorer_names() -> list[str]:
    return sorted({*BUILTIN, *_EXTRA})


def get_scorer(name: str, **options: Any) -> Scorer:
    """A scorer by name, built with ``options``.

    >>> get_scorer("reference").score([np.zeros((2, 2))], [np.ones((2, 2))])
    [-1.0]
    """
    if name in _EXTRA:
        return _EXTRA[name](**options)
    if name not in BUILTIN:
        raise UserError(f"unknown scorer {name!r}; known: {', '.join(scorer_names())}")
    module, _, cls = BUILTIN[name].partition(":")
    return getattr(import_module(module), cls)(**options)
