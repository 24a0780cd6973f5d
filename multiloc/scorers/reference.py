"""The ``reference`` scorer: how close an output comes to the donor's own output.

score = -mean squared difference to the donor's output. The effect of a site,
(s(patched) - s(base)) / (s(donor) - s(base)), then reads as the share of the base-to-donor
distance that patching the site covers: 1 - MSE(patched, donor) / MSE(base, donor) per sample.
It needs no weights and works for any modality (images, audio, latents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import Scorer


class ReferenceScorer(Scorer):
    """Negative mean squared difference to the target output (the donor's output)."""

    name = "reference"
    modality = "any"
    reference = True

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        scores = []
        for out, ref in zip(outputs, targets):
            a, b = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
            if a.shape != b.shape:
                raise ValueError(f"output shape {a.shape} differs from reference shape {b.shape}")
            scores.append(-float(np.mean((a - b) ** 2)))
        return scores
