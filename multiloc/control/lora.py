"""LoRA adapters on chosen sites (PEFT): attach for training, save, read, check, apply reversibly.

A LoRA folder holds the weights in the format the model's pipeline loads itself, plus
``finetune.json`` (what it was made for and how):

- ``format: diffusers``: ``pytorch_lora_weights.safetensors``, written by the pipeline class's own
  ``save_lora_weights`` (pipelines with a LoRA loader: SD, SDXL, IF, SD3, FLUX, SANA, ACE-Step), so
  stock ``pipe.load_lora_weights(DIR)`` loads it;
- ``format: peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT's
  ``PeftModel.save_pretrained`` writes them (the others: PixArt, AudioLDM2, Stable Audio), so
  ``PeftModel.from_pretrained(denoiser, DIR)`` loads it.

``finetune.json`` also keeps the fingerprint (sum, norm) of every base projection the LoRA wraps: a
LoRA made for another model (same family and shapes, other weights) is refused.

Example::

    with lora_applied(model, "out/lora"):          # loaded for the block, unloaded after
        images = model.generate(["a small cyan circle"])
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..results import write_atomic
from ..sites import Site
from . import DEFAULT_TARGETS  # noqa: F401  (re-exported for finetune.py)
from .weights import _close, fingerprint

ADAPTER = "multiloc"  # the PEFT adapter name multiloc attaches under
INFO = "finetune.json"
FORMAT = "multiloc.lora/1"
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before the module paths


def lora_modules(model: Any, sites: Sequence[Site], targets: Sequence[str]) -> list[str]:
    """The denoiser paths ``SITE.TARGET`` LoRA wraps, each checked to be a linear projection.

    >>> lora_modules(model, sites, ["to_q", "to_k"])
    ['up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q', '...attn2.to_k']
    """
    if not targets:
        raise UserError("--targets names no projection")
    names = []
    for site in sites:
        for target in targets:
            try:
                module = model.denoiser.get_submodule(f"{site.name}.{target}")
            except AttributeError:
                module = None
            if not isinstance(module, torch.nn.Linear):
                have = sorted(n for n, m in model.denoiser.get_submodule(site.name).named_modules()
                              if isinstance(m, torch.nn.Linear))
                raise UserError(f"site {site.name} has no linear projection {target!r} "
                                f"(it has: {', '.join(have)})")
            names.append(f"{site.name}.{target}")
    return names


def lora_config(modules: Sequence[str], rank: int) -> Any:
    """A PEFT ``LoraConfig`` of rank ``rank`` on exactly ``modules`` (alpha = rank: scale 1, so every
    loader, with or without the stored config, applies it alike).

    >>> lora_config(lora_modules(model, sites, DEFAULT_TARGETS), rank=4).r
    4
    """
    from peft import LoraConfig

    if rank < 1:
        raise UserError(f"--rank must be at least 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(modules), lora_dropout=0.0,
                      init_lora_weights=True)


@contextmanager
def attached(model: Any, config: Any, seed: int = 0) -> Iterator[list[torch.nn.Parameter]]:
    """Attach a fresh LoRA (``config``; its random ``A`` matrices from ``seed``) to ``model``'s denoiser
    for the block, yielding its trainable parameters; on exit (also on errors) the LoRA is removed and
    every parameter's ``requires_grad`` is put back.

    >>> with attached(model, lora_config(modules, 4), seed=0) as params:
    ...     opt = torch.optim.AdamW(params, lr=1e-3)
    """
    denoiser = model.denoiser
    grads = {n: p.requires_grad for n, p in denoiser.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _inject(denoiser, config)
    try:
        denoiser.requires_grad_(False)
        params = [p for n, p in denoiser.named_parameters() if f".{ADAPTER}." in n and "lora_" in n]
        for p in params:
            p.data = p.data.float()  # trained in float32 under fp16/bf16 weights too (PEFT casts inputs)
            p.requires_grad_(True)
        yield params
    finally:
        _remove(denoiser)
        for n, p in denoiser.named_parameters():
            p.requires_grad_(grads.get(n, p.requires_grad))


def _inject(denoiser: Any, config: Any) -> None:
    """Wrap ``config``'s modules with multiloc's adapter: diffusers' ``add_adapter`` where the denoiser
    has it, else PEFT's ``inject_adapter_in_model`` (PixArt, Stable Audio denoisers lack the mixin)."""
    if hasattr(denoiser, "add_adapter"):
        denoiser.add_adapter(config, adapter_name=ADAPTER)
        return
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, denoiser, adapter_name=ADAPTER)
    denoiser.peft_config = {**getattr(denoiser, "peft_config", {}), ADAPTER: config}


