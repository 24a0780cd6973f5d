"""Build pipelines from component configs, with random weights and in-memory tokenizers.

This is how the built-in tiny models, the tests and the offline ``sites`` command get real
diffusers/transformers classes without any download. A spec names each component's class and
config; classes are looked up in diffusers, then transformers.

Example::

    pipe = build_pipeline({
        "pipeline": "StableDiffusionPipeline",
        "components": {
            "unet": {"class": "UNet2DConditionModel", "config": {...}},
            "tokenizer": {"class": "char-tokenizer"},
            "safety_checker": None,
            ...
        },
    }, seed=0)
"""

from __future__ import annotations

import string
from contextlib import nullcontext
from typing import Any

import torch

from .errors import UserError

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def char_tokenizer(max_length: int = 77, bos: bool = True) -> Any:
    """A character-level fast tokenizer over printable ASCII, built in memory.

    Every prompt encodes without unknown words, and offsets map characters to tokens one to one.
    ``<eos>`` has id 3 (CLIP's text model treats an eos id of 2 as a legacy special case).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in string.printable[:95]:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    template = "<bos> $A <eos>" if bos else "$A <eos>"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<bos>", 2), ("<eos>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>", unk_token="<unk>",
        bos_token="<bos>", eos_token="<eos>")


def t5_char_tokenizer(max_length: int = 77) -> Any:
    """A character-level ``T5Tokenizer`` built in memory (pipelines that check for the T5 class).

    It saves and reloads with ``save_pretrained`` / ``from_pretrained`` like a real one.
    """
    from transformers import T5Tokenizer

    chars = [c for c in string.printable[:95] if c != " "]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def roberta_char_tokenizer(max_length: int = 77) -> Any:
    """A character-level ``RobertaTokenizer`` (byte-level BPE with no merges) built in memory."""
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for ch in string.printable[:95]:
        if ch != " ":
            vocab.setdefault(ch, len(vocab))
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


TOKENIZERS = {"char-tokenizer": char_tokenizer, "t5-char-tokenizer": t5_char_tokenizer,
              "roberta-char-tokenizer": roberta_char_tokenizer}


def resolve_class(name: str) -> type:
    """A class by name from diffusers (also its pipeline subpackages), else transformers."""
    import diffusers
    import transformers

    for module in (diffusers, transformers):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise UserError(f"no class {name!r} in diffusers or transformers; check the model config")


def build_component(spec: dict[str, Any] | None) -> Any:
    """One component from ``{"class": ..., "config": {...}}``; ``None`` stays ``None``."""
    if spec is None:
        return None
    name, config = spec["class"], dict(spec.get("config") or {})
    if name in TOKENIZERS:
        return TOKENIZERS[name](**config)
    cls = resolve_class(name)
    if hasattr(cls, "from_config"):  # diffusers models and schedulers
        return cls.from_config(config)
    if getattr(cls, "config_class", None) is None:  # feature extractors and other plain classes
        return cls(**config)
    model = cls(cls.config_class(**config))  # transformers models
    for key, value in (spec.get("config_extra") or {}).items():
        setattr(model.config, key, value)  # attributes a pipeline reads that the config class lacks
    return model


def build_denoiser(spec: dict[str, Any], meta: bool = True) -> torch.nn.Module:
    """The denoiser alone from its architecture config; on the meta device by default (no memory)."""
    with torch.device("meta") if meta else nullcontext():
        return build_component(spec)


def build_pipeline(spec: dict[str, Any], seed: int = 0) -> Any:
    """A whole pipeline with random weights (seeded), from a spec of component configs."""
    torch.manual_seed(seed)
    components = {name: build_component(c) for name, c in spec["components"].items()}
    for c in components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()
    pipe = resolve_class(spec["pipeline"])(**components, **spec.get("options", {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe
