"""One self-contained HTML page of scan (and control) results: ``multiloc report DIR [DIR ...]``.

The page opens offline: CSS is inline, images are inline (base64 PNG), audio players point at the
WAV files beside the page (relative paths), and nothing is fetched from the internet. For each DIR it
shows the ranked sites with 95% CIs and the selection rule, an architecture map (the sites laid out
as the model is built, coloured by effect, the selected set outlined), the step map, the set search
with its random-set control, the adaptive report, the samples, the control results a DIR holds
(``edit.json``, ``sweep.json``, ``finetune.json``, ``generate.json``, multiloc weight files) and the
command, config, versions and runtime. Several DIRs are laid out side by side.

Example::

    write_report(["multiloc-out/toy-shapes-toy-colour"])          # -> .../report.html
    write_report(["out/a", "out/b"], out="compare.html")           # side by side
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .results import Result, write_atomic

CONTROL_FILES = ("edit.json", "sweep.json", "finetune.json", "generate.json")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
AUDIO_TYPES = (".wav", ".flac", ".mp3", ".ogg")
MAX_MEDIA = 24  # per control result: enough to see, small enough to open

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.2em;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.15em;margin:.2em 0}h3{font-size:1em;margin:1.1em 0 .3em}
.grid{display:grid;gap:1.5em}.col{min-width:0;overflow-x:auto;border-top:3px solid #3465a4;padding-top:.4em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:1px 6px;text-align:right;white-space:nowrap}
th{border-bottom:1px solid #999}td.l,th.l{text-align:left}tr.sel td{font-weight:600}
.bar{display:inline-block;height:9px;background:#3465a4;vertical-align:middle}
.note{background:#fff4ce;border-left:4px solid #e0a800;padding:3px 8px;margin:4px 0}
.map{display:flex;flex-direction:column;gap:6px}.stream{display:flex;gap:4px;align-items:flex-end;flex-wrap:wrap}
.block{display:flex;flex-direction:column;gap:2px;align-items:center}
.block span{font-size:.7em;color:#555;max-width:7em;overflow:hidden;text-overflow:ellipsis}
.cell{width:26px;height:22px;font-size:.7em;display:flex;align-items:center;justify-content:center;
 border:1px solid #ccc;box-sizing:border-box}
.cell.sel{border:3px solid #c00}.cell.nan{background:repeating-linear-gradient(45deg,#eee,#eee 3px,#ccc 3px,#ccc 6px)}
.media{display:flex;flex-wrap:wrap;gap:8px}.media figure{margin:0;text-align:center;font-size:.8em}
.media img{width:128px;image-rendering:pixelated;border:1px solid #ccc}
pre{background:#f6f6f6;padding:6px;overflow:auto;font-size:.8em;max-height:20em}
.legend{font-size:.8em;color:#444}
"""


