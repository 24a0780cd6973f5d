"""``multiloc demo``: localize the built-in toy models' concepts (image and audio), offline, in about
a minute on a CPU.

For each (toy model, concept) of :data:`DEMOS`: a patch scan of every site, a greedy search for the
smallest set that moves the concept (sufficiency: its joint effect; necessity: what is left when
every other site is patched), and the specificity control (random sets of the same size). Results,
plots and sample images go under ``OUT/MODEL-CONCEPT/``; ``OUT/demo.json`` sums them up.

Example::

    from multiloc.demo import run_demo
    summary = run_demo("multiloc-out/demo")
    summary["scans"][0]["sites"], summary["scans"][0]["joint_effect"]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import registry

# (model, concept) pairs the demo scans; a toy model missing from the registry is skipped.
DEMOS: tuple[tuple[str, str], ...] = (
    ("toy-shapes", "toy-colour"),
    ("toy-shapes", "toy-shape"),
    ("toy-shapes-dit", "toy-colour"),
    ("toy-shapes-dit", "toy-shape"),
    ("toy-tones", "toy-instrument"),
)


def run_demo(out: str | Path = "multiloc-out/demo", *, seeds: int = 1, control: int = 10,
             device: Any = None, threads: int | None = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scan every demo (model, concept); write results under ``out``; return the summary.

    ``threads``: CPU threads for torch during the demo (None: leave as is). One by default: the toy
    models' tensors are so small that thread synchronization costs more than it saves (on a loaded
    machine, 5-20x more).
    """
    from contextlib import nullcontext

    from .toy.train import torch_threads

    with torch_threads(threads) if threads else nullcontext():
        return _run(Path(out), seeds, control, device, log)


def _run(out: Path, seeds: int, control: int, device: Any, log: Callable[[str], None]) -> dict[str, Any]:
    from . import load, scan
    from .results import _clean, write_atomic

    start = time.perf_counter()
    models: dict[str, Any] = {}
    scans = []
    for model_name, concept_name in DEMOS:
        if model_name not in registry.model_names():
            continue
        if model_name not in models:
            models[model_name] = load(model_name, device=device)
        model = models[model_name]
        # One generation per sample holds the donor, the base and every site (or every candidate set).
        result = scan(model, concept_name, seeds=seeds, batch_size=len(model.sites) + 2, search="greedy",
                      control=control, out=out / f"{model_name}-{concept_name}", progress=False)
        found = result.extra["set_search"]
        rand = found.get("random_sets") or {}
        scans.append({
            "model": model_name, "concept": concept_name, "n_sites": len(model.sites),
            "ranking": result.ranking, "effects": result.effects, "top_site": result.ranking[0],
            "sites": found["sites"], "joint_effect": found["joint_effect"], "necessity": found["necessity"],
            "random_mean": rand.get("mean"), "random_max": rand.get("max"), "random_sets": len(rand.get("sets", [])),
            "dir": f"{model_name}-{concept_name}", "runtime_s": round(result.runtime_s, 1)})
        log(_line(scans[-1], model))
    summary = {"scans": scans, "seeds": seeds, "runtime_s": round(time.perf_counter() - start, 1)}
    write_atomic(out / "demo.json", json.dumps(_clean(summary), indent=2) + "\n")
    return summary


def _line(s: dict[str, Any], model: Any) -> str:
    index = {site.name: site.index for site in model.sites}
    where = ", ".join(f"{n} (#{index.get(n, '?')})" for n in s["sites"])
    them = "it" if len(s["sites"]) == 1 else "them"
    return (f"{s['concept']} lives in {len(s['sites'])} of {s['n_sites']} sites of {s['model']}: {where}\n"
            f"  patching {them} moves {100 * s['joint_effect']:.0f}% of the concept (necessity "
            f"{s['necessity']:.2f}); {s['random_sets']} random sets of {len(s['sites'])} move "
            f"{100 * s['random_mean']:.0f}% on average (at most {100 * s['random_max']:.0f}%)")