def _remove(denoiser: Any) -> None:
    """Take multiloc's adapter off; the base layers come back as they were (never merged)."""
    if ADAPTER not in getattr(denoiser, "peft_config", {}):
        return
    if len(denoiser.peft_config) > 1 and hasattr(denoiser, "delete_adapters"):  # keep the user's own adapters
        denoiser.delete_adapters(ADAPTER)
        return
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(denoiser)  # what diffusers' unload_lora does
    del denoiser.peft_config
    if getattr(denoiser, "_hf_peft_config_loaded", None):
        denoiser._hf_peft_config_loaded = None


def wrapped(model: Any) -> list[str]:
    """Paths of the denoiser's modules a LoRA wraps now (sorted).

    >>> with lora_applied(model, "out/lora"):
    ...     wrapped(model)      # ['up_blocks.1....attn2.to_k', ...]
    """
    from peft.tuners.lora import LoraLayer

    return sorted(n for n, m in model.denoiser.named_modules() if isinstance(m, LoraLayer))


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The attached adapter's tensors, keyed by module path (PEFT's ``get_peft_model_state_dict``).

    >>> lora_state(model)["up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q.lora_A.weight"].shape
    torch.Size([4, 32])
    """
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu").clone() for k, v in
            get_peft_model_state_dict(model.denoiser, adapter_name=ADAPTER).items()}


def set_lora_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Load tensors of :func:`lora_state` into the attached adapter.

    >>> set_lora_state(model, checkpoint["lora"])
    """
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model.denoiser, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise UserError(f"the LoRA holds tensors this model has no place for ({unexpected[0]})")


def lora_format(model: Any) -> str:
    """``diffusers`` where the pipeline class saves and loads LoRA for its denoiser, else ``peft``.

    >>> lora_format(multiloc.load("toy-shapes")), lora_format(multiloc.load("toy-shapes-dit"))
    ('diffusers', 'peft')
    """
    import inspect

    cls = type(model.pipe)
    if hasattr(cls, "load_lora_weights") and hasattr(cls, "save_lora_weights"):
        params = inspect.signature(cls.save_lora_weights).parameters
        if f"{model.adapter.denoiser_attr}_lora_layers" in params:
            return "diffusers"
    return "peft"


def save_lora(out: str | Path, model: Any, config: Any, info: dict[str, Any]) -> Path:
    """Write the attached adapter to ``out`` in :func:`lora_format` (see the module docstring) and
    ``out/finetune.json`` (``info`` plus the format, the model, the modules and their fingerprints).

    >>> with attached(model, config) as params:
    ...     ...  # train
    ...     save_lora("out/lora", model, config, {"steps": 200})
    """
    from safetensors.torch import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = lora_state(model)
    fmt = lora_format(model)
    with tempfile.TemporaryDirectory(dir=out) as tmp:  # written whole, then moved in
        if fmt == "diffusers":
            from diffusers.utils import convert_state_dict_to_diffusers

            attr = model.adapter.denoiser_attr
            type(model.pipe).save_lora_weights(tmp, **{f"{attr}_lora_layers": convert_state_dict_to_diffusers(state),
                                                        f"{attr}_lora_adapter_metadata": config.to_dict()},
                                               safe_serialization=True)
        else:
            config.save_pretrained(tmp)
            (Path(tmp) / "adapter_model.safetensors").write_bytes(
                save({PEFT_PREFIX + k: v.contiguous() for k, v in state.items()}))
        for f in Path(tmp).iterdir():
            f.replace(out / f.name)
    modules = wrapped(model)  # not config.target_modules: PEFT may shorten a long list to suffixes
    record = {"format": FORMAT, "lora_format": fmt, "model": model.name, "adapter": model.adapter.name,
              **info, "modules": modules,
              "original": {m: fingerprint(model.denoiser.get_submodule(m).weight) for m in modules}}
    write_atomic(out / INFO, json.dumps(record, indent=2, default=str) + "\n")
    return out


