"""Localization methods against the full patch sweep, on the trained toys and the tiny families.

For every (model, concept): the batched patch sweep (the reference), the one-pass contribution
method, attribution patching in three variants (gradient at the base, p=0; at the base-donor
midpoint, p=1; integrated gradients over 4 points, p=4, the default, marked *), adaptive sampling and ``auto`` (attribution, then
patching the candidates). Each is compared with the sweep: top-1 equal, top-3 overlap, Spearman's
rho over sites, same selected set, and its cost in generation-equivalents per sample: its time over
(samples x the time of one single-prompt generation), measured back to back in this process.

The trained toys use their own concepts and scorers (toy-shapes, toy-shapes-dit: toy-colour and
toy-shape; toy-tones: toy-instrument and toy-pitch). The tiny families have random weights and use
the reference scorer on a colour concept: agreement there says how the methods relate on an
arbitrary network. Families without value taps (SANA, the audio families) run contribution as its
fallback, ``patch`` (marked "fallback").

    python benchmarks/localize.py [--seeds 1] [--models toy-shapes,tiny-sd] [--steps N] [--batch-size 8]

Runs on one thread; the default set takes a few minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import multiloc
from multiloc import stats
from multiloc.localize import _units
from multiloc.localize.attribution import DEFAULT_POINTS, attribution_scores
from multiloc.localize.patch import single_site_rows

TOYS = {"toy-shapes": ("toy-colour", "toy-shape"), "toy-shapes-dit": ("toy-colour", "toy-shape"),
        "toy-tones": ("toy-instrument", "toy-pitch")}
FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-if", "tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana",
            "tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step")
CONCEPT = multiloc.Concept(name="colour", scorer="reference", pairs=[
    ("a red cube on a table", "a blue cube on a table"), ("a green ball in the grass", "a yellow ball in the grass")])


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(-np.nan_to_num(x, nan=-np.inf))).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def order(eff: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-np.nan_to_num(eff, nan=-np.inf), kind="stable")]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(model: multiloc.Model, concept: multiloc.Concept, seeds: int, steps: int | None,
            batch_size: int | None = None) -> list[str]:
    steps = steps or model.settings["steps"]
    guidance = model.settings["guidance"]
    n = len(model.sites)
    common = {"seeds": seeds, "steps": steps, "progress": False, "samples": False, "batch_size": batch_size or n + 2}
    one, _ = timed(lambda: model.generate([concept.pairs[0].base], seed=0, steps=steps))
    one = min(one, timed(lambda: model.generate([concept.pairs[0].base], seed=0, steps=steps))[0])
    samples = len(concept.pairs) * seeds
    runs: dict[str, tuple[float, np.ndarray, list[int]]] = {}
    for label, kwargs in (("sweep", {}), ("contribution", {"method": "contribution"}),
                          ("adaptive", {"adaptive": True}), ("auto", {"method": "auto"})):
        t, res = timed(lambda kw=kwargs: multiloc.scan(model, concept, **common, **kw))
        eff = np.array([s.effect for s in res.sites])
        keys = [s.name for s in res.sites]
        fell = " (fallback)" if res.method != kwargs.get("method", res.method) else ""
        runs[label + fell] = (t, eff, sorted(keys.index(k) for k in res.selected))
    units = _units(model, concept, "patch", range(seeds))
    rows = single_site_rows(model.sites)
    for points in (0, 1, 4):
        t, (b, d, p) = timed(lambda k=points: attribution_scores(model, units, rows, steps=steps, guidance=guidance,
                                                                 points=k, progress=False))
        eff = stats.effects(b, d, p)
        sel = sorted(stats.select(eff, ci=stats.bootstrap_ci(b, d, p)))
        runs[f"attribution p={points}" + (" *" if points == DEFAULT_POINTS else "")] = (t, eff, sel)
    _, ref, ref_sel = runs["sweep"]
    lines = []
    for label, (t, eff, sel) in runs.items():
        top1 = order(eff)[0] == order(ref)[0]
        top3 = len(set(order(eff)[:3]) & set(order(ref)[:3])) / min(3, n)
        ok = np.isfinite(eff)
        rho = spearman(eff[ok], ref[ok]) if ok.sum() > 2 else float("nan")
        lines.append(f"{model.name:<15} {concept.name:<15} {n:>3}  {label:<24} {'yes' if top1 else 'no':>4}  "
                     f"{top3:5.2f}  {rho:5.2f}  {'yes' if sel == ref_sel else 'no':>4} {len(sel):>3}  "
                     f"{t / (samples * one):6.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's; tiny: 4)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="rows per generation (default: all sites in one)")
    parser.add_argument("--models", default=",".join([*TOYS, *FAMILIES]))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"{'model':<15} {'concept':<15} {'N':>3}  {'method':<24} {'top1':>4}  {'top3':>5}  {'rho':>5}  "
              f"{'same':>4} {'sel':>3}  {'gen-eq':>6}")
    print(header)
    print("-" * len(header), flush=True)
    for name in args.models.split(","):
        model = multiloc.load(name)
        concepts = [multiloc.Concept.load(c) for c in TOYS[name]] if name in TOYS else [CONCEPT]
        for concept in concepts:
            steps = args.steps or (None if name in TOYS else 4)
            print("\n".join(compare(model, concept, args.seeds, steps, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
