"""Activation steering (CAA, contrastive activation addition) through chosen sites.

A steering vector of a site at denoising step *k* is the mean difference of the site's output (the
attention module's result on the image-token side, :func:`~multiloc.hooks.image_side`; IF's added-KV
attention returns it with its residual added) between the donor and the base prompt of each of the
concept's pairs: the conditional copy under CFG (the adapter's ``conditional_copy``), at the same seed,
averaged over pairs and seeds, **and over image positions**. Averaging over positions gives one vector per
channel, as CAA and TADA add it: it broadcasts to any resolution or clip length and adds the concept
everywhere, where a full map would be tied to the resolution it was measured at and to the layout of
the seeds it came from. Generation then adds ``alpha * v[site, step]`` to every position of every row
(both CFG copies, so ``alpha`` means the same at any guidance scale).

**A consistent contrast.** The vector points from the bases' mean to the donors' mean. Pairs whose
bases differ (red→blue, yellow→blue, …) give a vector from the bases' average, so added to a new prompt
it lands between concepts rather than on the donor's. Use pairs that all move the same way: one donor
concept and several bases of one other concept, or one donor and many bases, each pair otherwise alike
(a template with ``donor``/``bases``). :func:`contrast` says whether the pairs share one target.

A steering file is a safetensors file: one ``(steps, channels)`` tensor per site, keyed by the site's
name, and string metadata (``format`` ``multiloc.steer/1``, ``model``, ``adapter``, ``concept``,
``sites``, ``steps``, ``seeds``, ``guidance``, ``pairs``, ``targets``, ``original``: a fingerprint of
each site's weights but its taps' (:func:`site_fingerprint`), so a file made for another model is
refused, ``multiloc``: the version).

Example::

    vectors = steering_vectors(model, "toy-blue", sites="12", seeds=2)
    save_steering("blue.safetensors", vectors)
    outs = multiloc.control.generate(model, ["a small red circle"],
                                     modifiers=[Steer("blue.safetensors", alpha=2.0)])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..concepts import Concept
from ..errors import UserError
from ..hooks import capture_outputs
from ..interventions import OUTPUT, Patch, StepWindow
from ..results import write_atomic
from ..sites import Site
from .targets import resolve_sites
from .weights import _close, fingerprint, read_tagged

FORMAT = "multiloc.steer/1"


@dataclass
class SteeringVectors:
    """Per-site, per-step steering vectors: ``vectors[site]`` is ``(steps, channels)``, float32."""

    vectors: dict[str, torch.Tensor]
    model: str
    adapter: str
    concept: str
    seeds: list[int]
    guidance: float
    pairs: int = 0
    targets: list[str] = field(default_factory=list)
    original: dict[str, list[float]] = field(default_factory=dict)
    path: str | None = None

    @property
    def sites(self) -> list[str]:
        return list(self.vectors)

    @property
    def steps(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def subset(self, names: Iterable[str]) -> SteeringVectors:
        """The vectors of ``names`` only (in that order).

        >>> vectors.subset(["transformer_blocks.0.attn2"]).sites
        ['transformer_blocks.0.attn2']
        """
        names = list(names)
        missing = [n for n in names if n not in self.vectors]
        if missing:
            raise UserError(f"the steering vectors have no site {missing[0]!r}")
        return replace(self, vectors={n: self.vectors[n] for n in names},
                       original={n: self.original[n] for n in names if n in self.original}, path=None)

    def metadata(self) -> dict[str, str]:
        from .. import __version__

        return {"format": FORMAT, "model": self.model, "adapter": self.adapter, "concept": self.concept,
                "sites": json.dumps(self.sites), "steps": str(self.steps), "seeds": json.dumps(self.seeds),
                "guidance": repr(float(self.guidance)), "pairs": str(self.pairs),
                "targets": json.dumps(self.targets), "original": json.dumps(self.original),
                "multiloc": __version__}

    def plan(self, n_rows: int, alpha: float, steps: int | None = None) -> list[Patch]:
        """Add patches putting ``alpha * v`` on every row, one per site and generation step.

        A generation of ``steps`` steps (default: the vectors' own) takes at step *k* the vector of the
        step at the same point of the schedule (nearest), so a file made at 12 steps steers 24 too.

        >>> plan = vectors.plan(n_rows=2, alpha=3.0)
        """
        steps = steps or self.steps
        rows = tuple(range(n_rows))
        plan = []
        for site, v in self.vectors.items():
            for k in range(steps):
                src = round(k * (self.steps - 1) / (steps - 1)) if steps > 1 else 0
                plan.append(Patch(site, rows, kind="add", on=OUTPUT, value={OUTPUT: float(alpha) * v[src]},
                                  window=StepWindow(k, k + 1)))
        return plan


def contrast(concept: Concept) -> list[str]:
    """The distinct targets of ``concept``'s pairs: one for a consistent contrast (see the module docstring).

    >>> contrast(Concept.load("toy-colour"))        # six donors: no single direction
    ['blue', 'cyan', 'green', 'magenta', 'red', 'yellow']
    """
    return sorted({str(t) for t in (concept.target_for(p) for p in concept.pairs) if t is not None})


def _position_mean(x: torch.Tensor) -> torch.Tensor:
    """(batch, positions..., channels) -> (batch, channels), in float32."""
    x = x.float()
    return x.mean(dim=tuple(range(1, x.dim() - 1))) if x.dim() > 2 else x


def site_fingerprint(model: Any, site: Site) -> list[float]:
    """A fingerprint of the site's own weights (see :func:`~multiloc.control.weights.fingerprint`): all but
    its taps' (the projections reading the conditioning, which ``multiloc rewrite`` edits) and PEFT's
    LoRA layers, so the vectors still apply with a weight edit or an unmerged LoRA, not to another model."""
    taps = {t.path for t in site.taps if t.kwarg is None and t.path}
    params = [p.detach().flatten() for name, p in model.denoiser.get_submodule(site.name).named_parameters()
              if "lora_" not in name and name.split(".")[0] not in taps]
    return fingerprint(torch.cat(params)) if params else [0.0, 0.0]


def steering_vectors(model: Any, concept: Concept | str, *, sites: Any = None, seeds: int | Sequence[int] = 1,
                     steps: int | None = None, guidance: float | None = None, batch_size: int = 8,
                     progress: bool = False) -> SteeringVectors:
    """CAA vectors of ``concept`` at ``sites`` of ``model`` (see the module docstring).

    ``sites``: a site spec, a scan's result.json, a list of :class:`~multiloc.Site` or None (the
    model's published sites for the concept); ``seeds``: a count (0..N-1) or a list; ``batch_size``:
    pairs per generation (each runs its base and donor rows together).

    >>> v = steering_vectors(multiloc.load("toy-tones"), "toy-instrument", seeds=2)
    >>> v.vectors["transformer_blocks.0.attn2"].shape      # (steps, channels)
    torch.Size([12, 64])
    """
    if not isinstance(concept, Concept):
        concept = Concept.load(concept)
    if concept.modality not in ("any", model.modality):
        raise UserError(f"concept {concept.name!r} is for {concept.modality}, but {model.name} makes {model.modality}")
    chosen: list[Site] = (list(sites) if isinstance(sites, (list, tuple)) and sites and isinstance(sites[0], Site)
                          else resolve_sites(model, sites, concept=concept.name))
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise UserError("steering vectors need at least one seed")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"] if guidance is None else guidance
    pairs = concept.pairs
    chunks = [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]
    per_step = model.adapter.calls_per_step
    sums: dict[str, dict[int, torch.Tensor]] = {s.name: {} for s in chosen}
    bar = tqdm(total=len(seeds) * len(chunks), desc=f"steer {model.name}", unit="gen", disable=not progress)
    for seed in seeds:
        for chunk in chunks:
            m = len(chunk)
            with capture_outputs(model.denoiser, chosen, reduce=_position_mean) as store:
                model.generate([p.base for p in chunk] + [p.donor for p in chunk], seed=seed, steps=steps,
                               guidance=guidance)
            for site in chosen:
                for call, x in enumerate(store[site.name]):
                    cond = x.view(-1, 2 * m, x.shape[-1])[model.adapter.conditional_copy].cpu()  # CFG's conditional copy
                    diff = (cond[m:] - cond[:m]).sum(0) / per_step
                    slot = sums[site.name]
                    slot[call // per_step] = slot.get(call // per_step, 0) + diff
            bar.update(1)
    bar.close()
    n = len(seeds) * len(pairs)
    vectors = {name: torch.stack([by_step[k] for k in sorted(by_step)]) / n for name, by_step in sums.items()}
    return SteeringVectors(vectors=vectors, model=model.name, adapter=model.adapter.name, concept=concept.name,
                           seeds=seeds, guidance=float(guidance), pairs=len(pairs), targets=contrast(concept),
                           original={s.name: site_fingerprint(model, s) for s in chosen})


def save_steering(path: str | Path, vectors: SteeringVectors) -> Path:
    """Write ``vectors`` to ``path`` atomically (safetensors, see the module docstring)."""
    from safetensors.torch import save

    path = Path(path)
    write_atomic(path, save({k: v.contiguous() for k, v in vectors.vectors.items()}, metadata=vectors.metadata()))
    vectors.path = str(path)
    return path


def read_steering(path: str | Path) -> SteeringVectors:
    """Read a steering file; anything that is not one is a one-line :class:`UserError`."""
    tensors, meta = read_tagged(path, FORMAT, "steering file", " (made by multiloc steer)")
    try:
        sites = json.loads(meta["sites"])
        vectors = SteeringVectors(vectors={s: tensors[s] for s in sites}, model=meta["model"],
                                  adapter=meta["adapter"], concept=meta["concept"], seeds=json.loads(meta["seeds"]),
                                  guidance=float(meta["guidance"]), pairs=int(meta["pairs"]),
                                  targets=json.loads(meta["targets"]), original=json.loads(meta["original"]),
                                  path=str(path))
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: damaged multiloc steering metadata ({e})") from None
    if not sites or len({v.dim() for v in vectors.vectors.values()}) != 1:
        raise UserError(f"{path}: damaged multiloc steering file (no sites, or vectors of mixed form)")
    return vectors


def check_steering(model: Any, vectors: SteeringVectors) -> None:
    """Refuse (UserError) vectors made for another family or model, or for sites of another width."""
    where = vectors.path or "the steering vectors"
    if vectors.adapter != model.adapter.name:
        raise UserError(f"{where} was made for {vectors.model} (the {vectors.adapter} family); "
                        f"{model.name} is of the {model.adapter.name} family")
    known = {s.name: s for s in model.sites}
    for site, v in vectors.vectors.items():
        if site not in known:
            raise UserError(f"{where} steers site {site!r}, which {model.name} does not have; "
                            f"was it made for another model ({vectors.model})?")
        out = getattr(getattr(model.denoiser.get_submodule(site), "to_out", None), "0", None)
        width = getattr(out, "out_features", None) if out is not None else None
        if width is not None and v.shape[-1] != width:
            raise UserError(f"{where} was made for {vectors.model}: {site} is {v.shape[-1]} channels wide there, "
                            f"{width} in {model.name}")
        old = vectors.original.get(site)
        if old is not None and not _close(site_fingerprint(model, known[site]), old):
            raise UserError(f"{where} was made for {vectors.model}, whose weights at {site} differ from "
                            f"{model.name}'s; compute the vectors for this model (multiloc steer)")
