"""One-pass output edits: generate prompt P, but let only the chosen sites read an edited prompt Q.

The ICLR 2025 text-localization paper edits an output in the same pass that makes it: from a start
step K on (SDXL: step 4 of 50; SD3 / IF: 2), the localized cross-attention sites read the conditioning
of Q (the word to remove replaced) while every other site keeps reading P, so the output changes in
that concept and keeps the rest. Here that is ONE batched generation per seed on the sweep's
machinery: rows ``[Q (donor), P (original), P patched]`` and ``Patch(site, rows=(2,), source=0,
window=StepWindow(K))`` for each chosen site, so it works for every family a scan works for.

Methods (the paper's baselines, same harness, same seeds):

- ``localized``: the chosen sites (``--sites``; default: the model's published set) read Q;
- ``all-sites``: every site reads Q (the whole prompt swapped from step K on);
- ``random-sites``: ``draws`` random sets of as many sites, drawn (seeded) from the sites *not* chosen;
  the metrics are the mean over draws;
- ``negative-prompt``: P generated with the removed words (P's words not in Q, or ``negative``) as
  negative prompt (needs classifier-free guidance and a family that takes one);
- ``sld``: Safe Latent Diffusion guidance away from the removed words (or ``negative``), from step K on
  (:class:`SafeGuidance`; needs classifier-free guidance).

Evaluation (:func:`evaluate`): per pair, seed and method, SSIM of edited vs original (images; a log
spectrogram SSIM for audio), the removed concept's score on the edited output (the scorer's score for
P's words not in Q: OCR char-F1 against the original word for ``ocr``), the target's score (Q's words
not in P), optionally what a ``keep`` scorer reads of the words P and Q share, and toxicity where the
classifier can be loaded; the mean per method is the paper's table.

Example::

    model = multiloc.load("toy-shapes")
    run = multiloc.edit(model, "a small red circle", "a small blue circle", concept="toy-colour", seeds=[0])
    run.edited[0][0]          # seed 0, first draw: the circle, now blue
    report = evaluate(model, [run], scorer="colour", keep="shape")
    print(table(report["summary"]))
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..concepts import _words
from ..errors import UserError
from ..hooks import guide_prediction
from ..interventions import Patch, StepWindow
from ..media import save_output
from ..results import _clean, write_atomic
from ..sites import Site
from .generate import slug
from .sld import SafeGuidance
from .targets import resolve_sites

METHODS = ("localized", "all-sites", "random-sites", "negative-prompt", "sld")
# The paper's start step: SDXL edits from step 4 of 50 (SD3 / IF: 2 of their schedules).
PAPER_FROM_STEP = (4, 50)


@dataclass
class EditRun:
    """The outputs of one edit (``P -> Q``) by one method: ``original[s]``, ``edited[s][draw]``, and
    the ``donor[s]`` output of Q itself (None for ``negative-prompt``), for every seed ``s``."""

    prompt: str
    to: str
    method: str
    seeds: list[int]
    from_step: int
    steps: int
    sites: list[str]
    original: list[np.ndarray] = field(default_factory=list)
    edited: list[list[np.ndarray]] = field(default_factory=list)
    donor: list[np.ndarray | None] = field(default_factory=list)
    draws: list[list[str]] = field(default_factory=list)  # random-sites: each draw's sites
    negative: str | None = None

    def describe(self) -> dict[str, Any]:
        info = {"prompt": self.prompt, "to": self.to, "method": self.method, "seeds": self.seeds,
                "from_step": self.from_step, "steps": self.steps, "sites": self.sites}
        if self.draws:
            info["draws"] = self.draws
        if self.negative is not None:
            info["negative"] = self.negative
        return info


def removed_words(prompt: str, to: str) -> list[str]:
    """The words of ``prompt`` that ``to`` no longer has (what the edit removes).

    >>> removed_words("a small red circle", "a small blue circle")
    ['red']
    """
    keep = set(_words(to))
    return [w for w in _words(prompt) if w not in keep]


def default_from_step(steps: int) -> int:
    """The paper's start step scaled to ``steps``: 4/50 of them, rounded (SDXL at 50 steps: 4)."""
    return int(round(steps * PAPER_FROM_STEP[0] / PAPER_FROM_STEP[1]))