def read_lora(path: str | Path) -> dict[str, Any]:
    """``DIR/finetune.json`` of a LoRA folder (one-line UserError when it is not one).

    >>> read_lora("out/lora")["sites"]
    ['up_blocks.1.attentions.1.transformer_blocks.0.attn2']
    """
    path = Path(path)
    info = path / INFO
    if not info.is_file():
        raise UserError(f"{path} is not a multiloc LoRA folder (no {INFO}; make one with multiloc finetune)")
    try:
        record = json.loads(info.read_text())
        assert record["format"] == FORMAT and record["lora_format"] in ("diffusers", "peft")
    except (ValueError, KeyError, AssertionError, TypeError):
        raise UserError(f"{info} is damaged or of another multiloc version") from None
    record["path"] = str(path)
    return record


def check_lora(model: Any, record: dict[str, Any]) -> None:
    """Refuse (UserError) a LoRA made for another family or model (shapes or base weights differ).

    >>> check_lora(multiloc.load("tiny-sd"), read_lora("out/lora"))   # made for toy-shapes
    UserError: the LoRA out/lora was made for toy-shapes, whose weights at ... differ from tiny-sd's
    """
    where = record["path"]
    if record["adapter"] != model.adapter.name:
        raise UserError(f"the LoRA {where} was made for {record['model']} (the {record['adapter']} family); "
                        f"{model.name} is of the {model.adapter.name} family")
    for name, old in record["original"].items():
        try:
            weight = model.denoiser.get_submodule(name).weight
        except AttributeError:
            raise UserError(f"the LoRA {where} was made for {record['model']}: {model.name} has no {name}") from None
        if not _close(fingerprint(weight), old):
            raise UserError(f"the LoRA {where} was made for {record['model']}, whose weights at {name} differ "
                            f"from {model.name}'s")


@contextmanager
def lora_applied(model: Any, path: str | Path) -> Iterator[dict[str, Any]]:
    """Load the LoRA folder ``path`` (either format) into ``model`` for the block; unloaded on exit,
    the base weights bit-identical (LoRA is never merged into them).

    >>> with lora_applied(model, "out/lora"):
    ...     images = model.generate(["a small cyan circle"])
    """
    record = read_lora(path)
    check_lora(model, record)
    _load(model, record)
    try:
        yield record
    finally:
        _remove(model.denoiser)


def _load(model: Any, record: dict[str, Any]) -> None:
    path = Path(record["path"])
    try:
        if record["lora_format"] == "diffusers":
            from diffusers.utils import logging

            before = logging.get_verbosity()
            logging.set_verbosity_error()  # not the "no LoRA keys for the text encoder" notice: by design
            try:
                model.pipe.load_lora_weights(str(path), adapter_name=ADAPTER)
            finally:
                logging.set_verbosity(before)
            return
        from peft import LoraConfig
        from safetensors.torch import load_file

        config = LoraConfig.from_pretrained(str(path))
        state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(path / "adapter_model.safetensors")).items()}
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged folder: one line, not a traceback
        _remove(model.denoiser)
        raise UserError(f"cannot load the LoRA {path} ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})") from None
    _inject(model.denoiser, config)
    try:
        set_lora_state(model, state)
    except BaseException:
        _remove(model.denoiser)
        raise

