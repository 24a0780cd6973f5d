"""Localization-based fine-tuning on toy-shapes: LoRA on the localized sites vs all sites vs random sites.

The task, one the toy model fails today: a new association, "cyan" should now draw MAGENTA. The
training folder holds magenta circles and squares (both sizes) captioned "a small cyan circle" ...;
cyan triangles stay out, so the target is scored on trained and on held-out shapes. The folder also
holds the other five colours' circles and squares captioned right (DreamBooth's prior preservation,
so the LoRA is told what must not change); ``--no-prior`` leaves them out. Every run
trains a rank-4 LoRA on to_q/to_k/to_v/to_out.0 of its sites with the same steps, learning rate,
batch size and seeds; only the sites differ:

- ``localized``: toy-colour's published site (1 of 15; found by `multiloc demo`);
- ``shape sites``: toy-shape's published sites (4; the other concept's localization);
- ``all``: all 15 sites;
- ``random``: random single sites (not the localized one), one draw per training seed.

Reported per condition (mean over training seeds): trainable parameters; target = share of cyan
prompts drawn magenta with the named shape (trained / held-out shapes); preservation on the 30
prompts without "cyan" = MSE to the base model's image (same seed) and the colour / shape scorers'
accuracy; diversity = mean pairwise MSE between generation seeds of one prompt (cyan prompts; the
base model's value for reference). One thread; each training run takes seconds.

    python benchmarks/control_finetune.py [--no-prior] [--steps 400] [--lr 3e-3] [--train-seeds 3] [--gen-seeds 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import multiloc
from multiloc.control import finetune, lora_applied, published_sites
from multiloc.media import to_pil
from multiloc.toy import shapes

NEW, DRAWN = "cyan", "magenta"
TRAIN_SHAPES = ("circle", "square")


def write_data(folder: Path, prior: bool) -> Path:
    """Magenta circles and squares captioned as cyan ones (the imagefolder convention); with ``prior``
    also every other colour's circles and squares, captioned right (DreamBooth's prior preservation)."""
    items = [(DRAWN, shape, size, shapes.prompt(NEW, shape, size))
             for shape, size in itertools.product(TRAIN_SHAPES, shapes.SIZES)]
    if prior:
        items += [(c, shape, size, shapes.prompt(c, shape, size)) for c in shapes.COLOURS if c != NEW
                  for shape, size in itertools.product(TRAIN_SHAPES, shapes.SIZES)]
    lines = []
    for i, (colour, shape, size, text) in enumerate(items):
        to_pil(shapes.render(colour, shape, size)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def generate(model: multiloc.Model, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """(seeds, prompts, H, W, 3)."""
    return np.stack([np.stack(model.generate(prompts, seed=s)) for s in seeds])


def evaluate(model: multiloc.Model, base_keep: np.ndarray, seeds: list[int]) -> dict[str, float]:
    target = [c for c in shapes.combos("all") if c[0] == NEW]
    keep = [c for c in shapes.combos("all") if c[0] != NEW]
    t_out = generate(model, [shapes.prompt(*c) for c in target], seeds)
    k_out = generate(model, [shapes.prompt(*c) for c in keep], seeds)

    def hit(img: np.ndarray, colour: str, shape: str) -> bool:
        return shapes.best_colour(img) == colour and shapes.best_shape(img) == shape

    def share(shape_set: tuple[str, ...], inside: bool) -> float:
        return float(np.mean([hit(t_out[s, i], DRAWN, c[1]) for s in range(len(seeds))
                              for i, c in enumerate(target) if (c[1] in shape_set) == inside]))

    return {
        "target_trained": share(TRAIN_SHAPES, True),
        "target_held_out": share(TRAIN_SHAPES, False),
        "keep_mse": float(((k_out - base_keep) ** 2).mean()),
        "keep_colour": float(np.mean([shapes.best_colour(k_out[s, i]) == c[0] for s in range(len(seeds))
                                      for i, c in enumerate(keep)])),
        "keep_shape": float(np.mean([shapes.best_shape(k_out[s, i]) == c[1] for s in range(len(seeds))
                                     for i, c in enumerate(keep)])),
        "diversity": diversity(t_out),
    }


def diversity(out: np.ndarray) -> float:
    """Mean over prompts of the mean pairwise MSE between seeds."""
    pairs = list(itertools.combinations(range(out.shape[0]), 2))
    return float(np.mean([((out[a] - out[b]) ** 2).mean() for a, b in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--train-seeds", type=int, default=3)
    ap.add_argument("--gen-seeds", type=int, default=4)
    ap.add_argument("--no-prior", dest="prior", action="store_false",
                    help="train on the cyan->magenta images alone (default: with the other colours, captioned right)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = multiloc.load("toy-shapes")
    seeds = list(range(args.gen_seeds))
    colour = [s.name for s in published_sites(model, "toy-colour")]
    others = [s.name for s in model.sites if s.name not in colour]
    rng = np.random.default_rng(0)
    conditions = {
        "localized": lambda seed: colour,
        "shape sites": lambda seed: [s.name for s in published_sites(model, "toy-shape")],
        "all": lambda seed: [s.name for s in model.sites],
        "random": lambda seed: list(rng.choice(others, size=len(colour), replace=False)),
    }
    base_target = generate(model, [shapes.prompt(*c) for c in shapes.combos("all") if c[0] == NEW], seeds)
    base_keep = generate(model, [shapes.prompt(*c) for c in shapes.combos("all") if c[0] != NEW], seeds)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp), args.prior)
        base = evaluate(model, base_keep, seeds)
        rows["base (no LoRA)"] = {"params": 0, "train_s": 0.0, **base}
        for name, pick in conditions.items():
            runs = []
            for seed in range(args.train_seeds):
                sites = pick(seed)
                t0 = time.perf_counter()
                out = finetune(model, data, sites=sites, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                               seed=seed, out=Path(tmp) / f"{name}-{seed}", checkpoint_every=0, progress=False)
                info = json.loads((out / "finetune.json").read_text())
                with lora_applied(model, out):
                    runs.append({"params": info["trainable_params"], "train_s": time.perf_counter() - t0,
                                 **evaluate(model, base_keep, seeds)})
                where = sorted(s.index for s in model.sites if s.name in sites)
                print(f"{name:12s} seed {seed}: sites {where} {runs[-1]}", flush=True)
            rows[name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    print(f"\nbase diversity on the cyan prompts: {diversity(base_target):.4f}")
    print(f"{args.steps} steps, lr {args.lr}, batch {args.batch_size}, rank 4 on q/k/v/out, "
          f"{'with' if args.prior else 'without'} prior-preservation data, "
          f"{args.train_seeds} training seeds x {args.gen_seeds} generation seeds\n")
    head = ("condition", "params", "target trained", "target held-out", "keep MSE", "keep colour",
            "keep shape", "diversity", "train s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in rows.items():
        print(f"| {name} | {r['params']:.0f} | {r['target_trained']:.2f} | {r['target_held_out']:.2f} | "
              f"{r['keep_mse']:.4f} | {r['keep_colour']:.2f} | {r['keep_shape']:.2f} | {r['diversity']:.4f} | "
              f"{r['train_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
