"""The ``contribution`` method (Zarei et al. 2025): score every site from ONE generation.

For each donor prompt (it holds the concept), each site's score is
‖W_O · Σ_{j ∈ concept tokens} A[i, j] V[j]‖ averaged over output positions i, denoising steps and
prompts — how much attention output flows from the concept's tokens. No patching, no 1 + N loop:
one batched generation of the donor prompts per seed. Scores are shown relative to the top site
(top = 1); the raw values are kept in ``result.json`` under ``contribution``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..concepts import Concept
from ..errors import UserError
from ..hooks import contributions
from ..model import Model
from ..sites import Site


def supported(sites: Sequence[Site]) -> bool:
    """Whether every site declares its value taps (a softmax over the conditioning to read)."""
    return all(s.values for s in sites)


def concept_masks(model: Model, concept: Concept, length: int) -> torch.Tensor:
    """(pairs, length) booleans: each donor prompt's concept-token positions."""
    masks = torch.zeros(len(concept.pairs), length, dtype=torch.bool)
    for i, pair in enumerate(concept.pairs):
        positions = [p for p in model.adapter.token_positions(model.pipe, pair.donor, concept.tokens(pair)) if p < length]
        if not positions:
            raise UserError(f"no concept tokens found in {pair.donor!r} (the words the donor adds: "
                            f"{concept.tokens(pair) or 'none'})")
        masks[i, positions] = True
    return masks


def contribution_scores(model: Model, concept: Concept, sites: Sequence[Site], *, seeds: Sequence[int],
                        steps: int, guidance: float, batch_size: int, progress: bool = True) -> np.ndarray:
    """(samples, sites) raw contributions; samples are pairs x seeds, pair-major."""
    length = max(v.shape[1] for k, v in model.encode([concept.pairs[0].donor]).items()
                 if k in model.adapter.sequence_keys)
    masks = concept_masks(model, concept, length)
    donors = [p.donor for p in concept.pairs]
    out = np.zeros((len(donors), len(seeds), len(sites)))
    starts = range(0, len(donors), batch_size)
    bar = tqdm(total=len(seeds) * len(starts), desc=f"contribution {model.name}", unit="gen", disable=not progress)
    for k, seed in enumerate(seeds):
        for start in starts:
            rows = slice(start, start + batch_size)
            with contributions(model.denoiser, sites, masks[rows], model.adapter.conditional_copy) as store:
                model.generate(donors[rows], seed=seed, steps=steps, guidance=guidance)
            for j, site in enumerate(sites):
                out[rows, k, j] = torch.stack(store[site.name]).mean(dim=0).numpy()
            bar.update(1)
    bar.close()
    return out.reshape(len(donors) * len(seeds), len(sites))
