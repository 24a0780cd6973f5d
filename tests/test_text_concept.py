"""The `text` concept (word list, derangement) and a scan of a tiny SD pipeline scored by OCR."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

import multiloc
from multiloc.cli import main
from multiloc.concepts import derange


def _word(prompt: str) -> str:
    return re.fullmatch(r'A sign that says "(.+)"\.', prompt).group(1)


def test_text_concept_pairs_are_a_derangement():
    concept = multiloc.Concept.load("text")
    assert concept.scorer == "ocr" and concept.modality == "image"
    assert len(concept.pairs) == 100
    bases = [_word(p.base) for p in concept.pairs]
    donors = [_word(p.donor) for p in concept.pairs]
    assert all(b != d for b, d in zip(bases, donors))
    assert len(set(bases)) == len(bases) and len(set(donors)) == len(donors)
    # OCR scores each pair against the donor's word
    assert [concept.target_for(p) for p in concept.pairs] == donors
    assert concept.tokens(concept.pairs[0]) == [donors[0]]
    # deterministic: the same file gives the same pairs
    assert multiloc.Concept.load("text").pairs == concept.pairs


@pytest.mark.parametrize("seed", range(20))
def test_derange_never_keeps_a_word(seed):
    words = [f"w{i}" for i in range(2 + seed)]
    pairs = derange(words, seed=seed)
    assert all(b != d for b, d in pairs)
    assert sorted(b for b, _ in pairs) == sorted(words) == sorted(d for _, d in pairs)
    assert derange(words, seed=seed, max_pairs=2) == pairs[:2]


def test_derange_depends_on_the_seed():
    words = [f"w{i}" for i in range(30)]
    assert derange(words, seed=0) == derange(list(words), seed=0)
    assert derange(words, seed=0) != derange(words, seed=1)


def _write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_words_inline_and_from_a_file(tmp_path):
    (tmp_path / "w.txt").write_text("# comment\ncat\n\ndog\nsun\n")
    from_file = multiloc.Concept.from_yaml(_write(tmp_path, "name: t\ntemplate: 'say {word}'\nwords: w.txt\n"
                                                  "target: '{donor}'\nmax_pairs: 2\n"))
    inline = multiloc.Concept.from_yaml(_write(tmp_path, "name: t\ntemplate: 'say {word}'\n"
                                                "words: [cat, dog, sun]\ntarget: '{donor}'\nmax_pairs: 2\n", "d.yaml"))
    assert from_file.pairs == inline.pairs and len(inline.pairs) == 2
    assert all(p.target == p.donor.split()[1] for p in inline.pairs)


@pytest.mark.parametrize("body, message", [
    ("words: missing.txt", "cannot read the word list"),
    ("words: [cat, dog, cat]", "repeats"),
    ("words: [cat]", "at least two words"),
    ("words: [cat, dog]\npairing: shuffle", "unknown pairing"),
    ("words: [cat, dog]\nmax_pairs: 0", "max_pairs"),
])
def test_bad_word_lists(tmp_path, body, message):
    with pytest.raises(multiloc.UserError, match=message):
        multiloc.Concept.from_yaml(_write(tmp_path, f"name: t\ntemplate: 'say {{word}}'\n{body}\n"))


def test_template_needs_one_placeholder(tmp_path):
    with pytest.raises(multiloc.UserError, match="exactly one placeholder"):
        multiloc.Concept.from_yaml(_write(tmp_path, "name: t\ntemplate: '{a} {b}'\nwords: [cat, dog]\n"))


def test_scan_with_ocr_runs_end_to_end(tmp_path, tiny_sd, ocr_scorer):
    """Plumbing on random weights: nothing legible is written, so the effect is NaN with a warning."""
    concept = multiloc.Concept.load("text")
    concept = dataclasses.replace(concept, pairs=concept.pairs[:2])
    result = multiloc.scan(tiny_sd, concept, seeds=1, steps=2, batch_size=9, scorer=ocr_scorer,
                           out=tmp_path, progress=False)
    assert len(result.sites) == len(tiny_sd.sites)
    saved = json.loads((tmp_path / "result.json").read_text())
    metrics = saved["metrics"]
    assert "F1" in metrics["score"] or "f1" in metrics["score"]
    for row in [metrics["base"], metrics["donor"], *metrics["sites"].values()]:
        assert row["n"] == 2 and set(row) >= {"precision", "recall", "f1", "word_accuracy", "levenshtein"}
    assert set(metrics["sites"]) == {s.name for s in tiny_sd.sites}
    # a 16 x 16 image of random weights holds no words: OCR reads nothing, F1 is 0 everywhere
    assert metrics["base"]["read_nothing"] == metrics["donor"]["read_nothing"] == 2
    assert metrics["donor"]["f1"] == 0.0 and metrics["donor"]["texts"] == ["", ""]
    assert all(math.isnan(e) for e in result.effects.values()) and result.selected == []
    assert all(s["effect"] is None for s in saved["sites"])
    assert any("OCR read no text" in w for w in saved["warnings"])
    assert (tmp_path / "effects.png").exists() and (tmp_path / "samples" / "donor.png").exists()


def test_cli_scan_text_concept_with_ocr(tmp_path, capsys, ocr_scorer):
    concept = _write(tmp_path, "name: words\nmodality: image\nscorer: ocr\ntemplate: 'A sign that says \"{word}\".'\n"
                               "words: [cat, dog]\ntarget: '{donor}'\n")
    code = main(["scan", "--model", "tiny-sd", "--concept", str(concept), "--seeds", "1", "--steps", "2",
                 "--batch-size", "9", "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["config"]["scorer"] == "ocr" and saved["config"]["pairs"] == 2
    assert saved["metrics"]["donor"]["n"] == 2
    assert "warning: the ocr scorer scores donor and base alike" in captured.err
    assert "nan" in captured.out  # the ranked table still prints
