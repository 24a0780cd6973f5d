"""Control: use the localized sites. One file per method, on the same ``Patch`` / hooks machinery and
site tables as :mod:`multiloc.localize`.

- ``targets.py``: which sites (a spec, a scan's result, or the model's published sites)
- ``weights.py``: weight files (only the changed tensors + metadata), applied reversibly
- ``edit.py``: one-pass output edits (only the chosen sites read the edited prompt), baselines, evaluation
- ``sld.py``: Safe Latent Diffusion guidance for every CFG family (the ``sld`` baseline of ``edit``)
- ``generate.py``: plain generation with modifiers (weight files, LoRA, steering vectors)
- ``rewrite.py``: closed-form key/value edits of the sites (``multiloc rewrite``), saved as weight files
- ``steer.py``: activation-steering vectors (CAA) per site and step, steering files
- ``steer_sweep.py``: the alpha sweep (localized / all / all-but-localized sites)
- ``finetune.py``: LoRA on the chosen sites (``lora.py``: its files; ``data.py``: the training folder)
- ``commands.py``: the CLI commands

Example::

    sites = multiloc.control.resolve_sites(model, "multiloc-out/sdxl-text/result.json")
    with model.applied("edit.safetensors"):
        images = multiloc.control.generate(model, ["a cat"], seeds=[0])
"""

import importlib
import sys
import types
from typing import Any

# Imported on first use (PEP 562), so the CLI can register the control commands (commands.py) without
# loading torch. name -> submodule defining it.
_LAZY = {
    "EditRun": "edit", "edit": "edit", "evaluate": "edit", "parse_pairs": "edit", "finetune": "finetune",
    "Lora": "generate", "Steer": "generate", "Weights": "generate", "generate": "generate",
    "lora_applied": "lora", "rewrite": "rewrite", "SteeringVectors": "steer", "read_steering": "steer",
    "save_steering": "steer", "steering_vectors": "steer", "published_sites": "targets",
    "resolve_sites": "targets", "WeightFile": "weights", "applied": "weights", "apply": "weights",
    "read_weights": "weights", "save_weights": "weights",
}


# The projections of each site LoRA adapts by default (here, not in lora.py: `multiloc --help` shows them
# without importing torch).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class _Package(types.ModuleType):
    """Importing the submodule ``edit`` must not hide the function ``edit`` (same for finetune, generate,
    rewrite): the import system sets the package attribute to the submodule, which is ignored here."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'multiloc.control' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


sys.modules[__name__].__class__ = _Package

__all__ = ["EditRun", "Lora", "Steer", "SteeringVectors", "WeightFile", "Weights", "applied", "apply", "edit",
           "evaluate", "finetune", "generate", "lora_applied", "parse_pairs", "published_sites", "read_steering",
           "read_weights", "resolve_sites", "rewrite", "save_steering", "save_weights", "steering_vectors"]
