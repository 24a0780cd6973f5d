"""Plots of scan results (matplotlib, headless).

Example::

    Path("effects.png").write_bytes(plot_effects(result))
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import Result


def plot_effects(result: Result) -> bytes:
    """A bar chart of effects by execution index with 95% CIs; selected sites highlighted. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sites = sorted(result.sites, key=lambda s: s.index)
    xs = [s.index for s in sites]
    ys = [s.effect if s.effect is not None and math.isfinite(s.effect) else 0.0 for s in sites]
    lo = [max(y - s.ci[0], 0) if math.isfinite(s.ci[0]) else 0 for y, s in zip(ys, sites)]
    hi = [max(s.ci[1] - y, 0) if math.isfinite(s.ci[1]) else 0 for y, s in zip(ys, sites)]
    colors = ["tab:red" if s.name in result.selected else "tab:blue" for s in sites]
    fig, ax = plt.subplots(figsize=(max(6, len(sites) * 0.16), 3.2), dpi=110)
    ax.bar(xs, ys, color=colors, yerr=[lo, hi], capsize=1.5, error_kw={"elinewidth": 0.6})
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("site (execution order)")
    ax.set_ylabel("effect")
    ax.set_title(f"{result.model} · {result.concept} · {result.method}  (red: selected)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
