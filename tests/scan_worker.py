"""Run by ``tests/test_distributed.py`` under torchrun: a scan of ``tiny-sd`` for the concept YAML in
argv[1], into argv[2], whose process 1 dies (``os._exit``) on its second generation when argv[3] is "die".
"""

import os
import sys

import torch

import multiloc
from multiloc.distributed import processes
from multiloc.scorers.reference import ReferenceScorer


class DiesOnProcess1(ReferenceScorer):
    """The reference scorer; process 1 dies hard on its second call, as a crashed or killed rank does."""

    calls = 0

    def score(self, outputs, targets):
        self.calls += 1
        if processes().rank == 1 and self.calls == 2:
            os._exit(3)
        return super().score(outputs, targets)


if __name__ == "__main__":
    torch.set_num_threads(1)
    concept, out, mode = sys.argv[1:4]
    multiloc.scan("tiny-sd", concept, seeds=1, steps=3, batch_size=3, out=out, progress=False, samples=False,
                  scorer=DiesOnProcess1() if mode == "die" else None)
