"""One-pass output edits on the toy models, against every baseline, in one run: prints one table per model.

Each toy model is edited in the concept it publishes sites for, over that concept's prompt pairs
(configs/concepts): the removed concept's score (the exact scorer on P's word: lower is better), the
target's (Q's word: higher), what must stay (``kept``: the exact scorer of the other attribute on the
word P and Q share: shape for a colour edit, pitch for an instrument edit) and SSIM with the original
(log-spectrogram SSIM for audio). ``random-sites`` draws 3 sets of as many sites from the sites not
published (the mean is reported). The toys run without classifier-free guidance (guidance 1), where a
negative prompt or Safe Latent Diffusion does nothing, so ``negative-prompt`` and ``sld`` run at
``--neg-guidance`` against an original generated at that guidance too (the toys were trained on
whole prompts and on "" for CFG, never on a lone word such as "red", which is what the negative prompt
and the safety concept are here).

    python benchmarks/control_edit.py [--seeds 2] [--models toy-shapes,toy-shapes-dit,toy-tones]
"""

from __future__ import annotations

import argparse
import time

import torch

import multiloc
from multiloc.control.edit import edit, evaluate, table

# model -> (published set / concept, scorer of the edited attribute, scorer of what must stay)
SETUPS = {
    "toy-shapes": ("toy-colour", "colour", "shape"),
    "toy-shapes-dit": ("toy-colour", "colour", "shape"),
    "toy-tones": ("toy-instrument", "instrument", "pitch"),
}
METHODS = ("localized", "all-sites", "random-sites", "negative-prompt", "sld")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SETUPS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--from-step", type=int, default=None, help="default: 4/50 of the model's steps")
    ap.add_argument("--neg-guidance", type=float, default=3.0)
    ap.add_argument("--k-sweep", default="0,4,8,9", help="start steps to sweep for the localized edit ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        concept, scorer, keep = SETUPS[name]
        model = multiloc.load(name)
        pairs = [(p.base, p.donor) for p in multiloc.Concept.load(concept).pairs]
        sets = model.spec["localized"]
        sites = sets[concept] if concept in sets else sets["default"]
        runs, t0 = [], time.perf_counter()
        for method in METHODS:
            guidance = args.neg_guidance if method in ("negative-prompt", "sld") else None
            for p, q in pairs:
                runs.append(edit(model, p, q, sites=sites, from_step=args.from_step, seeds=range(args.seeds),
                                 method=method, guidance=guidance))
        report = evaluate(model, runs, scorer=scorer, keep=keep)
        k = runs[0].from_step
        print(f"\n{name}: {concept} edit at the {len(sites)} published sites, from step {k} of "
              f"{runs[0].steps}, {len(pairs)} pairs x {args.seeds} seeds "
              f"(scorer {scorer}, kept: {keep}; {time.perf_counter() - t0:.1f} s)")
        print(table(report["summary"]))
        base = report["summary"]["localized"]
        print(f"{'(original)':<16}{'1.000':>12}{base['removed_original']:>12.3f}{base['target_original']:>12.3f}"
              f"{base.get('kept_original', float('nan')):>12.3f}")
        for note in report["notes"]:
            print(f"note: {note}")
        ks = [int(k) for k in args.k_sweep.split(",") if k]
        if ks:
            sweep = [edit(model, p, q, sites=sites, from_step=k, seeds=range(args.seeds)) for k in ks for p, q in pairs]
            records = evaluate(model, sweep, scorer=scorer, keep=keep)["records"]
            print(f"localized edit by start step K (of {runs[0].steps}):")
            for k in ks:
                rows = [r for r, run in zip(records, [x for x in sweep for _ in x.seeds]) if run.from_step == k]
                print(f"  K={k:<3}" + "".join(f"{m} {sum(r[m] for r in rows) / len(rows):.3f}  "
                                             for m in ("ssim", "removed", "target", "kept")))


if __name__ == "__main__":
    main()
