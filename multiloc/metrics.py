"""Metrics: how well a word was written (OCR text against a target) and how well an image or clip was kept.

Text metrics follow the code of the ICLR 2025 text-localization paper:

- **character precision / recall** per sample: both strings are lower-cased and split into
  characters; each predicted character that is still unmatched in the target is matched once
  (a multiset intersection). precision = matched / len(prediction), recall = matched / len(target).
  Order is ignored, so an anagram scores 1 ("listen" read for "silent"). Spaces count as
  characters (they match only spaces of the target), as in the authors' code.
- **corpus F1** = 2PR / (P + R) with P and R the means of the per-sample precisions and recalls.
- **word accuracy**: the prediction equals the target, case-insensitive, whitespace collapsed.
- **Levenshtein similarity**: 1 - edit distance / length of the longer string (1 when both are empty).

Image metrics (for editing: is the background kept?) come from scikit-image. SSIM uses the
Gaussian-window setting of Wang et al. (11 x 11, sigma 1.5), as ``pytorch_msssim`` (the authors'
choice) does.

Example::

    char_prf("silent", "listen")                   # (1.0, 1.0, 1.0)
    corpus_scores(["cat", ""], ["cat", "dog"])     # {'precision': 0.5, 'recall': 0.5, 'f1': 0.5, ...}
    ssim(image, image), psnr(image, noisy), mse(image, noisy)
    log_spectral_distance(clip, other_clip)         # audio: dB RMS between spectrograms
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


# --- text -------------------------------------------------------------------------------------
def _chars(text: str) -> list[str]:
    # As the authors: lower-case, then each character stripped (a space becomes "", which still
    # counts as a character and matches only the target's spaces).
    return [c.strip() for c in text.strip().lower()]


def char_prf(prediction: str, target: str) -> tuple[float, float, float]:
    """Character-multiset precision, recall and F1 of one prediction against its target.

    >>> char_prf("silent", "listen")
    (1.0, 1.0, 1.0)
    >>> char_prf("cab", "cat")
    (0.6666666666666666, 0.6666666666666666, 0.6666666666666666)
    """
    pred, gt = _chars(prediction), _chars(target)
    matched = sum((Counter(pred) & Counter(gt)).values())
    p = matched / len(pred) if pred else 0.0
    r = matched / len(gt) if gt else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def word_accuracy(prediction: str, target: str) -> float:
    """1.0 if the prediction is the target (case-insensitive, whitespace collapsed), else 0.0."""
    return float(" ".join(prediction.lower().split()) == " ".join(target.lower().split()))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1).

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def levenshtein_similarity(prediction: str, target: str) -> float:
    """1 - edit distance / the longer length, case-insensitive; 1.0 when both are empty."""
    a, b = prediction.strip().lower(), target.strip().lower()
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def text_scores(prediction: str, target: str) -> dict[str, float]:
    """All per-sample text metrics of one prediction against its target."""
    p, r, f = char_prf(prediction, target)
    return {"precision": p, "recall": r, "f1": f, "word_accuracy": word_accuracy(prediction, target),
            "levenshtein": levenshtein_similarity(prediction, target)}


def corpus_scores(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """Corpus metrics as the paper reports them: mean precision P and recall R, F1 = 2PR / (P + R),
    mean word accuracy and mean Levenshtein similarity.

    >>> corpus_scores(["cat", ""], ["cat", "dog"])["f1"]
    0.5
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    return summarize_text([text_scores(p, t) for p, t in zip(predictions, targets)])


def summarize_text(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Corpus metrics from per-sample :func:`text_scores` records (see :func:`corpus_scores`)."""
    if not records:
        return {"n": 0}
    mean = {k: float(np.mean([r[k] for r in records]))
            for k in ("precision", "recall", "word_accuracy", "levenshtein")}
    p, r = mean["precision"], mean["recall"]
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0,
            "word_accuracy": mean["word_accuracy"], "levenshtein": mean["levenshtein"], "n": len(records)}


# --- images -----------------------------------------------------------------------------------
def _skimage_metrics() -> Any:
    try:
        from skimage import metrics as skm
    except ImportError:
        from .errors import UserError

        raise UserError("image metrics need scikit-image: pip install 'multiloc[metrics]'") from None
    return skm


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    return a, b


def mse(a: Any, b: Any) -> float:
    """Mean squared error between two images (HxW or HxWxC arrays on the same scale)."""
    return float(_skimage_metrics().mean_squared_error(*_pair(a, b)))


def psnr(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images); ``data_range`` 1 for [0, 1]
    floats, 255 for 8-bit values."""
    a, b = _pair(a, b)
    if np.array_equal(a, b):
        return float("inf")  # skimage divides by zero here
    return float(_skimage_metrics().peak_signal_noise_ratio(a, b, data_range=data_range))


def ssim(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Structural similarity (1 for identical images), Gaussian window of Wang et al.

    >>> ssim(img, img)
    1.0
    """
    a, b = _pair(a, b)
    return float(_skimage_metrics().structural_similarity(
        a, b, data_range=data_range, channel_axis=-1 if a.ndim == 3 else None,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


# --- audio ------------------------------------------------------------------------------------
def _stft_db(x: np.ndarray, n_fft: int, hop: int, floor_db: float) -> np.ndarray:
    """Hann-windowed STFT magnitudes in dB, floored at ``floor_db``: (..., frames, freqs) for (..., samples)."""
    if x.shape[-1] < n_fft:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - x.shape[-1])])
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :] * np.hanning(n_fft)
    return np.maximum(20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)) + 1e-12), floor_db)


def log_spectrogram(audio: Any, n_fft: int = 256, hop: int = 64, floor_db: float = -80.0) -> np.ndarray:
    """Log-magnitude STFT of a clip (mono: channels averaged), in dB above ``floor_db``: (freqs, frames)."""
    y = np.asarray(audio, dtype=np.float64)
    return _stft_db(y.mean(axis=0) if y.ndim == 2 else y, n_fft, hop, floor_db).T


def spectrogram_ssim(a: Any, b: Any, n_fft: int = 256, hop: int = 64, floor_db: float = -80.0) -> float:
    """SSIM of two clips' log spectrograms (dB, both clipped to the same ``floor_db``..peak range): the
    audio counterpart of an image SSIM for "what was kept" (1 for identical clips).

    >>> spectrogram_ssim(clip, clip)
    1.0
    """
    sa = log_spectrogram(a, n_fft, hop, floor_db)
    sb = log_spectrogram(b, n_fft, hop, floor_db)
    if sa.shape != sb.shape:
        raise ValueError(f"clips differ in length: spectrograms {sa.shape} and {sb.shape}")
    top = max(sa.max(), sb.max())
    return ssim(sa - floor_db, sb - floor_db, data_range=max(top - floor_db, 1e-6))


def log_spectral_distance(a: Any, b: Any, n_fft: int = 256) -> float:
    """Root-mean-square difference in dB of two clips' magnitude spectrograms (0 for identical clips).

    Hann-windowed frames of ``n_fft`` samples, hop ``n_fft // 2``; magnitudes floored at -100 dB so
    silence does not dominate. Clips are mono or (channels, samples), compared over the shorter.

    >>> log_spectral_distance(clip, clip)
    0.0
    """
    n = min(np.shape(a)[-1], np.shape(b)[-1])

    def spectrum(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])[:, :n]
        return _stft_db(x, n_fft, n_fft // 2, -100.0)

    return float(np.sqrt(np.mean((spectrum(a) - spectrum(b)) ** 2)))
