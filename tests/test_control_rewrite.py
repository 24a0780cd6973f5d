"""`multiloc rewrite`: closed-form key/value edits, exact in the λ → 0 limit on every tiny family."""

from __future__ import annotations

import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.control import weights as W
from multiloc.control.rewrite import Inputs, collect, edit_pairs, parse_edit, solve
from multiloc.hooks import capture

FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-if", "tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana",
            "tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step")
SRC, TGT, KEEP = "a red cube", "a blue cube", "the green ball"
STEPS = 2


def _conditional(x: torch.Tensor, n_rows: int, copy: int) -> torch.Tensor:
    return x.reshape(x.shape[0] // n_rows, n_rows, *x.shape[1:])[copy]


def _differing(inputs: Inputs, limit: int) -> list[int]:
    """Positions where the source's inputs differ from the target's, both attended (at most ``limit``)."""
    x, kept = inputs.x, inputs.kept
    diff = (x[:, 0] != x[:, 1]).any(0).any(-1) & kept[0] & kept[1] & kept[2]
    return [int(p) for p in diff.nonzero().flatten()[:limit]]


@pytest.mark.parametrize("name", FAMILIES)
def test_rewrite_is_exact_as_lambda_goes_to_zero(name, tmp_path, one_thread):
    model = multiloc.load(name)
    site = model.sites[-1] if name == "tiny-audioldm2" else model.sites[0]  # AudioLDM2: a masked T5 site
    taps = [t.path for t in site.taps if t.kwarg is None]
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    rows = [SRC, TGT, KEEP]
    seen = collect(model, [site], rows, seeds=[0], steps=STEPS, guidance=None)
    first = seen[site.name]
    calls, d = first.x.shape[0], first.x.shape[-1]
    # A full-rank input set: (edit + preserved) vectors = 2 * calls * positions, at most the width.
    tokens = _differing(first, max(1, min(3, d // (4 * calls))))
    assert tokens and 2 * calls * len(tokens) <= d
    # lam is relative to the inputs' mean energy; tiny-sd3's six input vectors have singular values from
    # 6.9 down to 4e-4, so "lambda -> 0" has to be far below (4e-4 / 6.9)^2 for the fit to be exact.

    wf = multiloc.rewrite(model, [f"{SRC} => {TGT}"], preserve=[KEEP], sites=site.name, lam=1e-12,
                          tokens=tokens, steps=STEPS, progress=False)
    assert wf.details["residual"]["after"] < 1e-4 < 1e-2 < wf.details["residual"]["before"]
    component = model.adapter.denoiser_attr
    assert sorted(wf.tensors) == sorted(f"{component}.{site.name}.{t}.weight" for t in taps)  # nothing else
    after = model.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # rewrite leaves the model as it was

    path = W.save_weights(tmp_path / "edit.safetensors", wf)
    back = W.read_weights(path)
    assert back.kind == "rewrite" and back.sites == [site.name] and back.details["tokens"] == tokens
    assert all(torch.equal(back.tensors[k], v) for k, v in wf.tensors.items())

    module = model.denoiser.get_submodule(site.name)
    originals = {t: module.get_submodule(t).weight.detach().clone() for t in taps}
    with model.applied(path):
        edited_keys = {f"{site.name}.{t}.weight" for t in taps}
        now = model.denoiser.state_dict()
        assert all(torch.equal(before[k], now[k]) for k in before if k not in edited_keys)  # the rest: untouched
        assert all(not torch.equal(before[k], now[k]) for k in edited_keys)
        for t in taps:  # every recorded call (all steps): W' c_src = W c_tgt, W' c_p = W c_p
            x = first.x[:, :, tokens]
            proj = module.get_submodule(t)
            w0 = originals[t]
            new_src, old_tgt = x[:, 0] @ proj.weight.T, x[:, 1] @ w0.T
            new_keep, old_keep = x[:, 2] @ proj.weight.T, x[:, 2] @ w0.T
            assert torch.allclose(new_src, old_tgt, rtol=1e-3, atol=1e-3 * old_tgt.abs().max())
            assert torch.allclose(new_keep, old_keep, rtol=1e-3, atol=1e-3 * old_keep.abs().max())
            assert not torch.allclose(x[:, 0] @ w0.T, old_tgt, atol=1e-3 * old_tgt.abs().max())
        # ... and in the model's own forward pass: the first call's keys/values of the source row
        with capture(model.denoiser, [site]) as edited:
            model.generate(rows, seed=0, steps=1)
    with capture(model.denoiser, [site]) as plain:
        model.generate(rows, seed=0, steps=1)
    copy = model.adapter.conditional_copy
    for t in taps:
        new = _conditional(edited[(site.name, t)][0], 3, copy)[:, tokens]
        old = _conditional(plain[(site.name, t)][0], 3, copy)[:, tokens]
        tol = 1e-3 * old.abs().max()
        assert torch.allclose(new[0], old[1], atol=tol) and torch.allclose(new[2], old[2], atol=tol)
    after = model.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # reverted bit for bit


def test_solve_matches_the_closed_form():
    """The SVD route gives (Σ W c_tgt c_srcᵀ + Σ W c_p c_pᵀ + λ'W)(Σ c cᵀ + λ'I)⁻¹ itself."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 6, generator=g, dtype=torch.float64)
    lam = 0.3
    ridge = lam * float((x * x).sum()) / 5
    closed = (y.T @ x + ridge * w) @ torch.linalg.inv(x.T @ x + ridge * torch.eye(5, dtype=torch.float64))
    assert torch.allclose(solve(w, x, y, lam), closed, atol=1e-10)
    untouched = torch.zeros(2, 5, dtype=torch.float64)
    untouched[:, :2] = torch.randn(2, 2, generator=g)
    moved = solve(w, untouched, torch.randn(2, 6, generator=g, dtype=torch.float64), 1e-9)
    assert torch.allclose(moved[:, 2:], w[:, 2:])  # directions no input touches keep their weights


def test_edit_parsing_and_templates():
    assert parse_edit(" red =>  blue ") == ("red", "blue")
    for bad in ("red -> blue", "=> blue", "red =>", "a => b => c"):
        with pytest.raises(multiloc.UserError):
            parse_edit(bad)
    assert edit_pairs([("red", "blue")], ["a {} cube", "{}"]) == [("a red cube", "a blue cube"), ("red", "blue")]
    assert edit_pairs([("a red cube", "a blue ball")], ["{}"]) == [("a red cube", "a blue ball")]
    with pytest.raises(multiloc.UserError, match="mixes a word and a prompt"):
        edit_pairs([("red", "a blue cube")], ["{}"])


def test_flux_single_stream_sites_are_refused():
    model = multiloc.load("tiny-flux")
    single = next(s for s in model.sites if s.kind == "single_stream")
    with pytest.raises(multiloc.UserError, match="image's keys too"):
        multiloc.rewrite(model, ["red => blue"], sites=single.name, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--edit", "red => blue", "--sites", "nope.attn2"], "no site matches"),
    (["--edit", "red blue"], "not of the form"),
    (["--edit", "red => "], "empty side"),
    (["--edit", "red => blue"], "scan first"),
    (["--edit", "red => blue", "--sites", "0", "--templates", "a cube"], "exactly once"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys):
    out = tmp_path / "edit.safetensors"
    assert main(["rewrite", "--model", "tiny-sd", "--save", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_rewrite_then_generate_and_foreign_files(tmp_path, capsys, one_thread):
    out = tmp_path / "edit.safetensors"
    assert main(["rewrite", "--model", "tiny-sd", "--edit", "a red cube => a blue cube", "--preserve",
                 "a green ball", "--sites", "0-1", "--steps", "2", "--save", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "2 sites" in text and "4 tensors" in text and "residual" in text
    assert W.read_weights(out).sites == [s.name for s in multiloc.load("tiny-sd").sites[:2]]
    gen = tmp_path / "gen"
    assert main(["generate", "--model", "tiny-sd", "--prompt", "a red cube", "--weights", str(out),
                 "--steps", "2", "--out", str(gen), "--quiet"]) == 0
    assert (gen / "generate.json").exists()
    capsys.readouterr()
    for model, fake in (("tiny-sdxl", False), ("tiny-sd3", False), ("tiny-sd", True)):
        bad = tmp_path / f"bad-{model}"
        if fake:
            (tmp_path / "fake.safetensors").write_text("not a safetensors file")
            weights = tmp_path / "fake.safetensors"
        else:
            weights = out  # made for tiny-sd: tiny-sdxl is of its family (other shapes), tiny-sd3 is not
        assert main(["generate", "--model", model, "--prompt", "a red cube", "--weights", str(weights),
                     "--steps", "2", "--out", str(bad), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("made for" in err or "not a safetensors" in err)
        assert not bad.exists()


def test_toy_shapes_localized_edit_generalises_and_keeps_other_colours(one_thread):
    """The headline: red => blue learnt on three prompts at the published colour site turns unseen red
    prompts blue and leaves the other colours (and every shape) alone; a non-localized site does nothing."""
    from multiloc.control import generate, resolve_sites
    from multiloc.toy import shapes

    model = multiloc.load("toy-shapes")
    templates = ("a small {} circle", "a large {} square", "a large {} triangle")
    unseen = ["a small red triangle", "a small red square"]  # the first is held out of the toy's training too
    others = ["a small green triangle", "a large yellow circle", "a small magenta square", "a small cyan circle"]
    colour, shape = multiloc.get_scorer("colour"), multiloc.get_scorer("shape")
    local = resolve_sites(model, concept="toy-colour")
    elsewhere = next(s for s in model.sites if s not in local)
    for sites, flips in ((local, True), ([elsewhere], False)):
        wf = multiloc.rewrite(model, ["red => blue"], preserve=["green", "yellow", "magenta", "cyan"],
                              sites=[s.name for s in sites], lam=0.1, templates=templates, progress=False)
        with model.applied(wf):
            outs = generate(model, unseen + others, seeds=[0], batch_size=8)[0]
        blue = colour.score(outs[:2], ["blue"] * 2)
        assert all(b > 0.5 for b in blue) if flips else all(b < 0.2 for b in blue)  # measured: 0.57, 1.0
        assert min(colour.score(outs[2:], [p.split()[2] for p in others])) > 0.9
        assert min(shape.score(outs, [p.split()[3] for p in unseen + others])) > 0.8
        assert shapes.best_colour(outs[0]) == ("blue" if flips else "red")


def test_several_edits_are_solved_together(one_thread):
    model = multiloc.load("tiny-pixart")
    wf = multiloc.rewrite(model, ["a red cube => a blue cube", "a green ball => a pink ball"], sites="0",
                          steps=2, tokens=[3], lam=1e-6, progress=False)
    assert wf.details["pairs"] == [["a red cube", "a blue cube"], ["a green ball", "a pink ball"]]
    assert wf.details["preserve_prompts"] == ["a blue cube", "a pink ball"]  # the targets are kept
    res = wf.details["residual"]
    assert res["after"] < 1e-4 < 0.1 < res["before"] and res["preserve_drift"] < 1e-4
