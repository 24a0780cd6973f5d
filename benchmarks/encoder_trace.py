"""Causal tracing in the text encoders of the trained toys, and a Diff-QuickFix edit of a toy encoder.

1. For each trained toy model and each of its concepts: the layers x tokens recovery map of its text
   encoder (``multiloc trace``), printed and saved as ``docs/trace-MODEL-CONCEPT.png``.
2. Diff-QuickFix ("red => blue" on toy-shapes / toy-shapes-dit, "sine => square" on toy-tones; learnt
   from three prompts, the concept's other values preserved on them) at each encoder layer, judged
   like ``benchmarks/control_rewrite.py``: efficacy (the edit's prompts now read as the target),
   generalisation (the source's unseen prompts), specificity (the other values' prompts keep theirs),
   the other concept kept.

    .venv/bin/python benchmarks/encoder_trace.py                       # all (~5 min, 1 core)
    .venv/bin/python benchmarks/encoder_trace.py --models toy-shapes --skip-trace
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import multiloc
from multiloc.encoders import find_encoder
from multiloc.localize.encoder_trace import trace_encoder

sys.path.insert(0, str(Path(__file__).parent))
from control_rewrite import judge, shapes_world, tones_world  # noqa: E402

CONCEPTS = {"toy-shapes": ("toy-colour", "toy-shape"), "toy-shapes-dit": ("toy-colour", "toy-shape"),
            "toy-tones": ("toy-instrument", "toy-pitch")}


def show_map(tr) -> None:
    eff = np.array(tr.effect)
    width = max(len(t) for t in tr.tokens) + 1
    print(f"  {'token':<{width}}" + "".join(f"{n:>9}" for n in tr.layers))
    for t, tok in enumerate(tr.tokens):
        star = "*" if t in tr.concept_positions else ""
        print(f"  {tok + star:<{width}}" + "".join(f"{eff[row, t]:9.2f}" for row in range(eff.shape[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CONCEPTS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    ap.add_argument("--components", nargs="+", default=["block", "attn", "mlp"])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.001, 0.01])
    ap.add_argument("--docs", default="docs", help="where the maps go")
    ap.add_argument("--skip-trace", action="store_true")
    ap.add_argument("--skip-edit", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        model = multiloc.load(name)
        if not args.skip_trace:
            for concept, component in [(c, k) for c in CONCEPTS[name] for k in args.components]:
                t0 = time.time()
                tr = trace_encoder(model, concept, component=component, seeds=args.seeds, steps=args.steps,
                                   progress=False)
                Path(args.docs).mkdir(exist_ok=True)
                from multiloc.report import plot_trace

                png = Path(args.docs) / f"trace-{name}-{concept}{'' if component == 'block' else '-' + component}.png"
                png.write_bytes(plot_trace(tr))
                clean, bad = np.mean(tr.samples["clean"]), np.mean(tr.samples["corrupted"])
                print(f"\n{name} · {concept} · {tr.encoder} ({tr.component}): score clean {clean:.2f}, "
                      f"corrupted {bad:.2f}; recovery by restored state ({time.time() - t0:.0f} s, {png})")
                show_map(tr)
        if args.skip_edit:
            continue
        t0 = time.time()
        world = tones_world() if name == "toy-tones" else shapes_world(name)
        seeds = list(range(args.seeds))
        rows = [("unedited", judge(model, world, seeds))]
        enc = find_encoder(model)
        for layer in range(len(enc.layers)):
            for lam in args.lam:
                wf = multiloc.rewrite(model, [(world.source, world.target)], preserve=world.preserve,
                                      sites=f"{enc.name}:{layer}", lam=lam, templates=world.templates,
                                      progress=False)
                rows.append((f"{enc.name}:{layer} lam {lam:g}", judge(model, world, seeds, wf)))
        print(f"\n{name}: Diff-QuickFix '{world.source} => {world.target}' from {len(world.templates)} prompts, "
              f"preserving {', '.join(world.preserve)}; {len(seeds)} seed(s) ({time.time() - t0:.0f} s)")
        print(f"{'edit':<30}{'efficacy':>10}{'general.':>10}{'specific.':>10}{'other':>8}")
        for label, r in rows:
            print(f"{label:<30}{r['efficacy']:>10.2f}{r['generalisation']:>10.2f}{r['specificity']:>10.2f}"
                  f"{r['other concept']:>8.2f}")


if __name__ == "__main__":
    main()
