"""The ``patch`` method: every site alone (or every head of a site) patched from the donor, as
rows of batched generations (see :mod:`multiloc.localize.sweep`).

N sites cost about N / (B - 1) generations of B prompt rows per sample instead of the papers' 1 + N.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError
from ..sites import Site
from .sweep import Row


def single_site_rows(sites: Sequence[Site], heads: str | Sequence[int] | None = None) -> list[Row]:
    """One row per site (``heads=None``: all heads; a list: only those heads of every site), or with
    ``heads="each"`` one row per head of every site, labelled ``SITE#hN``."""
    if heads is None:
        return [Row((s.name,), label=s.name, index=s.index) for s in sites]
    if isinstance(heads, str) and heads != "each":
        raise UserError(f"heads must be 'each' or a list of head indices, got {heads!r}")
    for s in sites:
        if not s.heads:
            raise UserError(f"site {s.name!r} has no attention heads; head-level patching needs them")
    if heads == "each":
        return [Row((s.name,), heads=((h,),), label=f"{s.name}#h{h}", index=s.index)
                for s in sites for h in range(s.heads)]
    chosen = tuple(sorted({int(h) for h in heads}))
    for s in sites:
        bad = [h for h in chosen if not 0 <= h < s.heads]
        if bad:
            raise UserError(f"head {bad[0]} does not exist in {s.name!r}, which has heads 0-{s.heads - 1}")
    return [Row((s.name,), heads=(chosen,), label=s.name, index=s.index) for s in sites]