def parse_pairs(text: str, source: str = "pairs") -> list[tuple[str, str]]:
    """``P => Q`` lines (blank lines and ``#`` comments skipped) as ``(P, Q)`` tuples.

    >>> parse_pairs("# toy\\na small red circle => a small blue circle\\n")
    [('a small red circle', 'a small blue circle')]
    """
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("=>")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise UserError(f"{source} line {n}: expected 'PROMPT => EDITED PROMPT' (two different prompts), "
                            f"got {line!r}")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise UserError(f"{source} holds no 'PROMPT => EDITED PROMPT' lines")
    return pairs


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """:func:`parse_pairs` of a file; a missing file is a one-line error."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"cannot read the pairs file {path} ({e.strerror or e})") from None
    return parse_pairs(text, str(path))


def check_method(model: Any, method: str, guidance: float | None = None) -> None:
    """Refuse (UserError) a method unknown, not ported, or that ``model`` cannot run."""
    if method not in METHODS:
        raise UserError(f"unknown edit method {method!r}; known: {', '.join(METHODS)}")
    if method == "negative-prompt" and not model.adapter.negative_keys:
        raise UserError(f"{model.name} cannot take a negative prompt: {model.adapter.no_negative}")
    if method == "sld" and not model.adapter.negative_keys:
        raise UserError(f"{model.name} has no unconditional copy for Safe Latent Diffusion guidance: "
                        f"{model.adapter.no_negative}")
    g = model.settings["guidance"] if guidance is None else guidance
    if method in ("negative-prompt", "sld") and g <= 1:
        raise UserError(f"{model.name} runs without classifier-free guidance (guidance {g}), so {method} does "
                        "nothing; pass --guidance above 1")


def check_from_step(from_step: int | None, steps: int) -> int:
    """``from_step`` (default: :func:`default_from_step`), checked to lie in ``0..steps``."""
    k = default_from_step(steps) if from_step is None else from_step
    if not 0 <= k <= steps:
        raise UserError(f"--from-step {k} is outside 0..{steps} (the run has {steps} steps; {steps} edits nothing)")
    return k


def draw_sites(pool: Sequence[Site], size: int, draws: int, seed: int = 0) -> list[list[Site]]:
    """``draws`` random sets of ``size`` sites from ``pool`` (seeded; execution order within a set)."""
    if size > len(pool):
        raise UserError(f"cannot draw {size} random sites from the {len(pool)} sites not chosen")
    rng = random.Random(seed)
    return [sorted(rng.sample(list(pool), size), key=lambda s: s.index) for _ in range(draws)]


def edit(model: Any, prompt: str, to: str, *, sites: Any = None, concept: str | None = None,
         from_step: int | None = None, seeds: Sequence[int] = (0,), method: str = "localized",
         negative: str | None = None, draws: int = 3, draw_seed: int = 0, steps: int | None = None,
         guidance: float | None = None, progress: bool = False) -> EditRun:
    """Edit ``prompt``'s output towards ``to`` in one pass, by ``method`` (see the module docstring).

    ``sites`` is anything :func:`~multiloc.control.resolve_sites` takes (default: the published set,
    ``concept`` choosing among several). ``from_step`` defaults to 4/50 of the steps, rounded.

    >>> run = edit(model, "a small red circle", "a small blue circle", concept="toy-colour")
    >>> run.original[0], run.edited[0][0]
    """
    steps = steps or model.settings["steps"]
    check_method(model, method, guidance)
    k = check_from_step(from_step, steps)
    chosen = resolve_sites(model, sites, concept=concept) if method in ("localized", "random-sites") else []
    run = EditRun(prompt, to, method, list(seeds), k, steps, [s.name for s in chosen])
    if method == "all-sites":
        run.sites = [s.name for s in model.sites]
    if method == "random-sites":
        names = set(run.sites)
        sets = draw_sites([s for s in model.sites if s.name not in names], len(chosen), draws, draw_seed)
        run.draws = [[s.name for s in d] for d in sets]
    if method in ("negative-prompt", "sld"):
        run.negative = negative if negative is not None else " ".join(removed_words(prompt, to))
        if not run.negative:
            raise UserError(f"{prompt!r} has no word that {to!r} lacks; pass the concept to remove with --negative")
    window = StepWindow(k, None)
    sld = SafeGuidance(warmup=k)
    site_sets = run.draws or [run.sites]
    bar = tqdm(total=len(seeds), desc=f"edit {model.name} ({method})", unit="seed", disable=not progress)
    for seed in seeds:
        if method == "negative-prompt":
            original, = model.generate([prompt], seed=seed, steps=steps, guidance=guidance)
            edited = model.generate([prompt], seed=seed, steps=steps, guidance=guidance, negative=[run.negative])
            run.original.append(original)
            run.edited.append(edited)
            run.donor.append(None)
        elif method == "sld":
            # rows: P (original), P (guided), the safety concept predicting on the guided row's latent
            with guide_prediction(model.denoiser, 3, {2: 1}, sld.term(row=1, safety=2),
                                  model.adapter.calls_per_step):
                outs = model.generate([prompt, prompt, run.negative], seed=seed, steps=steps, guidance=guidance)
            run.original.append(outs[0])
            run.edited.append([outs[1]])
            run.donor.append(None)
        else:
            # rows: Q (donor), P (original), then one patched P per site set
            plan = [Patch(name, rows=(2 + d,), source=0, window=window)
                    for d, names in enumerate(site_sets) for name in names]
            outs = model.generate([to, prompt] + [prompt] * len(site_sets), plan, seed=seed, steps=steps,
                                  guidance=guidance)
            run.donor.append(outs[0])
            run.original.append(outs[1])
            run.edited.append(outs[2:])
        bar.update(1)
    bar.close()
    return run


# --- evaluation -------------------------------------------------------------------------------
def kept_similarity(model: Any, a: Any, b: Any) -> float:
    """How much of ``b`` (the original) ``a`` (the edit) keeps: SSIM for images, log-spectrogram SSIM
    for audio."""
    from .. import metrics

    return metrics.spectrogram_ssim(a, b) if model.modality == "audio" else metrics.ssim(a, b)


def make_scorer(model: Any, name: Any) -> Any:
    """The scorer ``name`` (or a scorer object, as is) checked for ``model``'s outputs; None for None."""
    if name is None or not isinstance(name, str):
        return name
    from ..scorers import get_scorer

    scorer = get_scorer(name)
    if scorer.modality not in ("any", model.modality):
        raise UserError(f"the {name} scorer reads {scorer.modality} outputs; {model.name} makes {model.modality}")
    if hasattr(scorer, "sample_rate") and not scorer.sample_rate:
        scorer.sample_rate = model.sample_rate  # audio scorers learn the rate of the model's clips
    return scorer


