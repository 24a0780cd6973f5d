"""Plots of scan results (matplotlib, headless).

Example::

    Path("effects.png").write_bytes(plot_effects(result))
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .results import Result


def plot_effects(result: Result) -> bytes:
    """A bar chart of effects by execution index with 95% CIs; selected sites highlighted. PNG bytes."""
    plt = _pyplot()
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
    return _png(fig)


def plot_step_map(step_map: dict) -> bytes:
    """A heat map of effects, sites x windows of denoising steps (``result.extra['step_map']``). PNG bytes."""
    plt = _pyplot()
    effects = np.array(step_map["effects"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * effects.shape[1] + 3), 0.35 * effects.shape[0] + 1.5), dpi=110)
    im = ax.imshow(effects, aspect="auto", cmap="viridis")
    ax.set_xticks(range(effects.shape[1]), [f"{a}-{b}" for a, b in step_map["windows"]], fontsize=7)
    ax.set_yticks(range(effects.shape[0]), step_map["sites"], fontsize=7)
    ax.set_xlabel("denoising steps patched")
    fig.colorbar(im, ax=ax, label="effect")
    return _png(fig)


def plot_trace(trace) -> bytes:
    """The layers x tokens heat map of a text-encoder trace (ROME / Basu et al. style: tokens down,
    layers across, the embedding output first; the concept's tokens starred). PNG bytes."""
    plt = _pyplot()
    effects = np.array(trace.effect, dtype=float).T  # (tokens, layers)
    fig, ax = plt.subplots(figsize=(0.5 * effects.shape[1] + 3.4, 0.32 * effects.shape[0] + 1.4), dpi=110)
    im = ax.imshow(effects, aspect="auto", cmap={"block": "Purples", "attn": "Reds", "mlp": "Greens"}
                   .get(trace.component, "viridis"), vmin=min(0.0, np.nanmin(effects)), vmax=max(1.0, np.nanmax(effects)))
    labels = [f"{t}*" if i in trace.concept_positions else t for i, t in enumerate(trace.tokens)]
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(trace.layers)), trace.layers, fontsize=7, rotation=45, ha="right")
    ax.set_xlabel(f"{trace.encoder}: state restored ({trace.component})")
    ax.set_title(f"{trace.model} · {trace.concept}  (*: corrupted tokens)", fontsize=8)
    fig.colorbar(im, ax=ax, label="recovery")
    return _png(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()
