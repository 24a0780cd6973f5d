"""The ``trace`` method: ROME-style causal tracing on the conditioning.

The base row is the donor prompt with its concept tokens' embeddings corrupted by Gaussian noise
(3 x the standard deviation of the prompt's embeddings); each patched row restores one site's
clean conditioning from the clean donor row. Effect = recovery:
(s(restored) - s(corrupted)) / (s(clean) - s(corrupted)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts import Concept
from ..errors import UserError
from ..model import Model
from .sweep import Unit

NOISE_SCALE = 3.0


def corrupt(model: Model, prompt: str, words: Sequence[str], seed: int, scale: float = NOISE_SCALE) -> dict:
    """``prompt``'s conditioning with noise added at the positions of ``words``."""
    cond = {k: v.clone() for k, v in model.encode([prompt]).items()}
    positions = model.adapter.token_positions(model.pipe, prompt, words)
    if not positions:
        raise UserError(f"no concept tokens found in {prompt!r} to corrupt (words: {list(words) or 'none'})")
    gen = torch.Generator("cpu").manual_seed(seed)
    for key in model.adapter.sequence_keys:
        if key not in cond:
            continue
        x = cond[key]
        pos = [p for p in positions if p < x.shape[1]]
        noise = torch.randn((x.shape[0], len(pos), *x.shape[2:]), generator=gen) * scale * x.float().std()
        x[:, pos] = x[:, pos] + noise.to(x.device, x.dtype)
    return cond


def trace_units(model: Model, concept: Concept, seeds: Sequence[int]) -> list[Unit]:
    """One unit per pair and seed: clean donor vs its corrupted self."""
    units = []
    for p, pair in enumerate(concept.pairs):
        for s in seeds:
            cond = corrupt(model, pair.donor, concept.tokens(pair), seed=10_000 * p + s)
            units.append(Unit(f"{p}/{s}", s, pair.donor, pair.donor, concept.target_for(pair), base_cond=cond))
    return units
