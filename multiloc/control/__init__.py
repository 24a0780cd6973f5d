"""Control: use the localized sites. One file per method, on the same ``Patch`` / hooks machinery and
site tables as :mod:`multiloc.localize`.

- ``targets.py``: which sites (a spec, a scan's result, or the model's published sites)
- ``weights.py``: weight files (only the changed tensors + metadata), applied reversibly
- ``generate.py``: plain generation with modifiers (weight files, LoRA; steering slots in)
- ``finetune.py``: LoRA on the chosen sites (``lora.py``: its files; ``data.py``: the training folder)
- ``commands.py``: the CLI commands

Example::

    sites = multiloc.control.resolve_sites(model, "multiloc-out/sdxl-text/result.json")
    with model.applied("edit.safetensors"):
        images = multiloc.control.generate(model, ["a cat"], seeds=[0])
"""

from .finetune import finetune
from .generate import Lora, Weights, generate
from .lora import lora_applied
from .targets import published_sites, resolve_sites
from .weights import WeightFile, applied, apply, read_weights, save_weights

__all__ = ["Lora", "WeightFile", "Weights", "applied", "apply", "finetune", "generate", "lora_applied",
           "published_sites", "read_weights", "resolve_sites", "save_weights"]
