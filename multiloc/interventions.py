"""Intervention plans: what replaces what, in which batch rows, at which denoising steps.

A plan is a list of :class:`Patch`. Each patch rewrites the conditioning taps of one site (the
outputs of e.g. ``to_k``/``to_v``), or with ``on="output"`` the site's own output (steering), in
some *logical* batch rows. Rows are logical prompts: under classifier-free guidance the pipeline
runs every row twice (unconditional and conditional copies) and a patch applies to each copy of its
rows, taking each copy from the same copy of its source.

That makes a sweep one batched generation: row 0 the donor, row *i* the base prompt with site *i*
patched from row 0.

Example::

    plan = [Patch(site=s.name, rows=(i + 1,), source=0) for i, s in enumerate(sites)]
    with intervene(model.denoiser, model.sites, plan, n_rows=len(sites) + 1):
        images = pipe(...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

KINDS = ("inject", "ablate", "scale", "set", "add")
# Where a patch acts: the site's conditioning taps (to_k/to_v outputs ...), or the site module's own
# output on the image-token side (activation steering adds a vector there).
TARGETS = ("taps", "output")
OUTPUT = "output"  # the key of an output patch's ``set``/``add`` value


@dataclass(frozen=True)
class StepWindow:
    """Denoising steps ``start <= step < end`` (``end=None``: to the last step)."""

    start: int = 0
    end: int | None = None

    def __contains__(self, step: int) -> bool:
        return step >= self.start and (self.end is None or step < self.end)

    @classmethod
    def parse(cls, text: str | None) -> StepWindow:
        """``"a:b"``, ``"a:"`` or ``":b"``; ``None`` or ``""`` is every step.

        >>> StepWindow.parse("4:")
        StepWindow(start=4, end=None)
        """
        if not text:
            return cls()
        lo, sep, hi = text.partition(":")
        if not sep:
            raise ValueError(f"step window {text!r} is not of the form a:b")
        start, end = int(lo or 0), (int(hi) if hi else None)
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"step window {text!r} is empty or negative")
        return cls(start, end)


@dataclass(frozen=True)
class Patch:
    """Rewrite the conditioning taps of ``site`` in logical batch ``rows``.

    kinds:
      - ``inject``: copy the taps of row ``source`` (an in-batch donor at the same step and latent)
      - ``ablate``: zero them
      - ``scale``: multiply by ``value`` (a float)
      - ``set``: replace by ``value`` (a mapping tap path -> tensor, broadcast over rows)
      - ``add``: add ``value`` (a mapping tap path -> tensor, e.g. a steering vector)

    ``set``/``add`` tensors may carry a leading dimension of CFG copies (``[uncond, cond]``).

    ``heads`` limits the patch to those attention heads of the site: only their slices of the tap
    outputs (last dimension = heads x head_dim) change; ``None`` patches every head.

    ``on="output"`` patches the site module's output instead of its taps: the image-token side of the
    attention's result (joint attention: the image stream; FLUX single-stream: the positions after
    the text). A ``set``/``add`` value is then keyed :data:`OUTPUT` and broadcasts over positions.

    >>> Patch("up_blocks.0.attentions.2.transformer_blocks.1.attn2", rows=(1,), source=0)
    >>> Patch("transformer_blocks.10.attn", rows=(1,), source=0, heads=(3,))   # one head of SD3's block 10
    >>> Patch("transformer_blocks.0.attn2", rows=(0,), kind="add", on="output",
    ...       value={OUTPUT: 2.0 * v}, window=StepWindow(3, 4))              # steer step 3 by 2 v
    """

    site: str
    rows: tuple[int, ...]
    source: int | None = None
    kind: str = "inject"
    value: float | Mapping[str, torch.Tensor] | None = None
    window: StepWindow = StepWindow()
    heads: tuple[int, ...] | None = None
    on: str = "taps"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown patch kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.on not in TARGETS:
            raise ValueError(f"unknown patch target {self.on!r}; known: {', '.join(TARGETS)}")
        if self.on == OUTPUT and self.heads is not None:
            raise ValueError("an output patch acts on whole sites (the output mixes every head)")
        if self.kind == "inject" and self.source is None:
            raise ValueError("an inject patch needs a source row")
        if self.source is not None and self.source in self.rows:
            raise ValueError("a patch cannot take its source row as a target row")
        if self.heads is not None and not self.heads:
            raise ValueError("a head-level patch needs at least one head")


def apply_patch(patch: Patch, tap: str, out: torch.Tensor, n_rows: int,
                tokens: tuple[int, int | None] | None, n_heads: int | None = None,
                mask: bool = False) -> torch.Tensor:
    """Return ``out`` (a tap output with ``copies * n_rows`` rows) with ``patch`` applied.

    ``n_heads`` (the site's head count) is needed for head-level patches; a ``mask`` tap (an
    attention mask carried along with injected conditioning) changes only under ``inject`` (or ``set``, when
    ``value`` holds it, keyed by the mask tap's path), all heads.
    """
    if mask and patch.kind != "inject" and not (patch.kind == "set" and tap in patch.value):
        return out  # a mask changes only with injected conditioning, or set along with it (a cached donor)
    total = out.shape[0]
    if total % n_rows:
        raise RuntimeError(f"tap output has {total} rows, not a multiple of the {n_rows} planned rows")
    copies = total // n_rows
    out = out.clone()
    view = out.view(copies, n_rows, *out.shape[1:])
    rows = list(patch.rows)
    target = view[:, rows]
    if patch.kind == "inject":
        new = view[:, [patch.source]].expand_as(target)
    elif patch.kind == "ablate":
        new = torch.zeros_like(target)
    elif patch.kind == "scale":
        new = target * float(patch.value)
    else:
        value = patch.value[tap].to(out.device, out.dtype)
        value = value.unsqueeze(1) if value.dim() == target.dim() - 1 else value
        new = value.expand_as(target) if patch.kind == "set" else target + value
    # Which elements change: a token range (dim 2 of the view) and, per head, a slice of channels.
    region = torch.ones((1,) * target.dim(), dtype=torch.bool, device=out.device)
    if tokens:
        shape = [1] * target.dim()
        shape[2] = target.shape[2]
        sel = torch.zeros(shape, dtype=torch.bool, device=out.device)
        sel.view(-1)[slice(*tokens)] = True
        region = region & sel
    if patch.heads is not None and not mask:
        if not n_heads:
            raise ValueError(f"a head-level patch of {patch.site!r} needs the site's head count")
        width = target.shape[-1]
        if width % n_heads:
            raise RuntimeError(f"tap {tap!r} is {width} wide, not a multiple of {n_heads} heads")
        per_head = torch.zeros(n_heads, width // n_heads, dtype=torch.bool, device=out.device)
        per_head[list(patch.heads)] = True
        region = region & per_head.view(*([1] * (target.dim() - 1)), width)
    view[:, rows] = torch.where(region, new, target)
    return out


def check_plan(plan: Sequence[Patch], site_names: Sequence[str] | Mapping[str, int | None],
               n_rows: int) -> None:
    """Raise ``ValueError`` if a patch names an unknown site, a row outside ``range(n_rows)`` or a head
    the site does not have (``site_names`` may map each name to its head count)."""
    known = site_names if isinstance(site_names, Mapping) else dict.fromkeys(site_names)
    for p in plan:
        if p.site not in known:
            raise ValueError(f"patch names unknown site {p.site!r}")
        if p.heads is not None:
            n = known[p.site]
            if not n or not all(0 <= h < n for h in p.heads):
                raise ValueError(f"patch heads {list(p.heads)} are not heads of {p.site!r} "
                                 f"({n or 'no'} heads)")
        for r in (*p.rows, *(() if p.source is None else (p.source,))):
            if not 0 <= r < n_rows:
                raise ValueError(f"patch row {r} is outside the batch of {n_rows} rows")
