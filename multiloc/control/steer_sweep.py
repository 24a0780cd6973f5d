"""The steering sweep (TADA's protocol): for each alpha, how much of the concept appears and how much
of the unsteered output is kept, steering the localized sites, all sites, and all but the localized.

For every mode and alpha the prompts are generated at every seed with the mode's vectors added
``alpha`` times; each output is scored by the concept's scorer against the concept's target (the
donor side of a consistent contrast) and compared with the unsteered output of the same prompt and
seed (images: MSE and SSIM; audio: log-spectral distance in dB). ``multiloc steer --alphas`` runs it.

Example::

    vectors = steering_vectors(model, concept, sites=model.sites)            # every site
    record = sweep(model, vectors, localized=["transformer_blocks.0.attn2"],
                   prompts=["slow mid plucked notes"], alphas=parse_alphas("0:8:5"),
                   scorer=scorer_for(model, concept), target="saw")
    record["modes"]["localized"][2]       # {"alpha": 4.0, "score": 0.88, "preservation": {...}}
    Path("sweep.png").write_bytes(plot_sweep(record))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from ..metrics import log_spectral_distance, mse, ssim
from ..report import _png, _pyplot
from .generate import Steer, generate
from .steer import SteeringVectors

MODES = ("localized", "all", "all-but-localized")


def parse_alphas(text: str) -> list[float]:
    """``"lo:hi:n"`` (n evenly spaced values, both ends included) or a comma list ``"0,2,4"``.

    >>> parse_alphas("-4:4:9")
    [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    """
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            count = int(n)
            if count < 2:
                raise ValueError
            return [float(a) for a in np.linspace(float(lo), float(hi), count)]
        values = [float(a) for a in text.split(",")]
    except ValueError:
        raise UserError(f"--alphas {text!r} is not lo:hi:n (n >= 2 values) or a comma list of numbers") from None
    if not all(np.isfinite(values)):
        raise UserError(f"--alphas {text!r} holds a value that is not a finite number")
    return values


def preservation(a: Any, b: Any, modality: str) -> dict[str, float]:
    """How close a steered output is to the unsteered one: images MSE and SSIM, audio dB distance."""
    if modality == "audio":
        return {"lsd_db": log_spectral_distance(a, b)}
    return {"mse": mse(a, b), "ssim": ssim(a, b)}


def sweep(model: Any, vectors: SteeringVectors, localized: Sequence[str], prompts: Sequence[str],
          alphas: Sequence[float], *, scorer: Any, target: str, seeds: Sequence[int] = (0,),
          steps: int | None = None, guidance: float | None = None, batch_size: int = 8,
          modes: Sequence[str] = MODES, keep: tuple[Any, Sequence[str]] | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Score and preservation for each of ``modes`` and each alpha (see the module docstring);
    ``vectors`` must hold every site the modes need (the model's sites for ``all``).

    ``keep``: ``(scorer, one target per prompt)``, what the prompt asked besides the concept (the toy
    tones' pitch, the toy shapes' shape); each row then also has ``kept``, that scorer's mean. The
    distance to the unsteered output counts the concept's own change too; ``kept`` does not.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError(f"unknown sweep mode {unknown[0]!r}; known: {', '.join(MODES)}")
    localized = list(localized)
    others = [s for s in vectors.sites if s not in set(localized)]
    every = {"localized": localized, "all": vectors.sites, "all-but-localized": others}
    groups = {m: every[m] for m in modes}
    kwargs = {"seeds": list(seeds), "steps": steps, "guidance": guidance, "batch_size": batch_size}
    plain = generate(model, prompts, **kwargs)
    flat_plain = [o for row in plain for o in row]
    base_scores = scorer.score(flat_plain, [target] * len(flat_plain))
    keep_targets = list(keep[1]) * len(plain) if keep else []
    record: dict[str, Any] = {
        "model": model.name, "concept": vectors.concept, "target": target, "prompts": list(prompts),
        "seeds": list(seeds), "steps": steps or model.settings["steps"], "alphas": [float(a) for a in alphas],
        "sites": groups, "unsteered_score": float(np.mean(base_scores)), "modes": {}}
    if keep:
        record["unsteered_kept"] = float(np.mean(keep[0].score(flat_plain, keep_targets)))
    for mode, names in groups.items():
        if not names:
            record["modes"][mode] = []  # every site is localized: nothing is left to steer
            continue
        steer = Steer(vectors.subset(names), 0.0, steps)  # checked against the model once, alpha set per run
        rows = []
        for alpha in alphas:
            steer.alpha = alpha
            outs = generate(model, prompts, modifiers=[steer], progress=progress, **kwargs)
            flat = [o for row in outs for o in row]
            scores = scorer.score(flat, [target] * len(flat))
            kept = [preservation(o, p, model.modality) for o, p in zip(flat, flat_plain)]
            rows.append({"alpha": float(alpha), "score": float(np.mean(scores)),
                         "preservation": {k: float(np.mean([d[k] for d in kept])) for k in kept[0]}})
            if keep:
                rows[-1]["kept"] = float(np.mean(keep[0].score(flat, keep_targets)))
        record["modes"][mode] = rows
    return record


def plot_sweep(record: dict[str, Any]) -> bytes:
    """Concept score and preservation against alpha, one line per mode. PNG bytes."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    metric = None
    for mode, rows in record["modes"].items():
        if not rows:
            continue
        alphas = [r["alpha"] for r in rows]
        metric = metric or next(iter(rows[0]["preservation"]))
        left.plot(alphas, [r["score"] for r in rows], marker="o", label=mode)
        right.plot(alphas, [r["preservation"][metric] for r in rows], marker="o", label=mode)
    left.axhline(record["unsteered_score"], color="grey", linewidth=0.6, linestyle="--")
    left.set_xlabel("alpha")
    left.set_ylabel(f"score ({record['target']})")
    right.set_xlabel("alpha")
    right.set_ylabel(f"{metric} to unsteered")
    left.legend(fontsize=7)
    fig.suptitle(f"{record['model']} · steer {record['concept']}", fontsize=9)
    return _png(fig)
