"""Activation steering (CAA) on the trained toys: alpha vs concept score vs preservation, steering the
localized sites, all sites, and all but the localized (TADA's protocol), plus the CAA pitfall.

- toy-tones, concept ``toy-saw`` (every other instrument -> saw, same pitch and tempo): prompts that name
  another instrument; score = the ``instrument`` scorer's certainty of "saw"; preservation = log-spectral
  distance (dB) to the unsteered clip, and ``kept`` = the share of clips still at the prompt's pitch
  (``pitch`` scorer). Localized = the published toy-instrument sites (blocks 0-1).
- toy-shapes, concept ``toy-blue`` (every other colour -> blue, same shape and size): prompts that name
  another colour; score = share of the shape's pixels that are blue (``colour`` scorer); preservation =
  MSE and SSIM to the unsteered image, and ``kept`` = the ``shape`` scorer for the prompt's shape.
  Localized = the published toy-colour site.
- The pitfall: the vector of ``toy-colour`` (pairs to six different colours) at the same site, scored for
  blue, next to ``toy-blue``'s: a mixed contrast points from the bases' mean, not at one colour.

Vectors from ``--seeds`` seeds (0..N-1); the sweep generates at the next ``--seeds`` seeds (held out).

    python benchmarks/control_steer.py [--seeds 2] [--alphas=-2:6:9] [--out multiloc-out/bench-steer]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import multiloc
from multiloc.control import resolve_sites, steering_vectors
from multiloc.control.commands import sweep_table
from multiloc.control.steer_sweep import parse_alphas, sweep
from multiloc.localize import scorer_for
from multiloc.results import write_atomic

# model, concept to steer, the published sites that localize it, prompts, what else to keep (scorer, targets)
WORLDS = (
    ("toy-tones", "toy-saw", "toy-instrument", ["fast mid plucked notes", "slow high sine notes", "fast low square notes"],
     ("pitch", ["mid", "high", "low"])),
    ("toy-shapes", "toy-blue", "toy-colour", ["a small red circle", "a large green square", "a small yellow triangle"],
     ("shape", ["circle", "square", "triangle"])),
)


def run(model: multiloc.Model, concept: str, published: str, prompts: list[str], keep: tuple[str, list[str]],
        alphas: list[float], seeds: int) -> dict:
    c = multiloc.Concept.load(concept)
    localized = [s.name for s in resolve_sites(model, concept=published)]
    t = time.perf_counter()
    vectors = steering_vectors(model, c, sites=model.sites, seeds=seeds)
    made = time.perf_counter() - t
    record = sweep(model, vectors, localized, prompts, alphas, scorer=scorer_for(model, c), target=c.target,
                   seeds=range(seeds, 2 * seeds), keep=(scorer_for(model, c, keep[0]), keep[1]))
    record["vector_s"], record["sweep_s"] = made, time.perf_counter() - t - made
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--alphas", default="-2:6:9")
    parser.add_argument("--out", default="multiloc-out/bench-steer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    alphas = parse_alphas(args.alphas)
    out = Path(args.out)
    for name, concept, published, prompts, keep in WORLDS:
        model = multiloc.load(name)
        record = run(model, concept, published, prompts, keep, alphas, args.seeds)
        write_atomic(out / f"{name}-{concept}.json", json.dumps(record, indent=2) + "\n")
        print(f"\n## {name}, steer {concept} at {', '.join(record['sites']['localized'])}; "
              f"prompts {prompts}; {args.seeds} + {args.seeds} seeds "
              f"(vectors {record['vector_s']:.0f} s, sweep {record['sweep_s']:.0f} s)")
        print(sweep_table(record))
    # The pitfall: toy-colour's mixed contrast against toy-blue's consistent one, same site, scored for blue.
    model = multiloc.load("toy-shapes")
    prompts = WORLDS[1][3]
    print("\n## the CAA pitfall on toy-shapes: blue score steering the toy-colour site with each concept's vector")
    rows = {}
    for concept in ("toy-blue", "toy-colour"):
        c = multiloc.Concept.load(concept)
        sites = resolve_sites(model, concept="toy-colour")
        vectors = steering_vectors(model, c, sites=sites, seeds=args.seeds)
        rows[concept] = sweep(model, vectors, [s.name for s in sites], prompts, alphas,
                              scorer=scorer_for(model, c), target="blue", seeds=range(args.seeds, 2 * args.seeds),
                              modes=("localized",))
    write_atomic(out / "toy-shapes-pitfall.json", json.dumps(rows, indent=2) + "\n")
    print(f"{'alpha':>7} {'toy-blue (consistent)':>22} {'toy-colour (mixed)':>20}")
    for i, alpha in enumerate(alphas):
        print(f"{alpha:>7.2f} " + " ".join(f"{rows[c]['modes']['localized'][i]['score']:>{w}.3f}"
                                           for c, w in (("toy-blue", 22), ("toy-colour", 20))))


if __name__ == "__main__":
    main()
