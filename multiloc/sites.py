"""Sites: the places where a denoiser reads its conditioning.

A :class:`Site` is one cross-attention (or joint-attention text-stream) layer. Adapters describe
their sites with :class:`SiteRule` rows; :func:`find_sites` turns those rows into sites in
*execution order*, which differs from ``named_modules()`` order (a U-Net registers ``up_blocks``
before ``mid_block`` but runs the mid block first).

Example::

    sites = find_sites(unet, rules, block_order=("down_blocks", "mid_block", "up_blocks"))
    sites[0].name       # 'down_blocks.0.attentions.0.transformer_blocks.0.attn2'
    sites[0].params     # {'kv': 1310720, 'qkvo': 2457600}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class Tap:
    """A submodule whose *output* carries the conditioning at a site (e.g. ``to_k``).

    ``tokens`` optionally limits the tap to a token range ``(start, stop)`` of that output, for layers
    that mix text and image tokens in one projection (FLUX single-stream blocks).

    ``kwarg`` makes the tap the site module's keyword *input* of that name instead of a submodule's
    output; ``mask`` marks an attention mask that travels with injected conditioning: an ``inject``
    patch copies it from the source row (all heads), every other kind leaves it alone. Masked
    cross-attention (PixArt, SANA) needs it: the donor's keys/values under the base's mask would hide
    the donor's extra tokens when the donor prompt is longer.
    """

    path: str
    tokens: tuple[int, int | None] | None = None
    kwarg: str | None = None
    mask: bool = False


@dataclass(frozen=True)
class SiteRule:
    """One row of an adapter's site table.

    ``where(name, module)`` says whether a module is a site; ``taps`` are the submodules whose outputs
    an intervention rewrites; ``kv`` are the parameters that read the conditioning (the ``kv`` group).

    >>> SiteRule(kind="cross_attn", where=lambda n, m: n.endswith("attn2"), taps=("to_k", "to_v"))
    SiteRule(kind='cross_attn', ...)
    """

    kind: str
    where: Callable[[str, nn.Module], bool]
    taps: tuple[str, ...]
    kv: tuple[str, ...] | None = None  # defaults to the taps
    stream: str | Callable[[str, nn.Module], str] = "text"
    tokens: tuple[int, int | None] | None = None
    masks: tuple[str, ...] = ()  # keyword inputs of the site module that are attention masks
    # For the one-pass contribution method: the taps holding the conditioning's values, and value
    # projections of other (image) tokens that share the softmax and must be silenced.
    values: tuple[str, ...] = ()
    image_values: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the lambda makes the default repr noisy
        return f"SiteRule(kind={self.kind!r}, ...)"


@dataclass(frozen=True)
class Site:
    """An intervention site: a layer that reads the conditioning.

    ``index`` is the position in execution order; ``params`` holds parameter counts of the ``kv``
    group (projections that read the conditioning) and of the whole attention (``qkvo``). ``heads`` is
    the attention's head count (the taps' last dimension is heads x head_dim), for head-level patches.
    """

    name: str
    index: int
    kind: str
    stream: str
    block: str
    taps: tuple[Tap, ...]
    params: dict[str, int] = field(default_factory=dict)
    heads: int | None = None
    values: tuple[Tap, ...] = ()
    image_values: tuple[str, ...] = ()

    def to_dict(self, total_params: int | None = None) -> dict:
        """The JSON form used by ``multiloc sites --json``."""
        d = {"index": self.index, "name": self.name, "kind": self.kind, "stream": self.stream,
             "block": self.block, "heads": self.heads, "params": dict(self.params)}
        if total_params:
            d["fraction"] = {k: v / total_params for k, v in self.params.items()}
        return d


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def find_sites(denoiser: nn.Module, rules: Sequence[SiteRule], block_order: Sequence[str] = ()) -> list[Site]:
    """Apply ``rules`` to every module of ``denoiser`` and return the sites in execution order.

    Within a top-level child, ``named_modules()`` order is execution order for the families we cover;
    ``block_order`` fixes the order of top-level children where registration and execution differ.
    """
    found: list[tuple[tuple[int, int], str, SiteRule, nn.Module]] = []
    rank = {b: i for i, b in enumerate(block_order)}
    for pos, (name, module) in enumerate(denoiser.named_modules()):
        for rule in rules:
            if name and rule.where(name, module):
                top = name.split(".")[0]
                found.append(((rank.get(top, len(rank)), pos), name, rule, module))
                break
    found.sort(key=lambda item: item[0])
    sites = []
    for index, (_, name, rule, module) in enumerate(found):
        kv = rule.kv if rule.kv is not None else rule.taps
        stream = rule.stream(name, module) if callable(rule.stream) else rule.stream
        sites.append(Site(
            name=name, index=index, kind=rule.kind, stream=stream, block=_block_of(name),
            taps=tuple(Tap(t, rule.tokens) for t in rule.taps)
            + tuple(Tap("", kwarg=m, mask=True) for m in rule.masks),
            params={"kv": sum(_count(module.get_submodule(p)) for p in kv), "qkvo": _count(module)},
            heads=getattr(module, "heads", None),
            values=tuple(Tap(v, rule.tokens) for v in rule.values), image_values=rule.image_values,
        ))
    return sites


def select_sites(sites: Sequence[Site], spec: str | Sequence[str] | None,
                 stream: str | None = None) -> list[Site]:
    """Pick sites by a spec: ``None`` (all), index ranges ``"0-3,10"``, names or glob patterns;
    ``stream`` keeps only the sites reading that conditioning stream (AudioLDM2: ``gpt2`` or ``t5``).

    >>> select_sites(sites, "55-57")            # by execution index
    >>> select_sites(sites, ["up_blocks.0.*"])  # by name pattern
    >>> select_sites(sites, None, stream="t5")  # one stream's sites
    """
    if stream is not None:
        known = sorted({s.stream for s in sites})
        sites = [s for s in sites if s.stream == stream]
        if not sites:
            raise UserError(f"no site reads stream {stream!r}; this model's streams: {', '.join(known)}")
    if spec is None:
        return list(sites)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    chosen: dict[str, Site] = {}
    for item in items:
        if not item:
            continue
        if item.replace("-", "").isdigit():
            lo, _, hi = item.partition("-")
            lo_i, hi_i = int(lo), int(hi or lo)
            matched = [s for s in sites if lo_i <= s.index <= hi_i]
        else:
            matched = [s for s in sites if fnmatch.fnmatchcase(s.name, item) or s.name == item]
        if not matched:
            raise UserError(f"no site matches {item!r}; run `multiloc sites` to list them")
        chosen.update((s.name, s) for s in matched)
    return sorted(chosen.values(), key=lambda s: s.index)
