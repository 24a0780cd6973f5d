"""Memory: the peak a run reached (device memory on a GPU, the process's resident set on a CPU), and
telling an out-of-memory error from other errors, so a sweep can split a generation that does not fit.

Example::

    peak_memory_mb(model.device)      # {"kind": "rss", "mb": 812.4} on a CPU
    try:
        model.generate(batch, plan)
    except Exception as e:
        if not out_of_memory(e):
            raise
        release(model.device)         # free the cached blocks before a smaller retry
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb(device: torch.device) -> dict[str, str | float]:
    """The peak memory of this process so far: CUDA memory allocated on ``device``, else the peak resident
    set size (RSS) of the process, in MiB.

    >>> peak_memory_mb(torch.device("cpu"))["kind"]
    'rss'
    """
    if device.type == "cuda":
        return {"kind": "cuda", "mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"kind": "rss", "mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says a device ran out of memory (CUDA, MPS, or a backend's plain RuntimeError).

    >>> out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    True
    """
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def release(device: torch.device) -> None:
    """Give cached device memory back after an out-of-memory error (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
