"""Concepts from Python and YAML; the YAML error paths."""

from __future__ import annotations

import pytest

import multiloc
from multiloc import Concept, Pair


def test_python_concept_and_tokens():
    c = Concept(name="colour", pairs=[("a red cube", "a blue cube")], scorer="reference")
    assert c.pairs == [Pair("a red cube", "a blue cube")]
    assert c.tokens(c.pairs[0]) == ["blue"]
    assert c.target_for(c.pairs[0]) == "blue"


def test_template_with_donor_and_bases(tmp_path):
    path = tmp_path / "piano.yaml"
    path.write_text('name: piano\nscorer: reference\ntarget: Piano music\ntemplate: "{x} solo"\n'
                    "donor: piano\nbases: [violin, trumpet]\n")
    c = Concept.from_yaml(path)
    assert [(p.base, p.donor) for p in c.pairs] == [("violin solo", "piano solo"), ("trumpet solo", "piano solo")]
    assert c.target_for(c.pairs[0]) == "Piano music"


def test_swaps_with_per_pair_target(tmp_path):
    path = tmp_path / "text.yaml"
    path.write_text("name: text\nscorer: reference\ntemplate: 'A sign that says \"{x}\".'\n"
                    "swaps: [[cat, dog], [dog, sun]]\ntarget: '{donor}'\n")
    c = Concept.from_yaml(path)
    assert c.pairs[0] == Pair('A sign that says "cat".', 'A sign that says "dog".', "dog")
    assert [c.target_for(p) for p in c.pairs] == ["dog", "sun"]


def test_builtin_concept_loads():
    c = Concept.load("colour")
    assert c.scorer == "reference" and len(c.pairs) >= 4


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\npairs:\n  - [a, b\n  - [c, d]\n")
    with pytest.raises(multiloc.UserError, match=r"bad\.yaml:\d+"):
        Concept.from_yaml(path)


@pytest.mark.parametrize("text, message", [
    ("name: x\n", "no prompt pairs"),
    ("name: x\npairs: [[same, same]]\n", "two different prompts"),
    ("name: x\npairs: [[a, b]]\ncolour: red\n", "unknown concept keys"),
    ("name: x\nswaps: [[a, b]]\n", "template"),
    ("- just a list\n", "needs at least 'name'"),
])
def test_invalid_concepts(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(multiloc.UserError, match=message):
        Concept.from_yaml(path)


def test_unknown_concept_lists_known():
    with pytest.raises(multiloc.UserError, match="known: .*colour"):
        Concept.load("no-such-concept")