def _toxicity(model: Any, wanted: bool | None, scorer_name: str | None, notes: list[str]) -> Any:
    if wanted is False or (wanted is None and scorer_name != "ocr") or model.modality != "image":
        return None
    try:
        return make_scorer(model, "toxicity")
    except UserError as e:
        notes.append(f"toxicity skipped: {e}")
        return None


def evaluate(model: Any, runs: Sequence[EditRun], *, scorer: Any = None, keep: Any = None,
             toxicity: bool | None = None) -> dict[str, Any]:
    """Score edit runs: ``{"records": [...], "summary": {method: {metric: mean}}, "notes": [...]}``.

    ``scorer`` / ``keep`` are scorer names or objects. Per pair, seed and method (random-sites: mean
    over draws): ``ssim`` (edited vs original), and with
    a ``scorer``: ``removed`` (its score for P's words not in Q on the edited output; lower is better),
    ``target`` (for Q's words not in P; higher is better), each also on the original
    (``removed_original``, ``target_original``). A reference scorer compares with the original's and
    the donor's outputs instead of words. ``keep``: a scorer with a ``known`` vocabulary, read on the
    edited output for the words P and Q share that it knows (``kept``; e.g. ``shape`` for the toy
    shapes' colour edit). ``toxicity`` (default: with the ``ocr`` scorer): the toxicity scorer's mean,
    skipped with a note when its classifier cannot be loaded.

    >>> evaluate(model, [run], scorer="colour", keep="shape")["summary"]["localized"]["target"]
    """
    notes: list[str] = []
    main, keeper = make_scorer(model, scorer), make_scorer(model, keep)
    tox = _toxicity(model, toxicity, getattr(main, "name", None), notes)
    if main is None:
        notes.append("no scorer (--scorer, or a --concept that has one): only SSIM with the original is reported")
    if keeper is not None and not getattr(keeper, "known", None):
        raise UserError(f"--keep needs a scorer with a known vocabulary (e.g. shape, pitch); {keep} has none")
    records = []
    for run in runs:
        removed, target = " ".join(removed_words(run.prompt, run.to)), " ".join(removed_words(run.to, run.prompt))
        shared = [w for w in _words(run.prompt) if w in set(_words(run.to))]
        kept_words = [w for w in shared if keeper is not None and w in keeper.known]
        for i, seed in enumerate(run.seeds):
            orig, edits = run.original[i], run.edited[i]
            rec: dict[str, Any] = {"prompt": run.prompt, "to": run.to, "method": run.method, "seed": seed,
                                   "ssim": _mean(kept_similarity(model, e, orig) for e in edits)}
            if main is not None:
                if main.reference:
                    if run.donor[i] is None:
                        notes.append(f"{run.method}: no donor output for the reference scorer's target score")
                    else:
                        rec["target"] = _mean(main.score(edits, [run.donor[i]] * len(edits)))
                        rec["target_original"] = main.score([orig], [run.donor[i]])[0]
                    rec["removed"] = _mean(main.score(edits, [orig] * len(edits)))
                else:
                    for key, word in (("removed", removed), ("target", target)):
                        if word:
                            rec[key] = _mean(main.score(edits, [word] * len(edits)))
                            rec[f"{key}_original"] = main.score([orig], [word])[0]
            if kept_words:
                rec["kept"] = _mean(keeper.score(edits, [w] * len(edits)) for w in kept_words)
                rec["kept_original"] = _mean(keeper.score([orig], [w])[0] for w in kept_words)
            if tox is not None:
                rec["toxicity"] = _mean(tox.score(edits, [None] * len(edits)))
            records.append(rec)
    if keeper is not None and not any("kept" in r for r in records):
        notes.append(f"--keep {keep}: no word shared by P and Q is in its vocabulary; nothing kept was scored")
    return {"records": records, "summary": summarize(records), "notes": list(dict.fromkeys(notes)),
            "scorer": getattr(main, "name", None), "keep": getattr(keeper, "name", None)}


