"""The text encoders of a pipeline, as transformers lays them out: embeddings, then a list of layers.

An adapter declares its encoders in ``Adapter.text_encoders``: ``(module path, tokenizer attribute)``
pairs (SDXL: ``text_encoder`` and ``text_encoder_2``; AudioLDM2: CLAP's text tower
``text_encoder.text_model`` and T5). Everything else is found from transformers' standard names:
the layer list (``layers``, ``layer``, ``block``, ``h``), and in a layer its self-attention, its MLP
and the attention's output projection (:data:`PARTS`).

Example::

    enc = find_encoder(model, "text_encoder")
    len(enc.layers), enc.part(0, "attn"), enc.out_proj(0)[1]   # 2, CLIPAttention, 'text_encoder.encoder...'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import UserError

LAYER_LISTS = ("layers", "layer", "block", "h")
# A layer's parts, by transformers' names: CLIP, Gemma/Qwen, GPT-2, T5, RoBERTa (CLAP's text tower).
PARTS = {
    "attn": ("self_attn", "attn", "layer.0.SelfAttention", "attention"),
    "mlp": ("mlp", "layer.1.DenseReluDense", "intermediate"),
}
OUT_PROJ = ("out_proj", "o_proj", "o", "output.dense")
COMPONENTS = ("block", "attn", "mlp")


@dataclass
class Encoder:
    """One text encoder: its ``name`` (module path in the pipeline), ``module``, ``tokenizer`` and
    the ``layers`` list (``layers_path`` inside ``module``)."""

    name: str
    module: nn.Module
    tokenizer: Any
    layers: nn.ModuleList
    layers_path: str

    def part(self, layer: int, component: str) -> nn.Module:
        """The module whose output is ``component`` (``block``, ``attn``, ``mlp``) of ``layer``."""
        block = self.layers[layer]
        if component == "block":
            return block
        for path in PARTS[component]:
            try:
                return block.get_submodule(path)
            except AttributeError:
                continue
        raise UserError(f"{self.name}'s layers ({type(block).__name__}) have no {component} part multiloc "
                        f"knows (looked for {', '.join(PARTS[component])})")

    def out_proj(self, layer: int) -> tuple[nn.Linear, str]:
        """``layer``'s self-attention output projection and its weight's key in a weight file
        (``text_encoder.encoder.layers.0.self_attn.out_proj.weight``: the pipeline path, then the parameter's)."""
        if not 0 <= layer < len(self.layers):
            raise UserError(f"{self.name} has layers 0-{len(self.layers) - 1}, not {layer}")
        attn = self.part(layer, "attn")
        for path in OUT_PROJ:
            try:
                m = attn.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(m, nn.Linear):
                prefix = next(n for n, x in self.module.named_modules() if x is m)
                return m, f"{self.name}.{prefix}.weight"
        raise UserError(f"{self.name} layer {layer}: no linear output projection of the self-attention found "
                        f"(looked for {', '.join(OUT_PROJ)})")


def encoder_names(model: Any) -> list[str]:
    """The declared encoders ``model``'s pipeline has (in the adapter's order)."""
    return [path for path, tok in model.adapter.text_encoders if _get(model.pipe, path) is not None
            and getattr(model.pipe, tok, None) is not None]


def find_encoder(model: Any, name: str | None = None) -> Encoder:
    """The encoder ``name`` (default: the first declared), UserError if the model has no such one.

    >>> find_encoder(multiloc.load("tiny-sdxl"), "text_encoder_2").layers_path
    'text_model.encoder.layers'
    """
    names = encoder_names(model)
    if not names:
        raise UserError(f"{model.name} declares no text encoder to trace")
    name = name or names[0]
    if name not in names:
        raise UserError(f"{model.name} has no text encoder {name!r}; it has {', '.join(names)}")
    tok = dict(model.adapter.text_encoders)[name]
    module = _get(model.pipe, name)
    lists = [(n, m) for n, m in module.named_modules()
             if isinstance(m, nn.ModuleList) and n.split(".")[-1] in LAYER_LISTS and len(m)]
    if not lists:
        raise UserError(f"{name} ({type(module).__name__}) has no layer list multiloc knows "
                        f"({', '.join(LAYER_LISTS)})")
    path, layers = min(lists, key=lambda x: x[0].count("."))  # the outermost: T5's blocks, not their parts
    return Encoder(name, module, getattr(model.pipe, tok), layers, path)


def run_encoders(model: Any, prompts: Sequence[str], steps: int | None = None, guidance: float | None = None,
                 ) -> Any:
    """Really run the text encoders on ``prompts`` (never the conditioning cache); returns the
    conditioning, or, for a family that encodes inside its pipeline call, the outputs of a generation
    (``steps``/``guidance``: its settings; default one step without guidance, the cheapest call)."""
    if model.adapter.prompt_in_call:
        return model.generate(list(prompts), steps=steps or 1, guidance=1.0 if guidance is None else guidance)
    import torch

    with torch.no_grad():
        return model.adapter.encode(model.pipe, list(prompts), model.device, settings=model.settings)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
