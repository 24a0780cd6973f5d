"""Which sites a control method acts on: a site spec, a scan's result, or the published sites.

Every control command takes ``--sites`` the same way:

- a site spec, as ``multiloc scan --sites`` takes it: indices ``"55-57"``, names or glob patterns;
- a scan's ``result.json`` (or the directory holding it): its ``selected`` set;
- nothing: the sites the papers localized for that model, stored in its registry entry under
  ``localized`` (a mapping from concept to sites, e.g. SDXL's ``text``), else an error asking for a scan.

Example::

    resolve_sites(model, "multiloc-out/sdxl-text/result.json")   # the scan's selected set
    resolve_sites(model, "55-57")                                # by execution index
    resolve_sites(model)                                         # SDXL: the paper's three text sites
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sites import Site, select_sites


def resolve_sites(model: Any, spec: Any = None, *, concept: str | None = None) -> list[Site]:
    """The sites ``spec`` names in ``model`` (see the module docstring); never empty.

    ``spec`` may also be a :class:`~multiloc.Result` or a list of site names. ``concept`` picks one
    of several published sets when ``spec`` is None.
    """
    if spec is None:
        return published_sites(model, concept)
    if hasattr(spec, "selected") and hasattr(spec, "sites"):  # a Result object
        return _from_selected(model, list(spec.selected), "the result")
    if isinstance(spec, (str, Path)) and _is_result_path(spec):
        path = Path(spec)
        path = path / "result.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            selected = data["selected"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{path} is not a scan's result.json (it needs a 'selected' list)") from None
        return _from_selected(model, list(selected), str(path))
    return select_sites(model.sites, spec)


def published_sites(model: Any, concept: str | None = None) -> list[Site]:
    """The registry's published localized sites of ``model`` (for ``concept``, or its only/default set)."""
    table = (getattr(model, "spec", None) or {}).get("localized") or {}
    if not table:
        raise scan_first(model.name)
    if concept is not None and concept in table:
        key = concept
    elif "default" in table:
        key = "default"
    elif len(table) == 1 and concept is None:
        key = next(iter(table))
    else:
        raise UserError(f"{model.name} publishes localized sites for {', '.join(sorted(table))}; "
                        + ("choose one with --concept" if concept is None else f"none for {concept!r}")
                        + " or pass --sites")
    return select_sites(model.sites, [str(s) for s in table[key]])


def scan_first(name: str) -> UserError:
    """The error for a model with no published sites and no ``--sites``."""
    return UserError(f"{name} has no published localized sites; scan first (multiloc scan --model {name} "
                     "--concept C) and pass --sites DIR/result.json, or name sites with --sites")


def _is_result_path(spec: str | Path) -> bool:
    path = Path(spec)
    return str(spec).endswith(".json") or (path.is_dir() and (path / "result.json").exists())


def _from_selected(model: Any, names: list[str], source: str) -> list[Site]:
    if not names:
        raise UserError(f"{source} selected no sites; pass sites with --sites instead")
    heads = [n for n in names if "#h" in n]
    if heads:
        raise UserError(f"{source} selected attention heads ({heads[0]}); control acts on whole sites: "
                        "pass them with --sites")
    by_name = {s.name: s for s in model.sites}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{source} names sites {model.name} does not have ({missing[0]}); was it a scan of "
                        "another model?")
    return sorted((by_name[n] for n in names), key=lambda s: s.index)
