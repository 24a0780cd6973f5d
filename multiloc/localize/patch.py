"""The ``patch`` method: every site alone, patched from the donor, as rows of batched generations.

N sites cost about N / (B - 1) generations of B prompt rows per sample instead of the papers' 1 + N.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..sites import Site
from .sweep import Row


def single_site_rows(sites: Sequence[Site]) -> list[Row]:
    """One row per site."""
    return [Row((s.name,)) for s in sites]
