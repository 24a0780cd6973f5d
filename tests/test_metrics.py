"""The paper's text metrics on hand-computed examples, SSIM / PSNR / MSE known answers, sparse-score CIs."""

from __future__ import annotations

import numpy as np
import pytest

from multiloc import metrics


def test_character_multiset_quirk_anagram_scores_one():
    assert metrics.char_prf("listen", "silent") == (1.0, 1.0, 1.0)
    assert metrics.char_prf("LISTEN", "silent") == (1.0, 1.0, 1.0)  # case-insensitive
    # ...while exact word accuracy and Levenshtein see the difference
    assert metrics.word_accuracy("listen", "silent") == 0.0
    assert metrics.levenshtein("listen", "silent") == 4
    assert metrics.levenshtein_similarity("listen", "silent") == pytest.approx(1 - 4 / 6)


@pytest.mark.parametrize("pred, target, p, r", [
    ("cab", "cat", 2 / 3, 2 / 3),
    ("coffees", "coffee", 6 / 7, 1.0),        # an extra letter costs precision only
    ("cofe", "coffee", 1.0, 4 / 6),           # a missing letter costs recall only ("f", "e" twice)
    ("hot dog", "dog", 3 / 7, 1.0),           # the space is a predicted character that matches nothing
    ("", "dog", 0.0, 0.0),                    # nothing read
    ("xyz", "dog", 0.0, 0.0),
])
def test_character_precision_recall(pred, target, p, r):
    got = metrics.char_prf(pred, target)
    f = 2 * p * r / (p + r) if p + r else 0.0
    assert got == pytest.approx((p, r, f))


def test_corpus_f1_is_harmonic_mean_of_mean_precision_and_recall():
    # sample 1: p = 1, r = 1/2; sample 2: p = 1/2, r = 1  ->  P = R = 3/4, F1 = 3/4 (mean per-sample F1 is 2/3)
    s = metrics.corpus_scores(["ab", "abcd"], ["abcd", "ab"])
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)
    assert np.mean([metrics.char_prf(a, b)[2] for a, b in [("ab", "abcd"), ("abcd", "ab")]]) == pytest.approx(2 / 3)
    assert s["n"] == 2


def test_word_accuracy_and_levenshtein():
    assert metrics.word_accuracy(" Coffee ", "coffee") == 1.0
    assert metrics.word_accuracy("new  york", "New York") == 1.0
    assert metrics.word_accuracy("cofee", "coffee") == 0.0
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.levenshtein("", "abc") == 3
    assert metrics.levenshtein_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert metrics.levenshtein_similarity("", "") == 1.0
    assert metrics.levenshtein_similarity("", "dog") == 0.0
    s = metrics.corpus_scores(["coffee", "tea", ""], ["coffee", "sea", "milk"])
    assert s["word_accuracy"] == pytest.approx(1 / 3)
    assert s["levenshtein"] == pytest.approx((1 + 2 / 3 + 0) / 3)


@pytest.fixture
def image():
    return np.random.default_rng(0).random((48, 40, 3))


def test_image_metrics_of_an_image_against_itself(image):
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.mse(image, image) == 0.0
    assert metrics.psnr(image, image) == float("inf")


def test_image_metrics_of_a_known_degradation():
    grey = np.full((32, 32, 3), 0.5)
    brighter = grey + 0.1
    assert metrics.mse(grey, brighter) == pytest.approx(0.01)
    assert metrics.psnr(grey, brighter) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    # flat images: SSIM is its luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 L)^2
    c1 = 0.01**2
    assert metrics.ssim(grey, brighter) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1), abs=1e-6)
    # 8-bit scale gives the same SSIM and PSNR when told its range
    assert metrics.ssim(grey * 255, brighter * 255, data_range=255) == pytest.approx(metrics.ssim(grey, brighter))
    assert metrics.psnr(grey * 255, brighter * 255, data_range=255) == pytest.approx(20.0)


def test_more_noise_scores_worse(image):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=image.shape)
    light, heavy = (np.clip(image + s * noise, 0, 1) for s in (0.02, 0.2))
    assert 1 > metrics.ssim(image, light) > metrics.ssim(image, heavy)
    assert metrics.psnr(image, light) > metrics.psnr(image, heavy)
    assert metrics.mse(image, light) < metrics.mse(image, heavy)
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(image, image[:10])


def test_bootstrap_leaves_out_resamples_without_an_effect():
    """Sparse scores (OCR reads the word in one sample of three): resamples with donor == base are dropped."""
    from multiloc.stats import bootstrap_ci

    base, donor = np.zeros(3), np.array([1.0, 0.0, 0.0])
    patched = np.array([[1.0], [0.5], [0.0]])  # a resample of samples 1 and 2 only: 0.5 / 0 = inf
    lo, hi = bootstrap_ci(base, donor, patched, n_boot=200)[0]
    # with sample 0 drawn k0 times and sample 1 k1 times the effect is 1 + 0.5 k1 / k0: in [1, 2]
    assert 1.0 <= lo <= hi <= 2.0
    assert np.isnan(bootstrap_ci(base, base, patched, n_boot=50)).all()
