"""Concepts: what to localize, as base/donor prompt pairs and how to score them.

A concept is a list of (base, donor) prompt pairs that differ in the concept (the donor has it),
the name of a scorer, and optionally a target the scorer looks for (a word for OCR, a caption for
CLIP/CLAP). In YAML, pairs are given explicitly or made from a template and swaps::

    name: colour
    scorer: reference
    pairs:
      - [a red cube on a table, a blue cube on a table]

    name: piano
    scorer: clap
    target: Piano music
    template: "{x} solo, studio recording"
    donor: piano
    bases: [violin, trumpet]            # -> ("violin solo, ...", "piano solo, ...") ...

    name: text
    scorer: ocr
    template: 'A sign that says "{word}".'   # one placeholder, any name
    swaps: [[cat, dog], [dog, sun]]          # (base word, donor word)
    target: "{donor}"                        # per-pair target: the donor's word

    name: text
    scorer: ocr
    template: 'A sign that says "{word}".'
    words: words.txt                  # a word list (one a line, next to the YAML) or an inline list
    pairing: derangement              # every word is a base once; its donor is another word
    seed: 0                           # which derangement (deterministic for a seed)
    max_pairs: 100                    # the first N pairs
    target: "{donor}"

In Python: ``Concept(name="colour", pairs=[("a red cube", "a blue cube")], scorer="reference")``.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Pair:
    """One base/donor prompt pair; ``target`` is what a text-target scorer looks for."""

    base: str
    donor: str
    target: str | None = None


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


@dataclass
class Concept:
    """What to localize (see the module docstring)."""

    name: str
    pairs: list[Pair | tuple[str, str] | tuple[str, str, str]]
    scorer: str = "reference"
    target: str | None = None
    modality: str = "any"
    scorer_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        self.pairs = [p if isinstance(p, Pair) else Pair(*p) for p in self.pairs]
        if not self.pairs:
            raise UserError(f"concept {self.name!r} has no prompt pairs")
        for p in self.pairs:
            if not (isinstance(p.base, str) and isinstance(p.donor, str)) or p.base == p.donor:
                raise UserError(f"concept {self.name!r}: pair {p.base!r} / {p.donor!r} must be two different prompts")

    def target_for(self, pair: Pair) -> str:
        """The text a scorer looks for in this pair's donor output."""
        if pair.target is not None:
            return pair.target
        if self.target is not None:
            return self.target
        return " ".join(self.tokens(pair))

    def tokens(self, pair: Pair) -> list[str]:
        """The words in which the donor differs from the base (the concept's tokens)."""
        base = set(_words(pair.base))
        return [w for w in _words(pair.donor) if w not in base]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>", root: str | Path | None = None) -> Concept:
        """Build a concept from the YAML form (explicit ``pairs``, or a ``template`` with swaps,
        bases and a donor, or a word list). ``root`` is where a ``words`` file is looked up."""
        if not isinstance(data, dict) or "name" not in data:
            raise UserError(f"{source}: a concept needs at least 'name' and prompt pairs")
        data = dict(data)
        pairs = [_pair(p, source) for p in data.pop("pairs", []) or []]
        template = data.pop("template", None)
        target = data.get("target")
        swaps = [tuple(s) for s in data.pop("swaps", []) or []]
        if "donor" in data:
            swaps += [(b, data["donor"]) for b in data.pop("bases", [])]
            data.pop("donor")
        words = data.pop("words", None)
        pairing = data.pop("pairing", "derangement")
        seed, max_pairs = data.pop("seed", 0), data.pop("max_pairs", None)
        if words is not None:
            if pairing != "derangement":
                raise UserError(f"{source}: unknown pairing {pairing!r}; known: derangement")
            swaps += derange(_word_list(words, source, root), seed=seed, max_pairs=max_pairs)
        if swaps:
            field_name = _placeholder(template, source)
            for s in swaps:
                if len(s) != 2:
                    raise UserError(f"{source}: each swap is [base value, donor value], got {list(s)}")
                per_pair = target.format(base=s[0], donor=s[1]) if target and "{" in target else None
                pairs.append(Pair(template.format(**{field_name: s[0]}), template.format(**{field_name: s[1]}),
                                  per_pair))
            if target and "{" in target:
                data.pop("target")
        known = {"name", "scorer", "target", "modality", "scorer_options", "description"}
        unknown = set(data) - known
        if unknown:
            extra = {"pairs", "template", "swaps", "donor", "bases", "words", "pairing", "seed", "max_pairs"}
            raise UserError(f"{source}: unknown concept keys {sorted(unknown)}; known: {sorted(known | extra)}")
        return cls(pairs=pairs, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Concept:
        """Load a concept file (see the module docstring for the format)."""
        from .registry import load_yaml

        return cls.from_dict(load_yaml(path), source=str(path), root=Path(path).parent)

    @classmethod
    def load(cls, name_or_path: str) -> Concept:
        """A built-in concept by name, or a concept YAML by path."""
        from .registry import concept_path

        return cls.from_yaml(concept_path(name_or_path))


def _pair(item: Any, source: str) -> Pair:
    if isinstance(item, dict):
        try:
            return Pair(item["base"], item["donor"], item.get("target"))
        except KeyError as e:
            raise UserError(f"{source}: a pair needs 'base' and 'donor', missing {e}") from None
    if isinstance(item, (list, tuple)) and len(item) in (2, 3):
        return Pair(*item)
    raise UserError(f"{source}: a pair is [base, donor] or {{base:, donor:}}, got {item!r}")


def _placeholder(template: Any, source: str) -> str:
    """The one ``{name}`` field of a template (``{x}``, ``{word}`` ...)."""
    fields = set()
    if isinstance(template, str):
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError:
            fields = set()
    if len(fields) != 1 or not next(iter(fields)).isidentifier():
        raise UserError(f"{source}: swaps and words need a 'template' with exactly one placeholder such as {{x}}")
    return next(iter(fields))


def _word_list(words: Any, source: str, root: str | Path | None) -> list[str]:
    """Words from an inline list or a file (one a line; blank lines and ``#`` comments skipped)."""
    if isinstance(words, str):
        path = Path(words) if root is None else Path(root) / words
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise UserError(f"{source}: cannot read the word list {path}: {e.strerror}") from None
        words = [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{source}: 'words' is a file name or a list of words")
    if len(set(words)) != len(words):
        dupes = sorted({w for w in words if words.count(w) > 1})
        raise UserError(f"{source}: the word list repeats {dupes[:5]}; each word must appear once")
    return words


def derange(words: list[str], seed: int = 0, max_pairs: int | None = None) -> list[tuple[str, str]]:
    """(base, donor) pairs in which no word is its own donor, the same for the same seed.

    The words are shuffled with ``seed`` and each is paired with the next one in the shuffled
    order (the last with the first): a derangement, and every word is a base once and a donor once.

    >>> derange(["cat", "dog", "sun"], seed=0)
    [('cat', 'sun'), ('sun', 'dog'), ('dog', 'cat')]
    """
    if len(words) < 2:
        raise UserError(f"a derangement needs at least two words, got {len(words)}")
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
        raise UserError(f"max_pairs must be a whole number of at least 1, got {max_pairs!r}")
    order = list(words)
    random.Random(seed).shuffle(order)  # random.Random's shuffle is stable across Python versions
    pairs = [(order[i], order[(i + 1) % len(order)]) for i in range(len(order))]
    return pairs[:max_pairs]