def write_report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the page for ``dirs`` to ``out`` (default: ``DIR/report.html`` of the first DIR); returns its path.

    >>> write_report(["multiloc-out/toy-shapes-toy-colour"]).name
    'report.html'
    """
    if not dirs:
        raise UserError("name at least one results directory")
    out = Path(out) if out is not None else Path(dirs[0]) / "report.html"
    write_atomic(out, render(dirs, base=out.parent))
    return out


def render(dirs: Sequence[str | Path], base: str | Path = ".") -> str:
    """The page's HTML for ``dirs``; audio paths are relative to ``base``, the page's folder.

    >>> "<html" in render(["multiloc-out/toy-shapes-toy-colour"])
    True
    """
    columns = [_column(Path(d), Path(base)) for d in dirs]
    title = " | ".join(c[0] for c in columns)
    body = "".join(f'<div class="col">{c[1]}</div>' for c in columns)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>multiloc: {_e(title)}</title>'
            f'<style>{CSS}</style></head><body><h1>multiloc report</h1>'
            f'<div class="grid" style="grid-template-columns:repeat({len(columns)},minmax(0,1fr))">{body}</div>'
            "</body></html>\n")


# --- one results directory ----------------------------------------------------------------------
def _column(d: Path, base: Path) -> tuple[str, str]:
    """(title, HTML) of one DIR: the scan if it holds result.json, then any control results."""
    if not d.is_dir():
        raise UserError(f"{d} is not a directory")
    has_scan = (d / "result.json").is_file()
    control = [f for f in CONTROL_FILES if (d / f).is_file()]
    weights = [p for p in sorted(d.glob("*.safetensors")) if _weight_meta(p)]
    if not (has_scan or control or weights):
        raise UserError(f"{d} holds no multiloc results (result.json, {', '.join(CONTROL_FILES)} "
                        "or a weight file)")
    parts, title = [], d.name
    if has_scan:
        try:
            result = Result.load(d)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{d / 'result.json'} is not a multiloc scan result ({e})") from None
        title = f"{result.model} · {result.concept}"
        parts.append(_scan(result, d, base))
    for name in control:
        try:
            record = json.loads((d / name).read_text())
        except ValueError:
            parts.append(f'<p class="note">{_e(name)} is not valid JSON; skipped</p>')
            continue
        parts.append(_CONTROL[name](record, d, base))
    for p in weights:
        parts.append(_weights(p, _weight_meta(p)))
    return title, f"<h2>{_e(title)}</h2><div class=legend>{_e(str(d))}</div>" + "".join(parts)


def _scan(r: Result, d: Path, base: Path) -> str:
    x = r.extra
    finite = [s for s in r.sites if _finite(s.effect)]
    notes = [*x.get("warnings", [])]
    if len(finite) < len(r.sites):
        notes.append(f"{len(r.sites) - len(finite)} of {len(r.sites)} sites have no finite effect (shown hatched, "
                     "ranked last): the scorer could not separate donor and base there")
    out = [f"<p>method <b>{_e(r.method)}</b> · {len(r.sites)} sites · selected <b>{len(r.selected)}</b> · "
           f"top site <b class=top>{_e(r.ranking[0] if finite else 'none')}</b></p>"]
    out += [f'<p class="note">{_e(n)}</p>' for n in notes]
    out.append("<h3>Architecture map</h3>" + _map(r, x.get("site_streams")))
    out.append("<h3>Ranked sites</h3>" + _ranking(r))
    if x.get("step_map"):
        out.append("<h3>Step map</h3>" + _step_map(x["step_map"]))
    if x.get("set_search"):
        out.append("<h3>Set search</h3>" + _set_search(x["set_search"]))
    if x.get("adaptive"):
        out.append("<h3>Adaptive sampling</h3>" + _kv(x["adaptive"]))
    out.append("<h3>Samples</h3>" + _samples(x.get("sample_files") or [], d, base))
    run = {"command": x.get("command"), "runtime": f"{r.runtime_s:.1f} s", "effect": x.get("effect"),
           "resumed rows": x.get("resumed_rows") or None}
    out.append("<h3>Run</h3>" + _kv({k: v for k, v in run.items() if v})
               + "<pre>" + _e(json.dumps({"config": r.config, "versions": x.get("versions", {})}, indent=1,
                                         default=str)) + "</pre>")
    return "".join(out)


def _ranking(r: Result) -> str:
    by_name = {s.name: s for s in r.sites}
    top = max([s.effect for s in r.sites if _finite(s.effect)] + [1e-9])
    rows = []
    for rank, name in enumerate(r.ranking, 1):
        s = by_name[name]
        ok = _finite(s.effect)
        ci = f"[{s.ci[0]:.3f}, {s.ci[1]:.3f}]" if _finite(s.ci[0]) and _finite(s.ci[1]) else ""
        bar = f'<span class="bar" style="width:{max(0.0, s.effect) / top * 80:.0f}px"></span>' if ok else ""
        sel = name in r.selected
        rows.append(f'<tr{" class=sel" if sel else ""}><td>{rank}</td><td>{s.index}</td><td class=l>{_e(name)}</td>'
                    f'<td>{f"{s.effect:.3f}" if ok else "nan"}</td><td>{ci}</td><td class=l>{bar}</td>'
                    f'<td>{"✓" if sel else ""}</td></tr>')
    rule = r.extra.get("selection_rule", "")
    return (f'<div class=legend>selection rule: {_e(rule)}</div><table><tr><th>rank</th><th>idx</th>'
            f'<th class=l>site</th><th>effect</th><th>95% CI</th><th></th><th>selected</th></tr>{"".join(rows)}</table>')


def block_of(name: str) -> str:
    """The block a site sits in, from its module path: ``down_blocks.1``, ``mid_block``, ``transformer_blocks.7``.

    >>> block_of("up_blocks.0.attentions.2.transformer_blocks.0.attn2"), block_of("mid_block.attentions.0.x")
    ('up_blocks.0', 'mid_block')
    """
    parts = name.split("#")[0].split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def _map(r: Result, streams: dict[str, str] | None) -> str:
    """Rows = conditioning streams (AudioLDM2: gpt2 and t5 side by side), columns = blocks in build order."""
    streams = streams or {}
    lines: dict[str, dict[str, list]] = {}
    for s in sorted(r.sites, key=lambda s: s.index):
        lines.setdefault(streams.get(s.name.split("#")[0], ""), {}).setdefault(block_of(s.name), []).append(s)
    rows = []
    for stream, blocks in lines.items():
        cols = []
        for block, sites in blocks.items():
            cells = "".join(
                f'<div class="cell{" sel" if s.name in r.selected else ""}{"" if _finite(s.effect) else " nan"}" '
                f'title="{_e(s.name)}: {s.effect:.3f}" style="{_colour(s.effect)}">{s.index}</div>' for s in sites)
            cols.append(f'<div class=block>{cells}<span title="{_e(block)}">{_e(_short(block))}</span></div>')
        label = f"<b>{_e(stream)}</b>" if len(lines) > 1 else ""
        rows.append(f'<div class=stream>{label}{"".join(cols)}</div>')
    return (f'<div class=map>{"".join(rows)}</div><div class=legend>cell = site (execution index), colour = '
            'effect (white 0 → dark blue 1, red below 0, hatched: none), red outline = selected</div>')


def _short(block: str) -> str:
    return re.sub(r"^(down|up)_blocks", r"\1", block).replace("transformer_blocks", "blk").replace("mid_block", "mid")


def _colour(e: float) -> str:
    if not _finite(e):
        return ""
    if e < 0:
        t = min(-e, 1.0)
        return f"background:rgb(255,{int(255 - 120 * t)},{int(255 - 120 * t)})"
    t = min(e, 1.0)
    rgb = [int(255 + (c - 255) * t) for c in (8, 48, 107)]
    return f"background:rgb({rgb[0]},{rgb[1]},{rgb[2]});color:{'#fff' if t > 0.5 else '#000'}"


def _step_map(m: dict[str, Any]) -> str:
    head = "".join(f"<th>{a}-{b}</th>" for a, b in m["windows"])
    rows = "".join(f"<tr><td class=l>{_e(site)}</td>" + "".join(
        f'<td style="{_colour(e if e is not None else math.nan)}">{"nan" if e is None else f"{e:.2f}"}</td>'
        for e in effects) + "</tr>" for site, effects in zip(m["sites"], m["effects"]))
    return f"<table><tr><th class=l>site \\ steps patched</th>{head}</tr>{rows}</table>"


def _set_search(f: dict[str, Any]) -> str:
    info = {"kind": f.get("kind"), "sites": ", ".join(f.get("sites", [])) or "none found",
            "joint effect": f.get("joint_effect"), "necessity": f.get("necessity")}
    control = f.get("random_sets")
    if control and control.get("effects"):
        effs = [e for e in control["effects"] if e is not None]
        joint = f.get("joint_effect")
        beat = sum(e >= joint for e in effs) if joint is not None else None
        info["random sets"] = (f"{len(control['effects'])} sets of {control['size']} sites: mean "
                               f"{_num(control.get('mean'))}, max {_num(control.get('max'))}"
                               + (f"; {beat} of {len(effs)} reach the found set's joint effect" if beat is not None
                                  else ""))
    return _kv(info)


def _samples(files: Sequence[str], d: Path, base: Path) -> str:
    if not files:
        return '<p class="note">no samples in this result (the scan ran without an output folder or samples)</p>'
    return _media(files, d, base, label=lambda f: Path(f).stem)


def _media(files: Sequence[str], d: Path, base: Path, label: Any = None) -> str:
    """Images inline (base64), audio as <audio> players on the files beside the page; missing files noted."""
    figs, missing = [], []
    for f in files[:MAX_MEDIA]:
        path = d / f
        name = _e(label(f) if label else f)
        if not path.is_file():
            missing.append(f)
        elif path.suffix.lower() in IMAGE_TYPES:
            data = base64.b64encode(path.read_bytes()).decode()
            figs.append(f'<figure><img alt="{name}" src="data:{IMAGE_TYPES[path.suffix.lower()]};base64,{data}">'
                        f"<figcaption>{name}</figcaption></figure>")
        elif path.suffix.lower() in AUDIO_TYPES:
            rel = Path(os.path.relpath(path.resolve(), Path(base).resolve())).as_posix()
            figs.append(f'<figure><audio controls preload="none" src="{_e(rel)}"></audio>'
                        f"<figcaption>{name}</figcaption></figure>")
    notes = f'<p class="note">missing files: {_e(", ".join(missing))}</p>' if missing else ""
    more = f'<div class=legend>showing {MAX_MEDIA} of {len(files)}</div>' if len(files) > MAX_MEDIA else ""
    return f'<div class=media>{"".join(figs)}</div>{more}{notes}'


# --- control results ----------------------------------------------------------------------------
def _edit(rec: dict[str, Any], d: Path, base: Path) -> str:
    summary = rec.get("summary") or {}
    cols = list(dict.fromkeys(k for s in summary.values() for k in s))
    table = _table(["method", *cols], [[m, *(s.get(c) for c in cols)] for m, s in summary.items()])
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in rec.get("notes", []))
    return f"<h3>Edit (edit.json)</h3>{table}{notes}" + _media(rec.get("files", []), d, base)


def _sweep(rec: dict[str, Any], d: Path, base: Path) -> str:
    out = [f"<h3>Steering sweep (sweep.json)</h3><div class=legend>target {_e(rec.get('target'))}, unsteered "
           f"score {_num(rec.get('unsteered_score'))}</div>"]
    for mode, rows in rec.get("modes", {}).items():
        keys = list(dict.fromkeys(k for r in rows for k in r.get("preservation", {})))
        out.append(f"<div><b>{_e(mode)}</b> ({len(rec.get('sites', {}).get(mode, []))} sites)</div>" + _table(
            ["alpha", "score", *keys, *(["kept"] if any("kept" in r for r in rows) else [])],
            [[r["alpha"], r["score"], *(r.get("preservation", {}).get(k) for k in keys),
              *([r.get("kept")] if any("kept" in r for r in rows) else [])] for r in rows]))
    if (d / "sweep.png").is_file():
        out.append(_media(["sweep.png"], d, base))
    return "".join(out)


def _finetune(rec: dict[str, Any], d: Path, base: Path) -> str:
    info = {k: v for k, v in rec.items() if k not in ("original", "modules") and not isinstance(v, (dict, list))}
    info["modules"] = len(rec.get("modules", []))
    return "<h3>LoRA fine-tune (finetune.json)</h3>" + _kv(info)


def _generate(rec: dict[str, Any], d: Path, base: Path) -> str:
    info = {k: v for k, v in rec.items() if k != "files"}
    return ("<h3>Generations (generate.json)</h3><pre>" + _e(json.dumps(info, indent=1, default=str)[:3000])
            + "</pre>" + _media(rec.get("files", []), d, base))


_CONTROL = {"edit.json": _edit, "sweep.json": _sweep, "finetune.json": _finetune, "generate.json": _generate}


def _weight_meta(path: Path) -> dict[str, str] | None:
    """A safetensors file's metadata when it is a multiloc file (read from the header: no torch needed)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(min(size, 1 << 24)))["__metadata__"]
    except (OSError, ValueError, KeyError, struct.error, TypeError):
        return None
    return meta if str(meta.get("format", "")).startswith("multiloc") else None


def _weights(path: Path, meta: dict[str, str]) -> str:
    info = {k: v for k, v in meta.items() if k != "original"}
    for k in ("sites", "details"):
        if k in info:
            try:
                info[k] = json.loads(info[k])
            except ValueError:
                pass
    info["sites"] = ", ".join(info["sites"]) if isinstance(info.get("sites"), list) else info.get("sites")
    return f"<h3>Weight file {_e(path.name)}</h3>" + _kv(info)


# --- small helpers ------------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x: Any) -> str:
    return f"{x:.3f}" if _finite(x) and not isinstance(x, bool) and isinstance(x, float) else _e(str(x))


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _kv(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td class=l>{_e(k)}</td><td class=l>"
                   f"{_num(v) if not isinstance(v, (dict, list)) else _e(json.dumps(v, default=str))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th{' class=l' if i == 0 else ''}>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{_num(v)}</td>" for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"
