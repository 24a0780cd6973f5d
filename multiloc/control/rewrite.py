"""Closed-form key/value edits of the localized sites (UCE / TIME / LocoEdit): ``multiloc rewrite``.

Every chosen site reads the conditioning through linear projections (its taps: ``to_k``/``to_v``, or
``add_k_proj``/``add_v_proj``). For each such projection W the edit solves, in float64,

    W' = argmin  Σ_edits ‖W' c_src − W c_tgt‖² + Σ_preserve ‖W' c_p − W c_p‖² + λ' ‖W' − W‖²
       = (Σ W c_tgt c_srcᵀ + Σ W c_p c_pᵀ + λ' W)(Σ c_src c_srcᵀ + Σ c_p c_pᵀ + λ' I)⁻¹

so the source's inputs produce the target's keys/values and the preservation prompts (by default also
the targets themselves) keep theirs (a bias, where there is one, is left alone). It is computed as W' = W + Δ with Δ from the SVD of the
stacked inputs (the same solution, stable as λ → 0). ``lam`` is relative: λ' = lam · tr(Σ c cᵀ) / d,
a fraction of the inputs' mean energy per input dimension, so one value means the same for models
whose embeddings differ in scale. λ → 0: the inputs are matched exactly where they can be (the
smallest change that does it); larger λ keeps W closer (a softer, more specific edit). Directions no
input touches are never changed.

The inputs ``c`` are what the projections read in the model's own forward passes (hooks over the
denoising steps, the conditional copy only): a U-Net's are the text embeddings, the same at every
step (kept once); a joint-attention DiT's (SD3, FLUX) are its text stream, which changes from block to
block and step to step (every step is a constraint). A source prompt runs in the same batch and from
the same seed as its target, so both sequences have the same length and are matched position by
position. Limits: when the two prompts have different token counts, the positions no longer hold the
same words (prefer source and target words of one token each, or the same count); positions the
attention masks out (PixArt, SANA, AudioLDM2's T5 stream: padding) carry nothing and are left out, as
are positions a prompt masks and the other does not. ``tokens`` restricts the positions used.

FLUX's single-stream sites are refused: their ``to_k``/``to_v`` serve the image tokens too, so an edit
of them would change every image's keys (their taps declare a token range; any such site is refused).

Example::

    wf = multiloc.rewrite(model, [("red", "blue")], preserve=["green", "yellow"],
                          templates=["a small {} circle", "a large {} square"], concept="toy-colour")
    save_weights("red-to-blue.safetensors", wf)
    with model.applied(wf):
        model.generate(["a small red triangle"])       # drawn blue
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..hooks import capture, capture_inputs
from ..sites import Site
from .quickfix import encoder_site, quickfix
from .targets import resolve_sites
from .weights import WeightFile, make_weights, parameter

# Built-in templates a one-word source/target/preservation item is placed into, per modality.
TEMPLATES = {
    "image": ("{}", "a photo of {}", "a painting of {}", "an image of {}"),
    "audio": ("{}", "{} music", "a recording of {}", "{} solo"),
}
ARROW = "=>"


def parse_edit(text: str) -> tuple[str, str]:
    """``"SRC => TGT"`` as ``(SRC, TGT)``; anything else is a one-line :class:`UserError`.

    >>> parse_edit("red => blue")
    ('red', 'blue')
    """
    src, sep, tgt = text.partition(ARROW)
    src, tgt = src.strip(), tgt.strip()
    if not sep or ARROW in tgt:
        raise UserError(f"--edit {text!r} is not of the form 'SOURCE => TARGET' (one '=>')")
    if not src or not tgt:
        raise UserError(f"--edit {text!r} has an empty side; to erase a concept, edit it to a neutral "
                        "word ('r2d2 => robot')")
    return src, tgt


def is_word(item: str) -> bool:
    """A one-word item (no spaces) is placed into the templates; anything longer is a prompt."""
    return len(item.split()) == 1 and "{" not in item


def expand(item: str, templates: Sequence[str]) -> list[str]:
    """The prompts an item stands for: the templates filled with a word, or the prompt itself.

    >>> expand("red", ["a {} cube", "{}"])
    ['a red cube', 'red']
    >>> expand("a red cube", ["a {} cube"])
    ['a red cube']
    """
    return [t.replace("{}", item) for t in templates] if is_word(item) else [item]


def edit_pairs(edits: Sequence[tuple[str, str]], templates: Sequence[str]) -> list[tuple[str, str]]:
    """The (source prompt, target prompt) pairs of the edits; the sides of one edit must be alike."""
    pairs = []
    for src, tgt in edits:
        if not src.strip() or not tgt.strip():
            raise UserError(f"edit {src!r} => {tgt!r} has an empty side")
        if is_word(src) != is_word(tgt):
            raise UserError(f"edit {src!r} => {tgt!r} mixes a word and a prompt: give two words (placed "
                            "into the templates) or two prompts")
        pairs += list(zip(expand(src, templates), expand(tgt, templates)))
    return pairs


def check_templates(templates: Sequence[str]) -> list[str]:
    """``templates`` as a list, each holding ``{}`` exactly once (UserError otherwise).

    >>> check_templates(["a small {} circle"])
    ['a small {} circle']
    """
    templates = list(templates)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UserError(f"a template holds the word's place as '{{}}' exactly once; got {bad or templates}")
    return templates


def editable(model: Any, sites: Sequence[Site]) -> list[Site]:
    """``sites``, after checking each reads the conditioning through plain linear projections of the
    conditioning alone (a FLUX single-stream site's also serve the image tokens: refused)."""
    for site in sites:
        taps = [t for t in site.taps if t.kwarg is None]
        if any(t.tokens is not None for t in taps):
            raise UserError(f"site {site.name} ({site.kind}) projects the text and the image tokens with the "
                            "same to_k/to_v, so a weight edit would change the image's keys too; choose "
                            "sites that read the text alone (e.g. FLUX's joint sites: --sites "
                            "'transformer_blocks.*')")
        module = model.denoiser.get_submodule(site.name)
        if not taps or any(not isinstance(module.get_submodule(t.path), torch.nn.Linear) for t in taps):
            raise UserError(f"site {site.name} ({site.kind}) has no key/value projections to rewrite")
    return list(sites)


def kept_positions(mask: torch.Tensor) -> torch.Tensor:
    """Which positions an attention mask lets through, (rows, tokens) bool; masks come as booleans,
    0/1, or additive biases (0 kept, large negative masked, as PixArt passes them)."""
    mask = mask.reshape(mask.shape[0], -1)
    if mask.dtype == torch.bool:
        return mask
    if (mask < 0).any():
        return mask > -1
    return mask > 0.5 if (mask > 0).any() else torch.ones_like(mask, dtype=torch.bool)


@dataclass
class Inputs:
    """What one projection read for a batch of rows: ``x`` (calls, rows, tokens, features) and the
    positions each row attends to, ``kept`` (rows, tokens)."""

    x: torch.Tensor
    kept: torch.Tensor


def collect(model: Any, sites: Sequence[Site], rows: Sequence[str], *, seeds: Sequence[int],
            steps: int | None, guidance: float | None, bar: Any = None) -> dict[str, Inputs]:
    """Run ``rows`` as one batch per seed and record what each site's projections read (its first tap's
    input: ``to_k`` and ``to_v`` read the same), each distinct call once (a U-Net's inputs do not change
    with the step or the seed). Returns :class:`Inputs` by site name."""
    den = model.denoiser
    first = {s.name: f"{s.name}.{next(t.path for t in s.taps if t.kwarg is None)}" for s in sites}
    mask_sites = [replace(s, taps=tuple(t for t in s.taps if t.mask)) for s in sites]
    mask_sites = [s for s in mask_sites if s.taps]
    calls: dict[str, list[torch.Tensor]] = {m: [] for m in first.values()}
    masks: dict[str, torch.Tensor] = {}
    copy = model.adapter.conditional_copy
    for seed in seeds:
        with capture_inputs(den, list(first.values()), len(rows), copy) as ins, \
                capture(den, mask_sites) as ms, torch.no_grad():
            model.generate(list(rows), seed=seed, steps=steps, guidance=guidance)
        for m, seen in calls.items():
            seen += [x for x in ins[m] if not any(torch.equal(x, y) for y in seen)]
        for (site, _), values in ms.items():  # one mask per generation: it does not change per step
            m = values[0]
            masks[site] = kept_positions(m.reshape(m.shape[0] // len(rows), len(rows), *m.shape[1:])[copy].cpu())
        if bar is not None:
            bar.update(1)
    out = {}
    for name, module in first.items():
        x = torch.stack(calls[module])
        kept = masks.get(name, torch.ones(x.shape[1], x.shape[2], dtype=torch.bool))
        out[name] = Inputs(x, kept[:, :x.shape[2]])
    return out


def positions(tokens: str | Sequence[int], length: int) -> torch.Tensor:
    """The positions ``tokens`` allows in a sequence of ``length``: all, or the listed ones."""
    allowed = torch.zeros(length, dtype=torch.bool)
    if isinstance(tokens, str):
        if tokens != "all":
            raise UserError(f"tokens must be 'all' or a list of positions, got {tokens!r}")
        allowed[:] = True
        return allowed
    bad = [p for p in tokens if not -length <= int(p) < length]
    if bad:
        raise UserError(f"token positions {bad} are outside the sequence of {length} tokens")
    allowed[[int(p) for p in tokens]] = True
    return allowed


def constraints(inputs: Inputs, weight: torch.Tensor, pairs: Sequence[tuple[int, int]],
                keep_rows: Sequence[int], tokens: str | Sequence[int],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked float64 inputs and wanted outputs (bias-free): the edits' ``(c_src, W c_tgt)`` and the
    preserved ``(c_p, W c_p)``; plus the edits' own rows alone (for the summary)."""
    x = inputs.x.to(torch.float64)
    w = weight.to(torch.float64)
    allowed = positions(tokens, x.shape[2])
    xs, ys = [], []
    for s, t in pairs:
        pos = allowed & inputs.kept[s] & inputs.kept[t]
        xs.append(x[:, s, pos].reshape(-1, x.shape[-1]))
        ys.append(x[:, t, pos].reshape(-1, x.shape[-1]) @ w.T)
    edit_x, edit_y = torch.cat(xs), torch.cat(ys)
    if not edit_x.shape[0]:
        raise UserError("no token position is left to match the edits on (the chosen tokens are masked)")
    keep = [x[:, p, allowed & inputs.kept[p]].reshape(-1, x.shape[-1]) for p in keep_rows]
    keep_x = torch.cat(keep) if keep else x.new_zeros(0, x.shape[-1])
    return torch.cat([edit_x, keep_x]), torch.cat([edit_y, keep_x @ w.T]), edit_x, edit_y


def solve(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """W' = (Yᵀ X + λ' W)(Xᵀ X + λ' I)⁻¹ with λ' = lam · tr(XᵀX)/d, in float64 (see the module
    docstring); rows of ``x`` are inputs, rows of ``y`` the outputs wanted for them.

    >>> w2 = solve(w, x, x @ w_target.T, lam=1e-6)     # w2 @ x.T ≈ w_target @ x.T
    """
    w = weight.to(torch.float64)
    if x.shape[0] == 0:
        return w
    ridge = lam * float((x * x).sum()) / x.shape[1]
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    cut = s > s.max() * x.shape[1] * torch.finfo(torch.float64).eps
    u, s, vh = u[:, cut], s[cut], vh[cut]
    residual = y - x @ w.T
    delta_t = vh.T @ ((s / (s * s + ridge)).unsqueeze(1) * (u.T @ residual))
    return w + delta_t.T


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 for empty)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.numel() else 0.0


def rewrite(model: Any, edits: Sequence[tuple[str, str] | str], *, preserve: Sequence[str] = (),
            sites: Any = None, concept: str | None = None, lam: float = 0.01,
            templates: Sequence[str] | None = None, tokens: str | Sequence[int] = "all",
            seeds: Sequence[int] = (0,), steps: int | None = None, guidance: float | None = None,
            keep_targets: bool = True, progress: bool = True) -> WeightFile:
    """The closed-form edit of the chosen sites' key/value projections, as a weight file in memory
    (save it with :func:`~multiloc.control.weights.save_weights`; apply it with ``model.applied``).
    ``model`` itself is left as it was.

    ``edits``: ``(SRC, TGT)`` pairs or ``"SRC => TGT"`` strings; a one-word side is placed into each of
    ``templates`` (default: the modality's built-in set, :data:`TEMPLATES`), a longer side is a prompt.
    ``preserve``: words or prompts whose keys/values must stay; with ``keep_targets`` the edits' target
    prompts are kept too (their keys/values are what the sources must produce). ``sites``: a spec, a scan's result, or
    None for the published sites (``concept`` picks the set); ``"ENCODER:LAYER"`` (``"text_encoder:0"``)
    edits that text-encoder layer instead (Diff-QuickFix, :mod:`multiloc.control.quickfix`). ``lam``: the relative ridge (see the
    module docstring). ``tokens``: ``"all"`` or a list of positions to use. The inputs come from
    generations with ``seeds`` and ``steps``.

    >>> wf = rewrite(model, ["red => blue"], preserve=["green"], sites="3")
    >>> wf.details["residual"]      # relative residual on the edit's prompts, before/after; preserved drift
    {'before': 1.38, 'after': 0.08, 'preserve_drift': 0.04}
    """
    edits = [parse_edit(e) if isinstance(e, str) else (str(e[0]), str(e[1])) for e in edits]
    if not edits:
        raise UserError("rewrite needs at least one edit ('SOURCE => TARGET')")
    if lam < 0:
        raise UserError(f"lambda must be >= 0, got {lam}")
    templates = check_templates(templates if templates is not None else TEMPLATES[model.modality])
    pairs = edit_pairs(edits, templates)
    kept = [p for item in preserve for p in expand(item, templates)]
    if keep_targets:  # an edit to "blue" must not change "blue" itself
        kept += [t for _, t in pairs if t not in kept]
    layer = encoder_site(model, sites)
    if layer is not None:  # "text_encoder:0": Diff-QuickFix of that encoder layer (quickfix.py)
        return quickfix(model, edits, templates, kept, encoder=layer[0], layer=layer[1], lam=lam)
    chosen = editable(model, resolve_sites(model, sites, concept=concept))
    if isinstance(tokens, str):
        positions(tokens, 0)  # the form is checked now, the range once the length is known
    else:
        tokens = [int(t) for t in tokens]

    # One batch per seed: the pairs side by side (same length, same noise), then the preserved prompts.
    rows = [p for pair in pairs for p in pair] + kept
    bar = tqdm(total=len(seeds) + len(chosen), desc=f"rewrite {model.name}", disable=not progress)
    inputs = collect(model, chosen, rows, seeds=seeds, steps=steps, guidance=guidance, bar=bar)
    component = model.adapter.denoiser_attr
    row_pairs = [(2 * i, 2 * i + 1) for i in range(len(pairs))]
    keep_rows = list(range(2 * len(pairs), len(rows)))
    tensors, before, after, drift = {}, [], [], []
    for site in chosen:
        for tap in (t for t in site.taps if t.kwarg is None):
            key = f"{component}.{site.name}.{tap.path}.weight"
            weight = parameter(model, key).detach().to("cpu")  # the inputs were gathered on the CPU
            x, y, edit_x, edit_y = constraints(inputs[site.name], weight, row_pairs, keep_rows, tokens)
            new = solve(weight, x, y, lam)
            w = weight.to(torch.float64)
            keep_x = x[edit_x.shape[0]:]
            before.append(relative(edit_x @ w.T, edit_y))
            after.append(relative(edit_x @ new.T, edit_y))
            drift.append(relative(keep_x @ new.T, keep_x @ w.T))
            tensors[key] = new.to(weight.dtype)
        bar.update(1)
    bar.close()
    details = {"edits": [list(e) for e in edits], "pairs": [list(p) for p in pairs], "preserve": list(preserve),
               "preserve_prompts": kept, "lam": lam, "templates": templates, "tokens": tokens,
               "seeds": list(seeds), "steps": steps or model.settings["steps"],
               "residual": {"before": _mean(before), "after": _mean(after), "preserve_drift": _mean(drift)}}
    return make_weights(model, tensors, kind="rewrite", sites=[s.name for s in chosen], details=details)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
