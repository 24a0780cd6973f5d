"""Diff-QuickFix (Basu et al., ICLR 2023): a closed-form edit of one text-encoder layer's self-attention
output projection, reached through ``multiloc rewrite --sites ENCODER:LAYER``.

Causal tracing in CLIP's text encoder finds one causal state: the first layer's self-attention at the
last token of the subject. Its output projection W maps the attention's output k at that token to
the residual update v = W k. The edit makes the source's k produce what the target's k produces and
keeps the preserved prompts' outputs at every real position (by default the targets' own prompts):

    W' = (λW + Σ v kᵀ)(λI + Σ k kᵀ)⁻¹   (the same ridge solve as the denoiser rewrite, float64)

with ``lam`` relative as in :mod:`multiloc.control.rewrite`. The result is an ordinary weight file
(key ``text_encoder.encoder.layers.0.self_attn.out_proj.weight``): applied and undone like any other,
and applying it clears the model's conditioning cache, so generations read the edited encoder.

Example::

    wf = multiloc.rewrite(model, ["red => blue"], sites="text_encoder:0",
                          templates=["a small {} circle", "a large {} square"])
    with model.applied(wf):
        model.generate(["a large red triangle"])          # drawn blue
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..adapter import offsets_positions
from ..concepts import _words
from ..encoders import encoder_names, find_encoder, run_encoders
from ..errors import UserError
from ..hooks import capture_inputs
from .weights import WeightFile, make_weights, parameter

SITE = re.compile(r"^([A-Za-z_][\w.]*):(\d+)$")


def encoder_site(model: Any, spec: Any) -> tuple[str, int] | None:
    """``(encoder, layer)`` when ``spec`` names an encoder layer as ``ENCODER:LAYER`` (``text_encoder:0``),
    else None (a denoiser site spec).

    >>> encoder_site(model, "text_encoder:0")
    ('text_encoder', 0)
    """
    if not isinstance(spec, str):
        return None
    m = SITE.match(spec.strip())
    if not m:
        return None
    if m.group(1) not in encoder_names(model):
        raise UserError(f"--sites {spec}: {model.name} has no text encoder {m.group(1)!r} "
                        f"(it has {', '.join(encoder_names(model)) or 'none'})")
    return m.group(1), int(m.group(2))


def subject_position(tokenizer: Any, prompt: str, words: Sequence[str]) -> int:
    """The position of the last token of ``words`` in ``prompt`` (the subject's last token)."""
    got = offsets_positions(tokenizer, prompt, words)
    if not got:
        raise UserError(f"no token of {list(words)} found in {prompt!r}")
    return got[-1]


def triples(edits: Sequence[tuple[str, str]], templates: Sequence[str]) -> list[tuple[str, str, list[str], list[str]]]:
    """(source prompt, target prompt, source words, target words) of each edit prompt pair: a word edit
    in every template; a prompt edit with the words in which the two prompts differ."""
    from .rewrite import is_word

    out = []
    for src, tgt in edits:
        if is_word(src) and is_word(tgt):
            out += [(t.replace("{}", src), t.replace("{}", tgt), [src], [tgt]) for t in templates]
            continue
        a, b = _words(src), _words(tgt)
        ws, wt = [w for w in a if w not in b], [w for w in b if w not in a]
        if not ws or not wt:
            raise UserError(f"edit {src!r} => {tgt!r}: the prompts must differ in a word on both sides")
        out.append((src, tgt, ws, wt))
    return out


def quickfix(model: Any, edits: Sequence[tuple[str, str]], templates: Sequence[str], preserve: Sequence[str],
             *, encoder: str, layer: int, lam: float) -> WeightFile:
    """The Diff-QuickFix weight file (see the module docstring); ``preserve``: prompts whose outputs of
    the projection stay (at every real position). Called by :func:`~multiloc.control.rewrite.rewrite`."""
    from .rewrite import relative, solve

    enc = find_encoder(model, encoder)
    proj, key = enc.out_proj(layer)
    cases = triples(edits, templates)
    rows = [c[0] for c in cases] + [c[1] for c in cases] + list(preserve)
    path = next(n for n, m in enc.module.named_modules() if m is proj)
    with capture_inputs(enc.module, [path], n_rows=len(rows)) as seen:
        run_encoders(model, rows)
    k = seen[path][0].to(torch.float64)  # the first call encodes the rows (later ones: negatives)
    weight = parameter(model, key).detach().to("cpu")
    w = weight.to(torch.float64)
    n = len(cases)
    src = torch.stack([k[i, subject_position(enc.tokenizer, s, ws)] for i, (s, _, ws, _) in enumerate(cases)])
    tgt = torch.stack([k[n + i, subject_position(enc.tokenizer, t, wt)] for i, (_, t, _, wt) in enumerate(cases)])
    keep = [k[2 * n + i, :len(enc.tokenizer(p, truncation=True)["input_ids"])] for i, p in enumerate(preserve)]
    keep_x = torch.cat(keep) if keep else k.new_zeros(0, k.shape[-1])
    x, y = torch.cat([src, keep_x]), torch.cat([tgt @ w.T, keep_x @ w.T])
    new = solve(weight, x, y, lam)
    details = {"method": "diff-quickfix", "edits": [list(e) for e in edits], "pairs": [list(c[:2]) for c in cases],
               "preserve_prompts": list(preserve), "lam": lam, "templates": list(templates),
               "encoder": encoder, "layer": layer,
               "residual": {"before": relative(src @ w.T, tgt @ w.T), "after": relative(src @ new.T, tgt @ w.T),
                            "preserve_drift": relative(keep_x @ new.T, keep_x @ w.T)}}
    return make_weights(model, {key: new.to(weight.dtype)}, kind="rewrite", sites=[f"{encoder}:{layer}"],
                        details=details)
