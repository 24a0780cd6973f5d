"""Sites without weights: the denoiser built from its architecture config on the meta device.

Example::

    name, sites, total = offline_sites("sdxl")     # 70 sites, 2,567,463,684 parameters
"""

from __future__ import annotations

import json
from pathlib import Path

from . import registry
from .build import build_denoiser
from .errors import UserError
from .sites import Site


def _config_from_dir(path: Path, adapter_name: str | None) -> tuple[str, dict]:
    adapters = [registry.get_adapter(adapter_name)] if adapter_name else list(registry.adapters().values())
    for adapter in adapters:
        cfg = path / adapter.denoiser_attr / "config.json"
        if cfg.exists():
            spec = json.loads(cfg.read_text())
            return adapter.name, {"class": spec["_class_name"], "config": spec}
    raise UserError(f"{path} holds no denoiser config (looked for unet/config.json, transformer/config.json)")


def _config_from_hub(repo_id: str) -> tuple[str, dict]:
    from huggingface_hub import hf_hub_download

    from .model import _hub_unreachable

    for adapter in registry.adapters().values():
        try:
            path = hf_hub_download(repo_id, f"{adapter.denoiser_attr}/config.json", local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached: try the network below
            reason = _hub_unreachable(repo_id)
            if reason:
                raise UserError(f"cannot fetch {repo_id!r}'s config from the hub ({reason}); pass a registry "
                                "name or a local directory") from None
            try:
                path = hf_hub_download(repo_id, f"{adapter.denoiser_attr}/config.json")
            except Exception:  # noqa: BLE001 - this family's folder is absent: try the next
                continue
        spec = json.loads(Path(path).read_text())
        return adapter.name, {"class": spec["_class_name"], "config": spec}
    raise UserError(f"{repo_id!r} has no denoiser config any adapter knows")


def offline_sites(source: str, settings: dict | None = None) -> tuple[str, list[Site], int]:
    """(name, sites, total denoiser parameters) for a registry name, a local directory or a hub id.

    ``settings`` override the entry's defaults where a family's sites depend on them (``pooled_site``).
    """
    defaults: dict = {}
    if source in registry.model_names():
        spec = registry.model_spec(source)
        adapter = registry.get_adapter(spec["adapter"])
        if "denoiser" in spec:
            denoiser_spec = spec["denoiser"]
        elif "build" in spec:
            denoiser_spec = spec["build"]["components"][adapter.denoiser_attr]
        else:
            raise UserError(f"registry entry {source!r} has no 'denoiser' architecture config")
        name = spec["name"]
        defaults = dict(spec.get("defaults") or {})
    elif Path(source).is_dir():
        adapter_name, denoiser_spec = _config_from_dir(Path(source), None)
        adapter, name = registry.get_adapter(adapter_name), source
    elif source.count("/") == 1:
        adapter_name, denoiser_spec = _config_from_hub(source)
        adapter, name = registry.get_adapter(adapter_name), source
    else:
        registry.model_spec(source)  # raises "unknown model", listing the known ones
        raise AssertionError("unreachable")
    denoiser = build_denoiser(denoiser_spec, meta=True)
    settings = {**adapter.defaults, **defaults, **(settings or {})}
    return name, adapter.sites(denoiser, settings), sum(p.numel() for p in denoiser.parameters())
