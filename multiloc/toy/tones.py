"""The toy audio world: synthetic instruments playing repeated notes, the prompts that name them, and
exact measures that read a clip back.

Four instruments (a sine, a square and a sawtooth wave, and a plucked string whose harmonics die
away) at three pitches (125, 250 and 375 Hz) and two tempos (2 or 4 notes in the first second) make
24 prompts (``"fast low plucked notes"``);
:data:`HELD_OUT` keeps four of them out of training, each instrument once, so the trained model's
accuracy on them measures how it composes what it learnt. Clips are mono, 4 kHz, 1.024 s: small
enough to train on a CPU, wide enough (harmonics up to 2 kHz) to tell the instruments apart.

An instrument is read back from two things the synthesis fixes exactly (:func:`features`): the
harmonic profile (the 2nd, 3rd and 4th harmonics against the fundamental, at the world pitch the clip
is nearest to) and the sustain (how much of the sounding time stays above half the peak level).

Example::

    clip = render("saw", "low", "slow")          # (4096,) floats, peak 0.5
    classify(clip)                                # "saw"
    instrument_scores(clip)["saw"]                # 1.0: exactly at the saw's centroid
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import split as split_combos

SAMPLE_RATE = 4000
CLIP_SAMPLES = 4096  # 1.024 s: 128 latent frames of 32 samples (the toy model's length)
LEAD = 16  # samples of silence first: the MDCT of the toy VAE rebuilds all but the first half-hop
INSTRUMENTS = ("sine", "square", "saw", "plucked")
HOP = 32  # samples per latent frame of the toy model
# Pitches whose periods divide the hop: a held note then looks the same in every latent frame (its
# MDCT coefficients repeat), which a small denoiser learns far faster than drifting phases.
PITCHES: dict[str, float] = {"low": 125.0, "mid": 250.0, "high": 375.0}
TEMPOS: dict[str, int] = {"slow": 2, "fast": 4}  # notes in the sounding second
NOTE_HOPS = {"slow": 62, "fast": 31}  # note lengths in hops, so every note starts at the same phase
PEAK = 0.5

HELD_OUT = (
    ("sine", "high", "fast"),
    ("square", "low", "slow"),
    ("saw", "mid", "fast"),
    ("plucked", "high", "slow"),
)


def prompt(instrument: str, pitch: str, tempo: str) -> str:
    """The prompt that names one clip: ``"fast low plucked notes"``."""
    return f"{tempo} {pitch} {instrument} notes"


def combos(split: str = "all") -> list[tuple[str, str, str]]:
    """(instrument, pitch, tempo) triples: ``"train"``, ``"held-out"`` or ``"all"``."""
    return split_combos([(i, p, t) for i in INSTRUMENTS for p in PITCHES for t in TEMPOS], HELD_OUT, split)


def vocabulary() -> list[str]:
    """Every word a toy prompt uses (the toy tokenizer's vocabulary)."""
    return [*TEMPOS, *PITCHES, *INSTRUMENTS, "notes"]


def _wave(instrument: str, f0: float, t: np.ndarray) -> np.ndarray:
    """One note's waveform, band-limited: only harmonics below the Nyquist frequency are summed, so
    nothing aliases and every harmonic sits where the profile expects it."""
    out = np.zeros_like(t)
    for k in range(1, int(SAMPLE_RATE / 2 / f0) + 1):
        if instrument == "sine" and k > 1:
            break
        if instrument == "square" and k % 2 == 0:
            continue
        amp = 1.0 / k
        if instrument == "plucked":  # a string: every harmonic, the higher ones dying faster
            amp = amp * np.exp(-t * (12.0 + 6.0 * (k - 1)))
        out += amp * np.sin(2 * np.pi * k * f0 * t)
    return out


def _envelope(instrument: str, t: np.ndarray, length: float) -> np.ndarray:
    if instrument == "plucked":
        attack = np.clip(t / 0.002, 0, 1)
        return attack * np.clip((length - t) / 0.01, 0, 1)  # the decay lives in the harmonics
    # held notes: 10 ms in, 30 ms out, silence after
    return np.clip(t / 0.01, 0, 1) * np.clip((length - 0.02 - t) / 0.03, 0, 1)


def render(instrument: str, pitch: str, tempo: str, n: int = CLIP_SAMPLES) -> np.ndarray:
    """One clip, ``(n,)`` float32 at :data:`SAMPLE_RATE`, peak :data:`PEAK`: the notes of about the
    first second (after :data:`LEAD` silent samples), then silence."""
    if instrument not in INSTRUMENTS or pitch not in PITCHES or tempo not in TEMPOS:
        raise ValueError(f"unknown toy tone {(instrument, pitch, tempo)!r}")
    clip = np.zeros(n)
    samples = NOTE_HOPS[tempo] * HOP
    note = np.arange(samples) / SAMPLE_RATE
    one = _wave(instrument, PITCHES[pitch], note) * _envelope(instrument, note, samples / SAMPLE_RATE)
    for start in range(TEMPOS[tempo]):
        s = LEAD + start * samples
        clip[s:s + len(one)] = one[: n - s]
    return (clip * PEAK / np.abs(clip).max()).astype(np.float32)


def _mono(clip: np.ndarray) -> np.ndarray:
    a = np.asarray(clip, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]).mean(0) if a.ndim > 1 else a


