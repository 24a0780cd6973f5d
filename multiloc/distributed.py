"""The processes one scan is spread over: ``torchrun`` or ``accelerate launch`` start them, accelerate's
``PartialState`` joins them into one process group (gloo without GPUs), and the sweep shares out its
generations and merges the scores (:mod:`multiloc.localize.sweep`). One plain process is a group of one,
so the same code runs unchanged without a launcher.

Example::

    # torchrun --nproc_per_node 2 -m multiloc scan --model toy-shapes --concept toy-colour --device cpu
    group = processes()
    group.rank, group.world, group.main      # 0, 2, True on the first process
    mine = group.share(range(10))            # this process's items: 0, 2, 4, ... on rank 0
    everyone = group.gather({"rows": 5})     # one object per process, on every process
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class Processes:
    """This process's place in the group: ``rank`` of ``world``; ``main`` writes the results.

    >>> group = processes(); group.world
    1
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T], cost: Callable[[T], float] | None = None) -> list[T]:
        """This process's part of ``items`` (the same list on every process gives disjoint parts that
        cover it): without ``cost`` every ``world``-th item from its rank on; with it, the costliest
        first, each to the least loaded process (deterministic, so every process agrees), in order.

        >>> Processes(1, 2).share([10, 11, 12])
        [11]
        >>> Processes(0, 2).share([5, 1, 1, 1, 1, 1], cost=lambda x: x)
        [5]
        """
        if cost is None:
            return list(items[self.rank::self.world])
        load, mine = [0.0] * self.world, []
        for i in sorted(range(len(items)), key=lambda i: -cost(items[i])):
            to = min(range(self.world), key=lambda r: (load[r], r))
            load[to] += cost(items[i])
            if to == self.rank:
                mine.append(i)
        return [items[i] for i in sorted(mine)]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order, on every process (a collective: all must call it).

        >>> Processes().gather(3)
        [3]
        """
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def device(self, asked: torch.device) -> torch.device:
        """The device this process works on: ``cuda`` without an index becomes this process's GPU.

        >>> Processes(1, 2, local_rank=1).device(torch.device("cuda"))
        device(type='cuda', index=1)
        """
        if self.world > 1 and asked.type == "cuda" and asked.index is None:
            return torch.device("cuda", self.local_rank)
        return asked


@lru_cache(maxsize=1)
def processes() -> Processes:
    """The group this process belongs to: from the launcher's environment (``WORLD_SIZE`` > 1), joined
    through accelerate once; else a group of one.

    >>> processes().main
    True
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    # Without GPUs the default backend is unusable; gloo runs everywhere (torchrun --nproc_per_node N).
    state = PartialState(**({} if torch.cuda.is_available() else {"backend": "gloo"}))
    return Processes(state.process_index, state.num_processes, state.local_process_index)
