"""Image scorers: OCR (Tesseract) on rendered words, CLIP and toxicity with tiny models from config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import multiloc
from multiloc.build import char_tokenizer

from .conftest import render_word

WORDS = ["house", "water", "garden", "music", "river", "coffee"]


def test_ocr_reads_rendered_words(ocr_scorer):
    read = ocr_scorer.read([render_word(w) for w in WORDS])
    assert sum(r == w for r, w in zip(read, WORDS)) >= 5, read
    scores, records = ocr_scorer.evaluate([render_word(w) for w in WORDS[:2]], WORDS[:2])
    assert scores == [1.0, 1.0]
    assert [r["word_accuracy"] for r in records] == [1.0, 1.0]


def test_ocr_reads_nothing_in_noise(ocr_scorer):
    rng = np.random.default_rng(0)
    noise = [rng.random((n, n, 3)).astype(np.float32) for n in (16, 64, 256)]
    assert ocr_scorer.read(noise) == ["", "", ""]
    assert ocr_scorer.score(noise, ["cat"] * 3) == [0.0, 0.0, 0.0]


def test_ocr_scores_against_the_target(ocr_scorer):
    img = render_word("silent")
    assert ocr_scorer.score([img, img, img], ["listen", "silent", "sun"]) == pytest.approx([1.0, 1.0, 4 / 9])
    # "sun": s and n match, P = 2/6, R = 2/3, F1 = 4/9
    summary = ocr_scorer.summarize(ocr_scorer.evaluate([img, img], ["listen", "silent"])[1])
    assert summary["f1"] == 1.0 and summary["word_accuracy"] == 0.5 and summary["read_nothing"] == 0
    assert summary["texts"] == ["silent", "silent"]


def test_unknown_ocr_backend_is_a_user_error():
    with pytest.raises(multiloc.UserError, match="unknown OCR backend"):
        multiloc.get_scorer("ocr", backend="paddle")


def test_easyocr_missing_is_a_user_error():
    try:
        import easyocr  # noqa: F401
    except ImportError:
        with pytest.raises(multiloc.UserError, match="multiloc\\[easyocr\\]"):
            multiloc.get_scorer("ocr", backend="easyocr")
    else:
        pytest.skip("EasyOCR is installed; its weights are not available offline")


# --- CLIP ---------------------------------------------------------------------------------------
def tiny_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    from multiloc.scorers.clip import _pil_image_processor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    processor = _pil_image_processor()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config), char_tokenizer(77), processor


@pytest.fixture
def clip_scorer():
    model, tok, proc = tiny_clip()
    return multiloc.get_scorer("clip", model=model, tokenizer=tok, image_processor=proc)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.random((40, 48, 3)).astype(np.float32) for _ in range(3)]


def test_clip_embeddings_shapes_and_normalization(clip_scorer, images):
    img = clip_scorer.embed_images(images)
    txt = clip_scorer.embed_texts(["a cat", "a dog on a sofa"])
    assert img.shape == (3, 8) and txt.shape == (2, 8)
    np.testing.assert_allclose(img.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(txt.norm(dim=-1).numpy(), 1.0, rtol=1e-5)


def test_clipscore_is_w_times_clipped_cosine(clip_scorer, images):
    texts = ["a cat", "a dog", "a red cube"]
    cos = (clip_scorer.embed_images(images) * clip_scorer.embed_texts(texts)).sum(-1).numpy()
    got = np.array(clip_scorer.score(images, texts))
    np.testing.assert_allclose(got, 2.5 * np.maximum(cos, 0), rtol=1e-5, atol=1e-6)
    assert len(got) == 3 and ((got >= 0) & (got <= 2.5)).all()


def test_clip_image_to_image_is_cosine(clip_scorer, images):
    assert clip_scorer.score(images, images) == pytest.approx([1.0] * 3, abs=1e-5)
    a, b = clip_scorer.embed_images(images[:1]), clip_scorer.embed_images(images[1:2])
    assert clip_scorer.score(images[:1], images[1:2])[0] == pytest.approx(float((a * b).sum()), abs=1e-6)
    ref = multiloc.get_scorer("clip", model=clip_scorer.model, tokenizer=clip_scorer.tokenizer,
                              image_processor=clip_scorer.processor, reference=True)
    assert ref.reference and not clip_scorer.reference


def test_clip_is_deterministic(images):
    model, tok, proc = tiny_clip()
    first = multiloc.get_scorer("clip", model=model, tokenizer=tok, image_processor=proc, batch_size=2)
    again = multiloc.get_scorer("clip", model=tiny_clip()[0], tokenizer=tok, image_processor=proc)
    texts = ["a cat"] * 3
    assert first.score(images, texts) == first.score(images, texts)
    np.testing.assert_allclose(first.score(images, texts), again.score(images, texts), rtol=1e-6)


def test_clip_model_object_needs_its_processors():
    with pytest.raises(multiloc.UserError, match="tokenizer and image_processor"):
        multiloc.get_scorer("clip", model=tiny_clip()[0])


# --- toxicity -----------------------------------------------------------------------------------
def tiny_classifier(id2label):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=130, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3, type_vocab_size=1, num_labels=2, id2label=id2label,
                           label2id={v: k for k, v in id2label.items()})
    return RobertaForSequenceClassification(config), char_tokenizer(128)


def test_toxicity_probabilities_from_a_tiny_classifier(ocr_scorer):
    model, tok = tiny_classifier({0: "neutral", 1: "toxic"})
    scorer = multiloc.get_scorer("toxicity", model=model, tokenizer=tok, reader=ocr_scorer.read)
    probs = scorer.classify(["house", "", "coffee"])
    assert probs[1] == 0.0  # nothing read: not toxic
    with torch.no_grad():
        enc = tok(["house"], return_tensors="pt")
        expected = model(**enc).logits.softmax(-1)[0, 1].item()
    assert probs[0] == pytest.approx(expected, abs=1e-6)
    assert 0 < probs[2] < 1
    # the toxic label is found by name, wherever it sits
    flipped, _ = tiny_classifier({0: "toxic", 1: "neutral"})
    other = multiloc.get_scorer("toxicity", model=flipped, tokenizer=tok, reader=ocr_scorer.read)
    assert other.classify(["house"])[0] == pytest.approx(1 - expected, abs=1e-6)
    # end to end: OCR reads the image, the classifier scores the text
    scores, records = scorer.evaluate([render_word("house"), np.ones((32, 32, 3))], [None, None])
    assert [r["text"] for r in records] == ["house", ""]
    assert scores == pytest.approx([expected, 0.0], abs=1e-6)
    summary = scorer.summarize(records)
    assert summary["n"] == 2 and summary["toxic_rate"] == (0.5 if expected > 0.5 else 0.0)


def test_missing_tesseract_fails_in_ci_and_skips_elsewhere(monkeypatch):
    import shutil

    from .conftest import require_tesseract

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("TESSERACT_CMD", raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run here"):
        require_tesseract()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tesseract()
    with pytest.raises(multiloc.UserError, match="apt-get install tesseract-ocr"):
        multiloc.get_scorer("ocr")
