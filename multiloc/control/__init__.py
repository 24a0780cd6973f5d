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

from .edit import EditRun, edit, evaluate, parse_pairs
from .finetune import finetune
from .generate import Lora, Steer, Weights, generate
from .lora import lora_applied
from .rewrite import rewrite
from .steer import SteeringVectors, read_steering, save_steering, steering_vectors
from .targets import published_sites, resolve_sites
from .weights import WeightFile, applied, apply, read_weights, save_weights

__all__ = ["EditRun", "Lora", "Steer", "SteeringVectors", "WeightFile", "Weights", "applied", "apply", "edit",
           "evaluate", "finetune", "generate", "lora_applied", "parse_pairs", "published_sites", "read_steering",
           "read_weights", "resolve_sites", "rewrite", "save_steering", "save_weights", "steering_vectors"]