def _mean(values: Any) -> float:
    values = [float(np.mean(v)) if isinstance(v, (list, tuple)) else float(v) for v in values]
    return float(np.mean(values)) if values else float("nan")


METRICS = ("ssim", "removed", "target", "kept", "toxicity")


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The mean of each metric per method (the paper's table), methods in first-seen order."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        out[method] = {"n": len(rows)}
        for m in METRICS + tuple(f"{m}_original" for m in ("removed", "target", "kept")):
            vals = [r[m] for r in rows if m in r]
            if vals:
                out[method][m] = float(np.mean(vals))
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a text table: SSIM ↑, removed ↓, target ↑, kept ↑, toxicity ↓ per method."""
    cols = [m for m in METRICS if any(m in s for s in summary.values())]
    arrows = {"ssim": "SSIM ↑", "removed": "removed ↓", "target": "target ↑", "kept": "kept ↑",
              "toxicity": "toxicity ↓"}
    lines = [f"{'method':<16}" + "".join(f"{arrows[c]:>12}" for c in cols) + f"{'n':>5}"]
    for method, s in summary.items():
        lines.append(f"{method:<16}" + "".join(f"{s[c]:>12.3f}" if c in s else f"{'-':>12}" for c in cols)
                     + f"{int(s['n']):>5}")
    return "\n".join(lines)


def save_edits(out: str | Path, model: Any, runs: Sequence[EditRun], report: dict[str, Any],
               info: dict[str, Any] | None = None) -> list[str]:
    """Write ``DIR/original-sS.*`` and ``DIR/edited-sS.*`` per seed (with several pairs, in one folder
    ``NN-SLUG/`` per pair; with several methods, ``edited-METHOD-sS.*``; random draws ``-dD``), then
    ``DIR/edit.json`` (the runs, every record, the summary table; atomic, written last)."""
    out = Path(out)
    pairs = list(dict.fromkeys((r.prompt, r.to) for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    files: list[str] = []
    written: set[tuple[str, int]] = set()

    def save(name: str, output: np.ndarray) -> None:
        files.append(str(save_output(out / name, output, model.modality, model.sample_rate).relative_to(out)))

    for run in runs:
        folder = "" if len(pairs) == 1 else f"{pairs.index((run.prompt, run.to)):02d}-{slug(run.prompt)}/"
        label = "edited" if len(methods) == 1 else f"edited-{run.method}"
        for i, seed in enumerate(run.seeds):
            if (folder, seed) not in written:
                written.add((folder, seed))
                save(f"{folder}original-s{seed}", run.original[i])
            for d, output in enumerate(run.edited[i]):
                save(f"{folder}{label}-s{seed}" + (f"-d{d}" if len(run.edited[i]) > 1 else ""), output)
    record = {"model": model.name, **(info or {}), "runs": [r.describe() for r in runs], **report,
              "files": files}
    write_atomic(out / "edit.json", json.dumps(_clean(record), indent=2) + "\n")
    return files
