"""How well a closed-form rewrite of the localized sites edits a concept, on the trained toy models.

Per toy model an edit is learnt from a few prompts (toy-shapes: "red => blue" placed into three
templates, the other colours preserved on the same templates), then judged with the toy scorers:

- efficacy: the edit's own prompts now score as the target (blue share of the shape's pixels);
- generalisation: prompts with the source concept the edit never saw (other shapes and sizes);
- specificity: prompts with the other values of the concept (other colours) the edit never saw still
  score as their own,
  and the other concept (the shape's IoU; toy-tones: the pitch) is kept on every prompt.

for the localized set (the registry's published sites) vs all sites vs random sets of non-localized
sites of the same size (mean over draws). Prints one table per model.

    .venv/bin/python benchmarks/control_rewrite.py                     # all three toys (~2 min, 1 core)
    .venv/bin/python benchmarks/control_rewrite.py --models toy-shapes --lam 0.1 --draws 5
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

import multiloc
from multiloc.control import generate, resolve_sites
from multiloc.toy import shapes, tones


@dataclass
class World:
    """One toy world's edit and its judges."""

    model: str
    concept: str
    source: str
    target: str
    templates: tuple[str, ...]  # the prompts the edit is learnt from
    preserve: tuple[str, ...]
    unseen: tuple[str, ...]  # prompts with the source concept, never seen by the edit
    others: tuple[tuple[str, str], ...]  # (prompt, its own value) for the other values of the concept
    scorer: str  # reads the edited concept
    kept_scorer: str  # reads the other concept
    kept: dict[str, str]  # prompt -> its value of the other concept


def shapes_world(model: str) -> World:
    templates = ("a small {} circle", "a large {} square", "a large {} triangle")
    return _world(model, "toy-colour", "red", "blue", templates, shapes.combos("all"), shapes.prompt,
                  value=0, other=1, scorer="colour", kept_scorer="shape")


def tones_world() -> World:
    templates = ("slow low {} notes", "fast mid {} notes", "slow high {} notes")
    return _world("toy-tones", "toy-instrument", "sine", "square", templates, tones.combos("all"), tones.prompt,
                  value=0, other=1, scorer="instrument", kept_scorer="pitch")


def _world(model: str, concept: str, source: str, target: str, templates: tuple[str, ...], combos: list,
           prompt, value: int, other: int, scorer: str, kept_scorer: str) -> World:
    """The edit learnt from ``templates`` (every other value of the concept preserved on them); judged
    on the source's other prompts and on the other values' prompts outside the templates."""
    values = sorted({c[value] for c in combos})
    seen = {t.format(v) for t in templates for v in values}
    unseen = tuple(prompt(*c) for c in combos if c[value] == source and prompt(*c) not in seen)
    others = tuple((prompt(*c), c[value]) for c in combos
                   if c[value] not in (source, target) and prompt(*c) not in seen)
    preserve = tuple(v for v in values if v not in (source, target))  # the target is kept by default
    return World(model, concept, source, target, templates, preserve, unseen, others, scorer, kept_scorer,
                 {prompt(*c): c[other] for c in combos})


def score(model: multiloc.Model, name: str, outs: list[np.ndarray], targets: list[str]) -> list[float]:
    scorer = multiloc.get_scorer(name)
    if model.modality == "audio":
        return scorer.score(outs, targets, sample_rate=model.sample_rate)
    return scorer.score(outs, targets)


def judge(model: multiloc.Model, world: World, seeds: list[int], weights=None) -> dict[str, float]:
    """The four numbers of one row: efficacy, generalisation, specificity, other concept kept."""
    seen = [t.format(world.source) for t in world.templates]
    prompts = seen + list(world.unseen) + [p for p, _ in world.others]
    mods = [multiloc.control.Weights([weights])] if weights is not None else []
    outs = generate(model, prompts, seeds=seeds, modifiers=mods, batch_size=len(prompts))
    flat = [o for row in outs for o in row]
    tiled = prompts * len(seeds)
    wanted = ([world.target] * (len(seen) + len(world.unseen)) + [v for _, v in world.others]) * len(seeds)
    s = np.array(score(model, world.scorer, flat, wanted)).reshape(len(seeds), -1)
    kept = np.array(score(model, world.kept_scorer, flat, [world.kept[p] for p in tiled]))
    n, u = len(seen), len(world.unseen)
    return {"efficacy": float(s[:, :n].mean()), "generalisation": float(s[:, n:n + u].mean()),
            "specificity": float(s[:, n + u:].mean()), "other concept": float(kept.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["toy-shapes", "toy-shapes-dit", "toy-tones"])
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--draws", type=int, default=3, help="random non-localized sets per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    for name in args.models:
        t0 = time.time()
        world = tones_world() if name == "toy-tones" else shapes_world(name)
        model = multiloc.load(name)
        local = resolve_sites(model, concept=world.concept)
        rest = [s.name for s in model.sites if s not in local]
        rng = random.Random(0)
        sets = [("localized", [s.name for s in local]), ("all sites", [s.name for s in model.sites])]
        sets += [(f"random non-localized #{i}", rng.sample(rest, len(local))) for i in range(args.draws)]
        rows = [("unedited", 0, judge(model, world, seeds))]
        # The ceiling: the unedited model on the target's own prompts, read for the target.
        own = [p.replace(world.source, world.target) for p in [t.format(world.source) for t in world.templates]
               + list(world.unseen)]
        ceiling = float(np.mean(score(model, world.scorer, [o for r in generate(model, own, seeds=seeds,
                                                                                batch_size=len(own)) for o in r],
                                      [world.target] * len(own) * len(seeds))))
        for label, names in sets:
            wf = multiloc.rewrite(model, [(world.source, world.target)], preserve=world.preserve,
                                  sites=names, lam=args.lam, templates=world.templates, progress=False)
            rows.append((label, len(names), judge(model, world, seeds, wf)))
        randoms = [r for r in rows if r[0].startswith("random")]
        if randoms:
            mean = {k: float(np.mean([r[2][k] for r in randoms])) for k in randoms[0][2]}
            rows.append((f"random non-localized (mean of {len(randoms)})", len(local), mean))
        print(f"\n{name}: '{world.source} => {world.target}' from {len(world.templates)} prompts, preserving "
              f"{', '.join(world.preserve)}; lambda {args.lam}; {len(seeds)} seeds; "
              f"scores: {world.scorer} ({world.target} for efficacy/generalisation, own value for "
              f"specificity), {world.kept_scorer} (other concept); the target's own prompts score {ceiling:.2f}")
        print(f"{'sites':<34}{'n':>4}{'efficacy':>10}{'general.':>10}{'specific.':>10}{'other':>8}")
        for label, n, r in rows:
            print(f"{label:<34}{n:>4}{r['efficacy']:>10.2f}{r['generalisation']:>10.2f}"
                  f"{r['specificity']:>10.2f}{r['other concept']:>8.2f}")
        print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
