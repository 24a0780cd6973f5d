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
    template: 'A sign that says "{x}".'
    swaps: [[cat, dog], [dog, sun]]      # (base word, donor word)
    target: "{donor}"                    # per-pair target: the donor's word

In Python: ``Concept(name="colour", pairs=[("a red cube", "a blue cube")], scorer="reference")``.
"""

from __future__ import annotations

import re
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
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Concept:
        """Build a concept from the YAML form (explicit ``pairs`` or ``template`` + swaps)."""
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
        if swaps:
            if not template or "{x}" not in template:
                raise UserError(f"{source}: swaps need a 'template' with an {{x}} placeholder")
            for s in swaps:
                if len(s) != 2:
                    raise UserError(f"{source}: each swap is [base value, donor value], got {list(s)}")
                per_pair = target.format(base=s[0], donor=s[1]) if target and "{" in target else None
                pairs.append(Pair(template.format(x=s[0]), template.format(x=s[1]), per_pair))
            if target and "{" in target:
                data.pop("target")
        known = {"name", "scorer", "target", "modality", "scorer_options", "description"}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{source}: unknown concept keys {sorted(unknown)}; known: {sorted(known | {'pairs', 'template', 'swaps', 'donor', 'bases'})}")
        return cls(pairs=pairs, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Concept:
        """Load a concept file (see the module docstring for the format)."""
        from .registry import load_yaml

        return cls.from_dict(load_yaml(path), source=str(path))

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
