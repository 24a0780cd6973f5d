"""Build pipelines from component configs, with random weights and in-memory tokenizers.

This is how the built-in tiny models, the tests and the offline ``sites`` command get real
diffusers/transformers classes without any download. A spec names each component's class and
config; classes are looked up in diffusers, then transformers. A spec may also name a
``weights`` file (safetensors, keys ``COMPONENT.PARAM``): the built-in toy models ship their
trained weights that way, inside the package, and are built from config and then loaded.

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
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def char_tokenizer(max_length: int = 77, bos: bool = True) -> Any:
    """A character-level fast tokenizer over printable ASCII, built in memory.

    Every prompt encodes without unknown words, and offsets map characters to tokens one to one.
    ``<eos>`` has id 3 (CLIP's text model treats an eos id of 2 as a legacy special case).
    """
    from tokenizers import pre_tokenizers

    return _fast_tokenizer(list(string.printable[:95]), pre_tokenizers.Split("", behavior="isolated"),
                           None, max_length, bos)


def word_tokenizer(words: list[str], max_length: int = 77, bos: bool = True) -> Any:
    """A word-level fast tokenizer over ``words`` (lower-cased, split on whitespace and punctuation),
    built in memory; other words become ``<unk>``. Special tokens and ids as :func:`char_tokenizer`.

    >>> word_tokenizer(["a", "red", "circle"])("a red circle").input_ids
    [2, 4, 5, 6, 3]
    """
    from tokenizers import normalizers, pre_tokenizers

    return _fast_tokenizer([w.lower() for w in words], pre_tokenizers.Whitespace(), normalizers.Lowercase(),
                           max_length, bos)


def _fast_tokenizer(tokens: list[str], pre_tokenizer: Any, normalizer: Any, max_length: int, bos: bool) -> Any:
    """A word-level fast tokenizer: the specials, then ``tokens``; ``<bos>`` (optional) and ``<eos>`` added."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
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


TOKENIZERS = {"char-tokenizer": char_tokenizer, "word-tokenizer": word_tokenizer,
              "t5-char-tokenizer": t5_char_tokenizer, "roberta-char-tokenizer": roberta_char_tokenizer}


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
    """A whole pipeline from a spec of component configs: random weights (seeded), then the spec's
    ``weights`` file loaded over them if it names one (see :func:`load_weights`)."""
    torch.manual_seed(seed)
    components = {name: build_component(c) for name, c in spec["components"].items()}
    if spec.get("weights"):
        load_weights(components, package_file(spec["weights"]))
    for c in components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()
    pipe = resolve_class(spec["pipeline"])(**components, **spec.get("options", {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def package_file(name: str) -> Path:
    """A file shipped inside the package, named relative to ``multiloc.configs`` (``toy/x.safetensors``)."""
    path = Path(str(resources.files("multiloc.configs") / name))
    if not path.is_file():
        raise UserError(f"the package has no file {name!r}; reinstall multiloc, or rebuild the toy "
                        "weights with `multiloc train-toy`")
    return path


def component_state(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every module component's parameters and persistent buffers, keyed ``COMPONENT.PARAM``. Tied
    tensors (T5's shared embedding) are stored once per key, as safetensors requires."""
    out, seen = {}, set()
    for name, c in components.items():
        if isinstance(c, torch.nn.Module):
            for k, v in c.state_dict().items():
                v = v.detach().contiguous()
                out[f"{name}.{k}"] = v.clone() if v.data_ptr() in seen else v
                seen.add(v.data_ptr())
    return out


def load_weights(components: dict[str, Any], path: Path | str) -> None:
    """Load a safetensors file of ``COMPONENT.PARAM`` tensors into the built components (strictly:
    a missing or unexpected tensor means the file does not fit the config, which is an error)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))  # safetensors: no pickle, no code runs
    for name, c in components.items():
        if not isinstance(c, torch.nn.Module):
            continue
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        if own:
            try:
                c.load_state_dict(own, strict=True)
            except RuntimeError as e:
                raise UserError(f"{path} does not fit the {name} of its config: {str(e).splitlines()[0]}") from None
