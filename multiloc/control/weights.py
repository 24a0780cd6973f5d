"""Weight files: the tensors a control method changed, with what they were made for; applied reversibly.

A weight file is a safetensors file holding only the changed tensors, keyed ``COMPONENT.PARAM``
(``unet.up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k.weight``: the pipeline attribute,
then the parameter's path), and string metadata:

- ``format``: ``multiloc.weights/1``; ``kind``: what made it (``rewrite``, ...);
- ``model``, ``adapter``: the model and family it was made for; ``sites``: JSON list of site names;
- ``details``: JSON of the method's settings (edits, lambda, ...); ``multiloc``: the version;
- ``original``: JSON ``{key: [sum, norm]}`` of the tensors it replaces, so a file made for another
  model (same family, same shapes, other weights) is recognised and refused.

A loaded model never changes unless asked: :func:`applied` changes it for a ``with`` block and puts
the very same values back afterwards (also on an exception); :func:`apply` changes it until the
returned undo is called.

Example::

    save_weights("edit.safetensors", model, {"unet.mid_block...to_k.weight": w}, kind="rewrite",
                 sites=[site.name], details={"lam": 0.1})
    with applied(model, "edit.safetensors"):       # or: with model.applied("edit.safetensors"):
        images = model.generate(["a red cube"])
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..results import write_atomic

FORMAT = "multiloc.weights/1"
# How far the replaced tensors' fingerprint may drift (fp16/bf16 copies of the same checkpoint).
FINGERPRINT_RTOL = 1e-2


@dataclass
class WeightFile:
    """A weight file in memory: ``tensors`` by ``COMPONENT.PARAM`` key and its metadata."""

    tensors: dict[str, torch.Tensor]
    kind: str
    model: str
    adapter: str
    sites: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    original: dict[str, list[float]] = field(default_factory=dict)
    path: str | None = None

    def metadata(self) -> dict[str, str]:
        from .. import __version__

        return {"format": FORMAT, "kind": self.kind, "model": self.model, "adapter": self.adapter,
                "sites": json.dumps(self.sites), "details": json.dumps(self.details, default=str),
                "original": json.dumps(self.original), "multiloc": __version__}


def parameter(model: Any, key: str) -> torch.nn.Parameter:
    """The parameter a ``COMPONENT.PARAM`` key names in ``model``'s pipeline (UserError if none)."""
    component, _, path = key.partition(".")
    module = getattr(model.pipe, component, None)
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"the weight file changes {key!r}, but {model.name} has no component {component!r}")
    try:
        return module.get_parameter(path)
    except AttributeError:
        raise UserError(f"the weight file changes {key!r}, which {model.name} does not have; "
                        "was it made for another model?") from None


def fingerprint(t: torch.Tensor) -> list[float]:
    """``[sum, norm]`` of a tensor in float64: cheap, and the same for a checkpoint in any dtype."""
    t = t.detach().to("cpu", torch.float64)
    return [float(t.sum()), float(t.norm())]


def make_weights(model: Any, tensors: Mapping[str, torch.Tensor], *, kind: str, sites: Sequence[str] = (),
                 details: Mapping[str, Any] | None = None) -> WeightFile:
    """A :class:`WeightFile` of new values for ``model``'s parameters (fingerprinting the old ones)."""
    return WeightFile(tensors={k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                      kind=kind, model=model.name, adapter=model.adapter.name, sites=list(sites),
                      details=dict(details or {}),
                      original={k: fingerprint(parameter(model, k)) for k in tensors})


def save_weights(path: str | Path, weights: WeightFile) -> Path:
    """Write ``weights`` to ``path`` atomically (safetensors, see the module docstring)."""
    from safetensors.torch import save

    path = Path(path)
    write_atomic(path, save(weights.tensors, metadata=weights.metadata()))
    weights.path = str(path)
    return path


def read_tagged(path: str | Path, fmt: str, what: str, hint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a multiloc safetensors file whose ``format`` is ``fmt``; a missing
    file, a file that is not safetensors or one of another format is a one-line :class:`UserError`
    (``what`` names the kind of file, ``hint`` what to do with another one)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a safetensors file ({str(e).splitlines()[0][:80]})") from None
    if meta.get("format") != fmt:
        raise UserError(f"{path} is a safetensors file but not a multiloc {what}{hint}")
    return tensors, meta


def read_weights(path: str | Path) -> WeightFile:
    """Read a weight file; anything that is not one is a one-line :class:`UserError`."""
    tensors, meta = read_tagged(path, FORMAT, "weight file", " (made by multiloc rewrite); a LoRA folder goes to --lora")
    try:
        return WeightFile(tensors=tensors, kind=meta["kind"], model=meta["model"], adapter=meta["adapter"],
                          sites=json.loads(meta["sites"]), details=json.loads(meta["details"]),
                          original=json.loads(meta["original"]), path=str(path))
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: damaged multiloc metadata ({e})") from None


def check_weights(model: Any, weights: WeightFile) -> None:
    """Refuse (UserError) a file made for another family or model, or for other shapes."""
    where = weights.path or "the weight file"
    if weights.adapter != model.adapter.name:
        raise UserError(f"{where} was made for {weights.model} (the {weights.adapter} family); "
                        f"{model.name} is of the {model.adapter.name} family")
    for key, value in weights.tensors.items():
        param = parameter(model, key)
        if tuple(param.shape) != tuple(value.shape):
            raise UserError(f"{where} was made for {weights.model}: {key} is {tuple(value.shape)} there, "
                            f"{tuple(param.shape)} in {model.name}")
        old = weights.original.get(key)
        if old is not None and not _close(fingerprint(param), old):
            raise UserError(f"{where} was made for {weights.model}, whose weights at {key} differ from "
                            f"{model.name}'s; make the edit for this model")


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    scale = max(abs(b[1]), 1e-12)
    return all(math.isclose(x, y, rel_tol=FINGERPRINT_RTOL, abs_tol=FINGERPRINT_RTOL * scale)
               for x, y in zip(a, b))


def _as_weights(item: WeightFile | str | Path) -> WeightFile:
    return item if isinstance(item, WeightFile) else read_weights(item)


def apply(model: Any, *items: WeightFile | str | Path) -> Callable[[], None]:
    """Write the files' tensors into ``model`` (all checked first); returns ``undo()``, which puts the
    exact previous values back. Later files win where two change the same tensor."""
    files = [_as_weights(i) for i in items]
    for f in files:
        check_weights(model, f)
    backup: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for f in files:
                for key, value in f.tensors.items():
                    param = parameter(model, key)
                    backup.setdefault(key, param.detach().clone())
                    param.copy_(value.to(param.device, param.dtype))
    except BaseException:
        _restore(model, backup)
        raise
    model.clear_cache()  # an edited text encoder must not serve stale conditioning
    return lambda: _restore(model, backup)


def _restore(model: Any, backup: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in backup.items():
            parameter(model, key).copy_(value)
    model.clear_cache()


@contextmanager
def applied(model: Any, *items: WeightFile | str | Path) -> Iterator[list[WeightFile]]:
    """Apply weight files for the ``with`` block; the model is restored bit for bit on exit."""
    files = [_as_weights(i) for i in items]
    undo = apply(model, *files)
    try:
        yield files
    finally:
        undo()
