"""Scan results: ranking, effects with confidence intervals, the selected set; JSON/CSV on disk.

Files are written atomically (a temporary file, then a rename), so a crash never leaves half a
result. :class:`ScanState` keeps finished work of a running scan so an interrupted scan resumes.

Example::

    result.ranking[:3]            # most effective site names
    result.effects["mid_block.attentions.0.transformer_blocks.0.attn2"]
    result.save("out/")           # out/result.json, out/result.csv, out/effects.png
    Result.load("out/").selected
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions() -> dict[str, str]:
    """Versions of Python and the stack a result was made with (recorded in ``result.json``).

    >>> sorted(versions())[:2]
    ['diffusers', 'multiloc']
    """
    import platform
    from importlib import metadata

    out = {}
    for name in ("multiloc", "torch", "diffusers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {**out, "python": platform.python_version()}


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


@dataclass
class SiteEffect:
    index: int
    name: str
    effect: float
    ci: list[float]


@dataclass
class Result:
    """What a scan found (see the module docstring)."""

    model: str
    concept: str
    method: str
    sites: list[SiteEffect]
    selected: list[str]
    runtime_s: float
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        """Site names, most effective first (sites without an effect last)."""
        def key(s: SiteEffect) -> float:
            return -s.effect if s.effect is not None and math.isfinite(s.effect) else math.inf
        return [s.name for s in sorted(self.sites, key=key)]

    @property
    def effects(self) -> dict[str, float]:
        return {s.name: s.effect for s in self.sites}

    def to_dict(self) -> dict[str, Any]:
        return _clean({"model": self.model, "concept": self.concept, "method": self.method,
                       "sites": [asdict(s) for s in self.sites], "ranking": self.ranking,
                       "selected": self.selected, "runtime_s": self.runtime_s,
                       "config": self.config, **self.extra})

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["rank", "index", "name", "effect", "ci_low", "ci_high", "selected"])
        by_name = {s.name: s for s in self.sites}
        for rank, name in enumerate(self.ranking, 1):
            s = by_name[name]
            w.writerow([rank, s.index, s.name, s.effect, *s.ci, int(name in self.selected)])
        return buf.getvalue()

    def table(self, top: int = 10) -> str:
        """A ranked plain-text table of the ``top`` sites."""
        by_name = {s.name: s for s in self.sites}
        undecided = self.extra.get("undecided") or {}
        width = max((len(n) for n in self.ranking[:top]), default=4)
        lines = [f"{'rank':>4}  {'idx':>3}  {'site':<{width}}  {'effect':>7}  {'95% CI':>17}"]
        for rank, name in enumerate(self.ranking[:top], 1):
            s = by_name[name]
            eff = "nan" if s.effect is None or not math.isfinite(s.effect) else f"{s.effect:7.3f}"
            ci = "" if s.ci[0] is None or not math.isfinite(s.ci[0]) else f"[{s.ci[0]:6.3f}, {s.ci[1]:6.3f}]"
            mark = " *" if name in self.selected else " ?" if name in undecided else ""
            lines.append(f"{rank:>4}  {s.index:>3}  {name:<{width}}  {eff:>7}  {ci:>17}{mark}")
        lines.append(f"* selected ({len(self.selected)} of {len(self.sites)} sites)")
        if undecided:
            more = max(u["samples_needed"] for u in undecided.values())
            lines.append(f"? large enough, but the interval reaches zero: not distinguishable from noise "
                         f"({len(undecided)} site(s); about {more} samples in all would settle it)")
        return "\n".join(lines)

    def save(self, directory: str | Path, plot: bool = True) -> Path:
        """Write result.json, result.csv and (``plot=True``) effects.png, step_map.png and report.html
        (:mod:`multiloc.html_report`) into ``directory``."""
        directory = Path(directory)
        write_atomic(directory / "result.json", json.dumps(self.to_dict(), indent=2) + "\n")
        write_atomic(directory / "result.csv", self.to_csv())
        if plot:
            from .report import plot_effects

            write_atomic(directory / "effects.png", plot_effects(self))
            if self.extra.get("step_map"):
                from .report import plot_step_map

                write_atomic(directory / "step_map.png", plot_step_map(self.extra["step_map"]))
            from .html_report import write_report

            write_report([directory])
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Result:
        data = json.loads((Path(directory) / "result.json").read_text())
        nan = float("nan")
        sites = [SiteEffect(s["index"], s["name"], nan if s["effect"] is None else s["effect"],
                            [nan if c is None else c for c in s["ci"]]) for s in data["sites"]]
        core = {"model", "concept", "method", "sites", "ranking", "selected", "runtime_s", "config"}
        return cls(data["model"], data["concept"], data["method"], sites, data["selected"],
                   data["runtime_s"], data["config"], {k: v for k, v in data.items() if k not in core})


class ScanState:
    """Finished work of a scan, kept in ``DIR/.scan-state.json`` so an interrupted scan resumes.

    Work is keyed by sample (``"pair/seed"``) and row (``"base"``, ``"donor"``, a site name); a
    scorer's per-row records of further metrics (``records``) are kept under the same keys. A state
    written under a different configuration (its fingerprint differs) is ignored and replaced.

    Process ``rank`` of a ``world`` > 1 writes its own file, ``.scan-state.RANK.json``; every state file
    in the directory is read back and merged, so a scan resumes under any number of processes.

    >>> state = ScanState("out", {"steps": 10}); state.get("0/0")["base"] = 0.5; state.flush()
    """

    FILE = ".scan-state.json"
    PATTERN = ".scan-state*.json"

    def __init__(self, directory: str | Path | None, config: dict[str, Any], rank: int = 0, world: int = 1):
        self.directory = Path(directory) if directory is not None else None
        name = self.FILE if world == 1 else f".scan-state.{rank}.json"
        self.path = self.directory / name if self.directory is not None else None
        self.fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        self.samples: dict[str, dict[str, float]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.computed = 0  # rows this process scored in this run (not resumed ones)
        for path in self._files():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("fingerprint") == self.fingerprint:
                self.merge([(data.get("samples", {}), data.get("records", {}))])
        self.resumed = sum(len(v) for v in self.samples.values())

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob(self.PATTERN)) if self.directory is not None else []

    def get(self, sample: str) -> dict[str, float]:
        return self.samples.setdefault(sample, {})

    def merge(self, parts: list[tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]]) -> None:
        """Add (samples, records) finished elsewhere (another process, another state file)."""
        for samples, records in parts:
            for sample, rows in samples.items():
                self.get(sample).update(rows)
            for sample, rows in records.items():
                self.records.setdefault(sample, {}).update(rows)

    def flush(self) -> None:
        if self.path is not None:
            write_atomic(self.path, json.dumps({"fingerprint": self.fingerprint, "samples": self.samples,
                                                "records": self.records}))

    def clear(self) -> None:
        """Remove every state file of the directory (all processes' files: call it once, at the end)."""
        for path in self._files():
            path.unlink(missing_ok=True)
