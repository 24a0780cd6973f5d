"""Registries: adapters (entry points), models (configs/models/*.yaml), concepts (configs/concepts).

Built-in adapters register through the same entry-point group, ``multiloc.adapters``, that a
third-party package uses; :func:`register_adapter` adds one at run time (notebooks, tests).

Example::

    registry.adapters()                 # {'unet': <UNetAdapter>, ...}
    registry.model_spec("sdxl")["hub_id"]
    registry.concept_path("colour")
"""

from __future__ import annotations

from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import UserError

if TYPE_CHECKING:  # adapter.py loads torch; listing the registry does not need it
    from .adapter import Adapter

_EXTRA: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter | type[Adapter]) -> Adapter:
    """Make an adapter known without an entry point (e.g. from a notebook). Returns the instance."""
    inst = adapter() if isinstance(adapter, type) else adapter
    _EXTRA[inst.name] = inst
    return inst


@cache
def _entry_point_adapters() -> dict[str, Adapter]:
    found = {}
    for ep in metadata.entry_points(group="multiloc.adapters"):
        cls = ep.load()
        found[ep.name] = cls()
    return found


def adapters() -> dict[str, Adapter]:
    """All known adapters by name: entry points first, then run-time registrations."""
    return {**_entry_point_adapters(), **_EXTRA}


def get_adapter(name: str) -> Adapter:
    known = adapters()
    if name not in known:
        raise UserError(f"unknown adapter {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def adapter_for(pipe: Any) -> Adapter:
    """The adapter whose denoiser classes include ``pipe``'s denoiser."""
    for adapter in adapters().values():
        if adapter.handles(pipe):
            return adapter
    parts = [f"{a}={type(getattr(pipe, a)).__name__}" for a in ("unet", "transformer") if hasattr(pipe, a)]
    raise UserError(f"no adapter handles {type(pipe).__name__} ({', '.join(parts) or 'no denoiser'}); "
                    "write one (see examples/custom_adapter.ipynb) and register it")


def load_yaml(path: Path | str) -> Any:
    """Parse a YAML file; a syntax error becomes a UserError naming the file and line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"malformed YAML at {where}: {e.problem or e.context}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def _config_dir(kind: str) -> Path:
    return Path(str(resources.files("multiloc.configs") / kind))


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in _config_dir(kind).glob("*.yaml"))


def model_names() -> list[str]:
    return _names("models")


def concept_names() -> list[str]:
    return _names("concepts")


def model_spec(name: str) -> dict[str, Any]:
    """A registry entry by name (``multiloc models`` lists them)."""
    path = _config_dir("models") / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown model {name!r}; known: {', '.join(model_names())} "
                        "(or pass a hub id or a local directory)")
    spec = load_yaml(path)
    if not isinstance(spec, dict) or "adapter" not in spec:
        raise UserError(f"{path} is not a model entry (it needs at least an 'adapter' key)")
    spec.setdefault("name", name)
    return spec


def concept_path(name_or_path: str) -> Path:
    """A concept file: a path as given, else a built-in concept by name."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise UserError(f"concept file {p} does not exist")
        return p
    path = _config_dir("concepts") / f"{name_or_path}.yaml"
    if not path.exists():
        raise UserError(f"unknown concept {name_or_path!r}; known: {', '.join(concept_names())} "
                        "(or pass a path to a concept YAML)")
    return path
