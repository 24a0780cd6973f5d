"""Localization methods side by side on the tiny model of every family, in ONE run.

For each family: the one-site-at-a-time sweep (batch of 2 rows: the donor and one patched row, the
papers' loop), the batched sweep, the one-pass contribution method and adaptive sampling. Prints
time ratios against the one-site-at-a-time sweep, and agreement with the full sweep's ranking
(top-k overlap and Spearman's rho over sites). Absolute times on a shared CPU mean little; the
ratios are measured in the same process, back to back.

Families without value taps (SANA, the audio families) run contribution as its fallback, ``patch``.
The tiny models have random weights, so agreement here says how the methods relate on an arbitrary
network, not on a trained one (on planted models every method recovers the planted site: see
tests/test_localize_methods.py).

    python benchmarks/localize.py [--steps 4] [--seeds 2] [--families tiny-sd,tiny-sdxl]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import multiloc

FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-if", "tiny-sd3", "tiny-flux", "tiny-pixart",
            "tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step")
CONCEPT = multiloc.Concept(name="colour", scorer="reference", pairs=[
    ("a red cube on a table", "a blue cube on a table"), ("a green ball in the grass", "a yellow ball in the grass")])


def ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(np.argsort(-np.nan_to_num(x, nan=-np.inf)))
    return order.astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def overlap(a: list[str], b: list[str], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    header = f"{'family':<12} {'sites':>5}  {'method':<22} {'time s':>7} {'speed-up':>8}  {'top-3':>5}  {'rho':>5}  {'rows':>9}"
    print(header)
    print("-" * len(header))
    for name in args.families.split(","):
        model = multiloc.load(name)
        n = len(model.sites)
        common = {"seeds": args.seeds, "steps": args.steps, "progress": False, "samples": False}
        model.generate(["warm up"], steps=1)
        runs = {}
        for label, kwargs in (("one site at a time", {"batch_size": 2}),
                              ("batched sweep", {"batch_size": n + 2}),
                              ("contribution", {"method": "contribution", "batch_size": n + 2}),
                              ("adaptive (batched)", {"adaptive": True, "batch_size": n + 2})):
            start = time.perf_counter()
            result = multiloc.scan(model, CONCEPT, **common, **kwargs)
            runs[label] = (time.perf_counter() - start, result)
        t_ref, full = runs["one site at a time"]
        names = [s.name for s in model.sites]
        full_eff = np.array([full.effects[s] for s in names])
        samples = len(CONCEPT.pairs) * args.seeds
        for label, (t, res) in runs.items():
            eff = np.array([res.effects[s] for s in names])
            a = res.extra.get("adaptive")
            rows = f"{a['rows_scored']}/{a['rows_full_sweep']}" if a else ("0" if label == "contribution" else f"{n * samples}")
            print(f"{name:<12} {n:>5}  {label:<22} {t:7.2f} {t_ref / t:7.2f}x  "
                  f"{overlap(res.ranking, full.ranking, 3):5.2f}  {spearman(eff, full_eff):5.2f}  {rows:>9}")


if __name__ == "__main__":
    main()
