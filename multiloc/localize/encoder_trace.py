"""Causal tracing inside a text encoder (ROME; Basu et al. 2023): a layers x tokens map of recovery.

For each sample (a concept pair's donor prompt and a seed) the concept's tokens are corrupted where
they enter the encoder (Gaussian noise, ``noise`` x the standard deviation of the prompt's embedding
output, transformers' ``hidden_states[0]``). Each cell (layer, token) runs the corrupted encoder
again with that one state put back from the clean run (row 0: the embedding output itself; row i:
layer i-1's ``block`` output, or its self-attention (``attn``) or MLP (``mlp``) output), generates from
the resulting conditioning and scores it. Effect of a cell = mean(s(restored) - s(corrupted)) /
mean(s(clean) - s(corrupted)) over samples, with bootstrap CIs. The encoder really runs for every row
(the conditioning cache is bypassed); cells are batched rows of the shared sweep, so a run resumes.

Example::

    tr = trace_encoder(multiloc.load("toy-shapes"), "toy-colour", seeds=2, steps=4, out="out/trace")
    tr.layers, tr.tokens          # ['embed', 'layer 0', 'layer 1'], ['<|startoftext|>', 'a', 'blue', ...]
    tr.effect[0][2]               # restoring "blue" where it enters: ~1 (the whole concept)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import stats
from ..adapter import offsets_positions
from ..concepts import Concept
from ..encoders import COMPONENTS, Encoder, find_encoder, run_encoders
from ..errors import UserError
from ..hooks import capture_encoder, corrupt_restore
from ..model import Model, load
from ..results import ScanState, write_atomic
from ..scorers import Scorer
from .sweep import Row, Unit, evaluate
from .trace import NOISE_SCALE

EMBED = -1


@dataclass
class EncoderTrace:
    """A layers x tokens map (see the module docstring); ``effect[l][t]`` and ``ci[l][t] = [lo, hi]``
    for layer row ``l`` (row 0: the embedding output) and token position ``t`` (a last column
    ``<padding>``, where the encoder pads: every padding position restored together)."""

    model: str
    concept: str
    encoder: str
    component: str
    layers: list[str]
    tokens: list[str]
    effect: list[list[float]]
    ci: list[list[list[float]]]
    concept_positions: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    runtime_s: float = 0.0

    def save(self, out: str | Path) -> Path:
        """Write ``out/trace.json`` and the heat map ``out/trace.png`` (atomically)."""
        from ..report import plot_trace
        from ..results import _clean

        out = Path(out)
        write_atomic(out / "trace.json", json.dumps(_clean(asdict(self)), indent=1))
        write_atomic(out / "trace.png", plot_trace(self))
        return out / "trace.json"

    @classmethod
    def load(cls, path: str | Path) -> EncoderTrace:
        path = Path(path)
        data = json.loads((path / "trace.json" if path.is_dir() else path).read_text())
        return cls(**data)


PAD = "<padding>"


@dataclass
class Prepared:
    """What a sample's rows need: the clean states, its noise, the corrupted positions and the
    prompt's real length (positions past it, up to the encoded sequence's length, are padding)."""

    clean: dict
    noise: torch.Tensor
    positions: list[int]
    length: int = 0

    @property
    def padding(self) -> tuple[int, ...]:
        return tuple(range(self.length, self.clean["embed"].shape[1]))


def parts(enc: Encoder, component: str) -> list[torch.nn.Module]:
    """The module of each layer whose output ``component`` names."""
    if component not in COMPONENTS:
        raise UserError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
    return [enc.part(i, component) for i in range(len(enc.layers))]


def prepare(model: Model, enc: Encoder, modules: Sequence[torch.nn.Module], prompt: str,
            words: Sequence[str], seed: int, noise: float = NOISE_SCALE) -> Prepared:
    """One clean encoder run of ``prompt`` (its states), and the noise for ``words``' positions."""
    positions = offsets_positions(enc.tokenizer, prompt, words)
    if not positions:
        raise UserError(f"no concept tokens found in {prompt!r} for {enc.name} (words: {list(words) or 'none'})")
    with capture_encoder(enc.layers[0], modules) as clean:
        run_encoders(model, [prompt])
    x = clean["embed"][0]
    positions = [p for p in positions if p < x.shape[0]]
    real = len(enc.tokenizer(prompt, truncation=True)["input_ids"])
    gen = torch.Generator("cpu").manual_seed(seed)
    sigma = float(x[:real].float().std())
    return Prepared(clean, torch.randn((len(positions), x.shape[-1]), generator=gen) * noise * sigma, positions,
                    min(real, x.shape[0]))


def traced_outputs(model: Model, enc: Encoder, modules: Sequence[torch.nn.Module], prompt: str,
                   prep: Prepared, rows: Sequence[Any], *, seed: int, steps: int | None = None,
                   guidance: float | None = None) -> list[np.ndarray]:
    """Generate one output per row of ``rows``: None (clean), or ``(layer, positions)``: corrupted, then
    ``positions`` of ``layer``'s state restored (layer -1: the embedding output; no positions: only
    corrupted). The encoder runs on every row.

    >>> clean, corrupted, fixed = traced_outputs(model, enc, modules, "a blue circle", prep,
    ...                                          [None, (-1, ()), (-1, (2,))], seed=0)
    """
    with corrupt_restore(enc.layers[0], modules, prep.clean, list(rows), prep.noise, prep.positions):
        if model.adapter.prompt_in_call:
            return model.generate([prompt] * len(rows), seed=seed, steps=steps, guidance=guidance)
        cond = run_encoders(model, [prompt] * len(rows))
    per_row = [{k: v[i:i + 1] for k, v in cond.items()} for i in range(len(rows))]
    return model.generate(per_row, seed=seed, steps=steps, guidance=guidance)