def _peak_near(mag: np.ndarray, hz_per_bin: float, freq: float, width_hz: float = 4.0) -> float:
    lo, hi = int((freq - width_hz) / hz_per_bin), int(np.ceil((freq + width_hz) / hz_per_bin)) + 1
    return float(mag[max(lo, 0):hi].max()) if lo < len(mag) else 0.0


def _fundamental(mag: np.ndarray, hz_per_bin: float) -> tuple[str, list[float]]:
    """The world pitch whose first four harmonics (weighted 1, 1/2, 1/3, 1/4) hold the most energy,
    and those four harmonics' peaks. The weights keep a pitch from winning on its octave's energy."""
    harmonics = {p: [_peak_near(mag, hz_per_bin, k * f) for k in range(1, 5)] for p, f in PITCHES.items()}
    best = max(harmonics, key=lambda p: sum(a / k for k, a in enumerate(harmonics[p], 1)))
    return best, harmonics[best]


def features(clip: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """``[h2/h1, h3/h1, h4/h1, sustain]`` of a clip (``None`` when it is silent).

    h_k: the spectrum's peak at the k-th harmonic of the world pitch whose harmonics hold the most
    energy; sustain: among the 10 ms frames that sound (above 5% of the loudest), the share above
    half the loudest (held notes about 0.9, plucked ones far less).
    """
    x = _mono(clip)
    if np.abs(x).max() < 1e-4:
        return None
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    h = _fundamental(mag, sample_rate / len(x))[1]
    ratios = [min(a / max(h[0], 1e-9), 2.0) for a in h[1:]]
    frame = max(sample_rate // 100, 1)
    rms = np.sqrt(np.mean(x[: len(x) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    sounding = rms > 0.05 * rms.max()
    sustain = float((rms > 0.5 * rms.max()).sum() / max(sounding.sum(), 1))
    return np.array([*ratios, sustain])


@lru_cache(maxsize=1)
def centroids() -> dict[str, np.ndarray]:
    """Each instrument's mean :func:`features` over its clean renders (every pitch and tempo)."""
    return {i: np.mean([features(render(i, p, t)) for p in PITCHES for t in TEMPOS], axis=0)
            for i in INSTRUMENTS}


def instrument_scores(clip: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """Per instrument, how surely the clip is it: ``d_others / (d_it + d_others)``, where ``d_it`` is
    the feature distance to its centroid and ``d_others`` the nearest other instrument's. 1 at its
    centroid, 0.5 on the border, towards 0 at another's; all 0 for a silent clip."""
    f = features(clip, sample_rate)
    if f is None:
        return dict.fromkeys(INSTRUMENTS, 0.0)
    d = {i: float(np.linalg.norm(f - c)) for i, c in centroids().items()}
    out = {}
    for i in INSTRUMENTS:
        other = min(v for k, v in d.items() if k != i)
        out[i] = other / (d[i] + other) if d[i] + other > 0 else 0.5
    return out


def classify(clip: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str | None:
    """The instrument whose centroid is nearest (``None`` for a silent clip)."""
    scores = instrument_scores(clip, sample_rate)
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else None


def pitch_of(clip: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str | None:
    """The world pitch (``"low"``, ``"mid"``, ``"high"``) whose harmonics hold the most energy, as
    :func:`features` picks it (``None`` for a silent clip)."""
    x = _mono(clip)
    if np.abs(x).max() < 1e-4:
        return None
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return _fundamental(mag, sample_rate / len(x))[0]
