"""The ``audio-features`` scorer: concepts measurable without a model, with librosa.

score = sign x feature(audio), one of:
  - ``tempo``: beats per minute (librosa's onset-based tempo estimate): fast (+1) / slow (-1);
  - ``centroid``: mean spectral centroid in Hz: bright (+1) / dark (-1);
  - ``pitch``: median fundamental frequency in Hz (YIN, 40 Hz - 2 kHz): high (+1) / low (-1).
Targets are ignored (the feature and its sign are the concept); stereo is averaged to mono.

Example::

    scorer = multiloc.get_scorer("audio-features", feature="tempo", sign=-1)   # "slow"
    scorer.score([waveform], [None], sample_rate=16000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from . import Scorer
from .clap import to_mono

FEATURES = ("tempo", "centroid", "pitch")


def tempo(y: np.ndarray, sr: int) -> float:
    import librosa

    onset = librosa.onset.onset_strength(y=y, sr=sr)
    return float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr))[0])


def centroid(y: np.ndarray, sr: int) -> float:
    import librosa

    n_fft = min(2048, 1 << int(np.log2(max(len(y), 2))))
    return float(np.mean(librosa.feature.spectral_centroid(y=y, sr=sr, n_fft=n_fft, hop_length=n_fft // 4)))


def pitch(y: np.ndarray, sr: int) -> float:
    import librosa

    fmax = min(2000.0, sr / 2 - 1)
    frame = max(2048, int(2 * sr / 40) + 2)  # YIN needs two periods of the lowest pitch per frame
    if len(y) < frame:
        y = np.pad(y, (0, frame - len(y)))
    f0 = librosa.yin(y, fmin=40.0, fmax=fmax, sr=sr, frame_length=frame)
    return float(np.median(f0))


class AudioFeatureScorer(Scorer):
    """A librosa feature with a sign (see the module docstring)."""

    name = "audio-features"
    modality = "audio"
    reference = False

    def __init__(self, feature: str = "tempo", sign: float = 1.0, sample_rate: int | None = None) -> None:
        if feature not in FEATURES:
            raise UserError(f"unknown audio feature {feature!r}; known: {', '.join(FEATURES)}")
        self.feature, self.sign, self.sample_rate = feature, float(sign), sample_rate

    def score(self, outputs: Sequence[Any], targets: Sequence[Any], sample_rate: int | None = None) -> list[float]:
        rate = sample_rate or self.sample_rate
        if not rate:
            raise ValueError("the audio-features scorer needs the audio's sample rate")
        fn = {"tempo": tempo, "centroid": centroid, "pitch": pitch}[self.feature]
        return [self.sign * fn(to_mono(o).astype(np.float32), int(rate)) for o in outputs]
