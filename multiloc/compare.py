"""Agreement between scans (methods, seeds, models): ``multiloc compare A/result.json B/result.json ...``.

For every pair of results: the overlap of their top-k sites (shared / k), Spearman's ρ of the effects
over the sites both scored with a finite effect, and the Jaccard index of the selected sets (two empty
sets agree: 1). Sites are matched by name, so scans of different models share only same-named sites.

Example::

    record = compare([Result.load("out/patch"), Result.load("out/trace")], k=5)
    print(compare_table(record))
    Path("compare.png").write_bytes(plot_compare(record))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .results import Result

METRICS = ("top_k_overlap", "spearman", "jaccard")


def load_results(paths: Sequence[str | Path]) -> tuple[list[str], list[Result]]:
    """Labels and results for ``paths`` (each a result.json or the folder holding one); UserError if not."""
    labels, results = [], []
    for p in paths:
        p = Path(p)
        folder = p.parent if p.name.endswith(".json") else p
        if not (folder / "result.json").is_file():
            raise UserError(f"{p} is not a scan result (no {folder / 'result.json'})")
        try:
            results.append(Result.load(folder))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{folder / 'result.json'} is not a multiloc scan result ({e})") from None
        labels.append(str(folder))
    return labels, results


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (ties get their average rank); NaN with fewer than 2 values or a constant side.

    >>> spearman([1, 2, 3], [10, 20, 30]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: Sequence[float]) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):  # ties: their mean rank
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def agreement(a: Result, b: Result, k: int = 5) -> dict[str, float]:
    """Top-k overlap, Spearman ρ and selected-set Jaccard of two results (see the module docstring).

    >>> agreement(r, r)
    {'top_k_overlap': 1.0, 'spearman': 1.0, 'jaccard': 1.0, 'shared_sites': 15}
    """
    ea, eb = a.effects, b.effects
    shared = [n for n in ea if n in eb and _finite(ea[n]) and _finite(eb[n])]
    top_a, top_b = _top(a, k), _top(b, k)
    k_eff = min(k, len(top_a), len(top_b))
    overlap = len(set(top_a[:k_eff]) & set(top_b[:k_eff])) / k_eff if k_eff else math.nan
    sa, sb = set(a.selected), set(b.selected)
    jaccard = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
    return {"top_k_overlap": overlap, "spearman": spearman([ea[n] for n in shared], [eb[n] for n in shared]),
            "jaccard": jaccard, "shared_sites": len(shared)}


def _top(r: Result, k: int) -> list[str]:
    effects = r.effects
    return [n for n in r.ranking if _finite(effects[n])][:k]


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(x)


def compare(results: Sequence[Result], labels: Sequence[str] | None = None, k: int = 5) -> dict[str, Any]:
    """Every pair's :func:`agreement` and one matrix per metric (diagonal: a result with itself).

    >>> compare([r1, r2], ["patch", "trace"])["matrices"]["spearman"]
    [[1.0, 0.83], [0.83, 1.0]]
    """
    if len(results) < 2:
        raise UserError("compare needs at least two results")
    labels = list(labels or [f"{r.model}/{r.concept}/{r.method}" for r in results])
    pairs = []
    matrices = {m: [[math.nan] * len(results) for _ in results] for m in METRICS}
    for i, a in enumerate(results):
        for j, b in enumerate(results):
            if j < i:
                continue
            agree = agreement(a, b, k)
            for m in METRICS:
                matrices[m][i][j] = matrices[m][j][i] = agree[m]
            if j > i:
                pairs.append({"a": labels[i], "b": labels[j], **agree})
    return {"k": k, "labels": labels, "pairs": pairs, "matrices": matrices}


def compare_table(record: dict[str, Any]) -> str:
    """The pairs as a text table."""
    width = max(len(x) for p in record["pairs"] for x in (p["a"], p["b"]))
    lines = [f"{'A':<{width}}  {'B':<{width}}  {'top-' + str(record['k']):>7}  {'rho':>6}  {'jaccard':>7}  {'shared':>6}"]
    for p in record["pairs"]:
        lines.append(f"{p['a']:<{width}}  {p['b']:<{width}}  {_fmt(p['top_k_overlap']):>7}  {_fmt(p['spearman']):>6}  "
                     f"{_fmt(p['jaccard']):>7}  {p['shared_sites']:>6}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "nan" if not _finite(x) else f"{x:.3f}"


def plot_compare(record: dict[str, Any]) -> bytes:
    """One heat map per metric (results x results). PNG bytes."""
    from .report import _png, _pyplot

    plt = _pyplot()
    n = len(record["labels"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 0.45 * n + 2.2), dpi=110)
    names = {"top_k_overlap": f"top-{record['k']} overlap", "spearman": "Spearman ρ", "jaccard": "Jaccard (selected)"}
    short = [f"{i}" for i in range(n)]
    for ax, m in zip(axes, METRICS):
        values = np.array(record["matrices"][m], dtype=float)
        im = ax.imshow(values, vmin=-1 if m == "spearman" else 0, vmax=1, cmap="viridis")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, _fmt(values[i, j]), ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(n), short)
        ax.set_yticks(range(n), short)
        ax.set_title(names[m], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.text(0.01, 0.01, "  ".join(f"{i}: {label}" for i, label in enumerate(record["labels"])), fontsize=6)
    return _png(fig)
