"""Patch sweep: batched rows (multiloc) vs one site per generation (the papers' 1 + N loop).

Runs both on a toy-width SDXL-shaped pipeline with SDXL's real site layout (70 cross-attention
sites: transformer depth 1, 2, 10 per level) in ONE process and prints time ratios; absolute times
on a shared CPU mean little. It also checks that both give the same effects.

The papers' loop, as the ICLR 2025 code runs it: generate the base and the donor once, then for
each site one generation of the base prompt whose text keys/values at that site are the donor's
(captured from the donor run). multiloc: the donor, the base and one row per site in batched
generations of B prompt rows (the donor rides along in each chunk as the in-batch source).

    python benchmarks/patch_speed.py [--steps 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import multiloc
from multiloc.build import build_pipeline
from multiloc.hooks import capture
from multiloc.registry import model_spec
from multiloc.scorers.reference import ReferenceScorer


def sdxl_shaped() -> multiloc.Model:
    spec = copy.deepcopy(model_spec("tiny-sdxl"))
    unet = spec["build"]["components"]["unet"]["config"]
    unet.update(block_out_channels=[8, 16, 32], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                attention_head_dim=[2, 4, 8], sample_size=8)
    return multiloc.load(build_pipeline(spec["build"]), settings={"height": 16, "width": 16})


def papers_loop(model: multiloc.Model, base: str, donor: str, steps: int) -> np.ndarray:
    """1 + N generations of one row each; returns per-site effects (reference scorer)."""
    with capture(model.denoiser, model.sites) as store:
        donor_out = model.generate([donor], steps=steps)[0]
    base_out = model.generate([base], steps=steps)[0]
    scorer = ReferenceScorer()
    s_base, s_donor = scorer.score([base_out, donor_out], [donor_out] * 2)
    effects = []
    for site in model.sites:
        # the donor's text K/V at this site ([uncond, cond] copies); cross-attention K/V do not
        # depend on the step, so the first call's capture holds for every step
        value = {t.path: store[(site.name, t.path)][0] for t in site.taps}
        out = model.generate([base], [multiloc.Patch(site.name, rows=(0,), kind="set", value=value)], steps=steps)[0]
        effects.append((scorer.score([out], [donor_out])[0] - s_base) / (s_donor - s_base))
    return np.array(effects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="best of R for each variant")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = sdxl_shaped()
    n = len(model.sites)
    concept = multiloc.Concept(name="colour", pairs=[("a red cube", "a blue cube")], scorer="reference")
    pair = concept.pairs[0]

    def timed(fn):
        best, value = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - t)
        return best, value

    model.generate([pair.base], steps=1)  # warm-up
    t_loop, loop_eff = timed(lambda: papers_loop(model, pair.base, pair.donor, args.steps))
    rows = []
    for b in (2, 8, 16, n + 2):
        t, res = timed(lambda b=b: multiloc.scan(model, concept, seeds=1, steps=args.steps, batch_size=b,
                                                 progress=False, samples=False))
        eff = np.array([res.effects[s.name] for s in model.sites])
        rows.append((b, t, float(np.max(np.abs(eff - loop_eff)))))
    print(f"tiny SDXL-shaped pipeline: {n} sites, {args.steps} steps, CFG on, torch threads {torch.get_num_threads()}")
    print(f"papers' loop (1 + N = {n + 2} generations of 1 row): {t_loop:.2f} s  [ratio 1.00]")
    print(f"{'batch rows':>10}  {'generations':>11}  {'time s':>7}  {'speed-up':>8}  {'max |effect diff|':>17}")
    for b, t, diff in rows:
        gens = len(multiloc.localize.sweep.chunks(n, b))
        print(f"{b:>10}  {gens:>11}  {t:7.2f}  {t_loop / t:7.2f}x  {diff:17.2e}")


if __name__ == "__main__":
    main()