def trace_encoder(model: Model | str, concept: Concept | str, *, encoder: str | None = None,
                  component: str = "block", seeds: int = 1, steps: int | None = None,
                  guidance: float | None = None, batch_size: int = 8, noise: float = NOISE_SCALE,
                  scorer: str | Scorer | None = None, n_boot: int = 1000, out: str | Path | None = None,
                  progress: bool = True) -> EncoderTrace:
    """Trace ``concept`` through ``model``'s text encoder ``encoder`` (default: the first it declares);
    see the module docstring. With ``out``, writes ``trace.json``/``trace.png`` there and keeps
    finished rows so an interrupted run resumes.

    >>> tr = trace_encoder("toy-shapes", "toy-colour", steps=4)
    >>> np.array(tr.effect).shape        # (1 + layers, tokens + padding)
    (3, 7)
    """
    from . import scorer_for

    start = time.perf_counter()
    for label, value, least in (("seeds", seeds, 1), ("batch size", batch_size, 2), ("steps", steps, 1)):
        if value is not None and value < least:
            raise UserError(f"{label} must be at least {least}, got {value}")
    if noise <= 0:
        raise UserError(f"noise must be positive, got {noise}")
    model = model if isinstance(model, Model) else load(model)
    concept = concept if isinstance(concept, Concept) else Concept.load(concept)
    enc = find_encoder(model, encoder)
    modules = parts(enc, component)
    scorer = scorer_for(model, concept, scorer)
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"] if guidance is None else guidance
    donors = [p.donor for p in concept.pairs]
    ids = [enc.tokenizer(d, truncation=True)["input_ids"] for d in donors]
    width = max(len(i) for i in ids)
    names = [[enc.tokenizer.convert_ids_to_tokens(t) for t in i] for i in ids]
    tokens = ["/".join(dict.fromkeys(n[t] for n in names if t < len(n))) for t in range(width)]
    # Padding positions (CLIP pads to 77; a causal encoder's padding reads the whole prompt) are one
    # column, restored together, where the encoder pads.
    probe = prepare(model, enc, modules, concept.pairs[0].donor, concept.tokens(concept.pairs[0]), 0, noise)
    columns = list(range(width)) + ([PAD] if probe.padding else [])
    tokens += [PAD] if probe.padding else []
    layer_names = ["embed"] + [f"layer {i}" for i in range(len(enc.layers))]
    cells = [(layer, t) for layer in range(EMBED, len(enc.layers)) for t in columns]
    rows = [Row((), label=f"{layer_names[layer + 1]}@{t}") for layer, t in cells]
    spec = {r.key: cell for r, cell in zip(rows, cells)}
    width = len(columns)

    units, prepared = [], {}
    for p, pair in enumerate(concept.pairs):
        for s in range(seeds):
            unit = Unit(f"{p}/{s}", s, pair.donor, pair.donor, concept.target_for(pair))
            units.append(unit)
            prepared[unit.id] = (pair, 10_000 * p + s)

    def prep(unit: Unit) -> Prepared:
        got = prepared[unit.id]
        if not isinstance(got, Prepared):
            pair, seed = got
            got = prepared[unit.id] = prepare(model, enc, modules, pair.donor, concept.tokens(pair), seed, noise)
        return got

    def run(unit: Unit, todo: list[Row], with_base: bool) -> list[np.ndarray]:
        got = prep(unit)
        cells = [spec[r.key] for r in todo]
        behaviour = [None] + [(EMBED, ())] * int(with_base) + [
            (layer, got.padding if t == PAD else (t,)) for layer, t in cells]
        return traced_outputs(model, enc, modules, unit.donor, got, behaviour, seed=unit.seed,
                              steps=steps, guidance=guidance)

    config = {"seeds": seeds, "steps": steps, "guidance": guidance, "batch_size": batch_size, "noise": noise,
              "scorer": scorer.name, "pairs": len(concept.pairs), "device": str(model.device)}
    identity = {"model": model.name, "encoder": enc.name, "component": component, "noise": noise,
                "steps": steps, "guidance": guidance, "scorer": scorer.name,
                "pairs": [vars(p) for p in concept.pairs], "method": "encoder-trace"}
    state = ScanState(out, identity)
    raw = evaluate(model, scorer, units, rows, steps=steps, guidance=guidance, batch_size=batch_size,
                   window=None, state=state, progress=progress, desc=f"trace {enc.name}", run=run)
    eff = stats.effects(raw.base, raw.donor, raw.rows).reshape(len(layer_names), width)
    ci = stats.bootstrap_ci(raw.base, raw.donor, raw.rows, n_boot=n_boot).reshape(len(layer_names), width, 2)
    first = concept.pairs[0]
    result = EncoderTrace(
        model=model.name, concept=concept.name, encoder=enc.name, component=component, layers=layer_names,
        tokens=tokens, effect=eff.tolist(), ci=ci.tolist(),
        concept_positions=offsets_positions(enc.tokenizer, first.donor, concept.tokens(first)), config=config,
        samples={"ids": raw.units, "clean": raw.donor.tolist(), "corrupted": raw.base.tolist(),
                 "restored": raw.rows.tolist()})
    result.runtime_s = time.perf_counter() - start
    if out is not None:
        result.save(out)
        state.clear()
    return result
