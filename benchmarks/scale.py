"""One scan on 1 and on N processes, and with the in-batch vs the cached donor, in ONE run: wall time,
scan time, rows per process, and whether the results agree (max |effect difference|, same ranking and
selection).

Each run is the ``multiloc scan`` command: plain for one process, ``torchrun --standalone
--nproc_per_node N`` (gloo on a CPU, one GPU per process on a GPU machine) for N. Wall time includes
starting the interpreters and loading the model in each process; scan time is ``result.json``'s
``runtime_s`` (the scan alone, on the main process). Runs back to back, so the ratios compare like with
like; on a small shared CPU the processes compete for the same cores.

    python benchmarks/scale.py [--model toy-shapes] [--concept toy-colour] [--seeds 4] [--steps 4]
                               [--batch-size 4] [--processes 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(n: int, out: Path, args: argparse.Namespace, *extra: str) -> tuple[float, dict]:
    """Run the scan on ``n`` processes into ``out``: (wall seconds, result.json)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 \
        else [sys.executable]
    cmd = [*launcher, "-m", "multiloc", "scan", "--model", args.model, "--concept", args.concept,
           "--seeds", str(args.seeds), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--quiet", "--out", str(out), *(["--device", args.device] if args.device else []), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads((out / "result.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy-shapes")
    p.add_argument("--concept", default="toy-colour")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="in-process donor comparison: runs of each (default: 3)")
    p.add_argument("--device", help="cpu, cuda (default: cuda if available; N processes take N GPUs)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(f"{n} process{'es' * (n > 1)}", *run(n, Path(tmp) / f"p{n}", args)) for n in (1, args.processes)]
        runs.append(("1 process, in-batch donor", *run(1, Path(tmp) / "in-batch", args, "--in-batch-donor")))
    _, wall1, one = runs[0]
    print(f"{args.model} / {args.concept}: {len(one['sites'])} sites, {one['config']['pairs']} pairs x "
          f"{args.seeds} seeds, {args.steps} steps, batch {args.batch_size}, {args.threads} thread(s) per process")
    print(f"{'run':<26}  {'donor':<8}  {'wall s':>7}  {'scan s':>7}  {'wall x':>6}  {'scan x':>6}  "
          f"{'rows per process':<18}  {'max |d effect|':>14}  same ranking/selection")
    base = effects(one)
    for label, wall, r in runs:
        diff = float(np.nanmax(np.abs(effects(r) - base))) if np.isfinite(base).any() else float("nan")
        same = r["ranking"] == one["ranking"] and r["selected"] == one["selected"]
        print(f"{label:<26}  {r['config']['donor']:<8}  {wall:>7.1f}  {r['runtime_s']:>7.1f}  {wall1 / wall:>6.2f}  "
              f"{one['runtime_s'] / r['runtime_s']:>6.2f}  {str(r['config']['rows_per_process']):<18}  "
              f"{diff:>14.2e}  {same}")
    print("x: the first run's time over this run's (above 1: faster)")
    donor_ratio(args)


def donor_ratio(args: argparse.Namespace) -> None:
    """Cached vs in-batch donor in this process, alternating ``--repeats`` times (best time of each): on a
    shared CPU single runs differ by more than the saving."""
    import torch

    import multiloc

    torch.set_num_threads(args.threads)
    model = multiloc.load(args.model, device=args.device)
    best: dict[bool, float] = {True: float("inf"), False: float("inf")}
    rows: dict[bool, int] = {}
    for _ in range(args.repeats):
        for cached in (False, True):
            sizes: list[int] = []
            real = model.generate
            model.generate = lambda prompts, *a, _real=real, _sizes=sizes, **k: (  # count the sweep's rows
                _sizes.append(len(prompts) if a else 0) or _real(prompts, *a, **k))
            start = time.perf_counter()
            multiloc.scan(model, args.concept, seeds=args.seeds, steps=args.steps, batch_size=args.batch_size,
                          progress=False, samples=False, cached_donor=cached)
            best[cached] = min(best[cached], time.perf_counter() - start)
            del model.generate
            rows[cached] = sum(sizes)
    print(f"donor, in this process (best of {args.repeats}): in-batch {best[False]:.2f} s, {rows[False]} rows generated; "
          f"cached {best[True]:.2f} s, {rows[True]} rows (+ one denoiser call per sample); "
          f"in-batch / cached time {best[False] / best[True]:.2f}, rows {rows[False] / rows[True]:.2f}")


def effects(result: dict) -> np.ndarray:
    return np.array([np.nan if s["effect"] is None else s["effect"] for s in result["sites"]], float)

if __name__ == "__main__":
    main()
