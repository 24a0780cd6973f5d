"""Activation steering (`multiloc steer`, `generate --steer`): known answers on real toy-width models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.control import Steer, generate, read_steering, save_steering, steering_vectors
from multiloc.control.steer import SteeringVectors, check_steering
from multiloc.hooks import capture_outputs, hooks, intervene
from tests.conftest import plant

PAIRS = [("a red cube", "a blue cube", "blue"), ("a green ball", "a blue ball", "blue")]


@pytest.fixture(scope="module")
def planted() -> multiloc.Model:
    """tiny-sd with every site but the last (in execution order) blind to the prompt."""
    model = multiloc.load("tiny-sd")
    plant(model, {model.sites[-1].name})
    return model


@pytest.fixture(scope="module")
def blue() -> multiloc.Concept:
    return multiloc.Concept(name="blue", pairs=PAIRS, scorer="reference")


def _attention(module: torch.nn.Module, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """A cross-attention computed by hand from its projections: to_out(softmax(q k^T / sqrt(d)) v)."""
    heads = module.heads
    q, k, v = module.to_q(h), module.to_k(e), module.to_v(e)
    split = [x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k, v)]
    q, k, v = split
    a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
    return module.to_out[0](a.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))


def test_vector_of_planted_model_has_the_analytic_value(planted, blue, one_thread):
    live = planted.sites[-1]
    module = planted.denoiser.get_submodule(live.name)
    seen: list[tuple[tuple, dict]] = []
    with hooks(pre_kw=[(module, lambda m, a, kw: seen.append((a, kw)))]), torch.no_grad():
        vectors = steering_vectors(planted, blue, sites=planted.sites, seeds=[0], steps=2, batch_size=2)
    assert vectors.sites == [s.name for s in planted.sites] and vectors.steps == 2
    for site in planted.sites[:-1]:  # blind, and upstream of the live site: no difference at step 0
        assert torch.count_nonzero(vectors.vectors[site.name][0]) == 0, site.name
    # The live site at step 0: its input h is the same in every row (all upstream sites are blind), so
    # the vector is the mean over pairs of attention(h, donor) - attention(h, base), averaged over positions.
    args, kw = seen[0]  # the first denoiser call: step 0, rows [bases..., donors...] per CFG copy
    h = (args[0] if args else kw["hidden_states"])
    e = kw["encoder_hidden_states"]
    n = 2 * len(PAIRS)
    h, e = h[-n:], e[-n:]  # the conditional copy
    assert torch.equal(h[0], h[-1])
    with torch.no_grad():
        out = _attention(module, h, e).mean(1)
    expected = (out[len(PAIRS):] - out[:len(PAIRS)]).mean(0)
    assert torch.allclose(vectors.vectors[live.name][0], expected, atol=1e-5)
    assert expected.norm() > 1e-3  # a real difference, not two zeros


def test_add_lands_only_at_its_site_and_step(tiny_sd, one_thread):
    sites = tiny_sd.sites
    target = sites[2]
    width = tiny_sd.denoiser.get_submodule(target.name).to_out[0].out_features
    v = torch.zeros(3, width)
    v[1] = torch.linspace(-1, 1, width)  # only step 1 steers
    vectors = SteeringVectors({target.name: v}, model="tiny-sd", adapter="unet", concept="test", seeds=[0],
                              guidance=7.5)
    with capture_outputs(tiny_sd.denoiser, sites) as plain:
        tiny_sd.generate(["a red cube"], seed=0, steps=3)
    with intervene(tiny_sd.denoiser, sites, vectors.plan(1, alpha=2.0, steps=3), n_rows=1):
        with capture_outputs(tiny_sd.denoiser, sites) as steered:  # registered later: sees the patched output
            tiny_sd.generate(["a red cube"], seed=0, steps=3)
    for s in sites:
        assert torch.equal(steered[s.name][0], plain[s.name][0])  # step 0: nothing anywhere
    for s in sites[:2]:
        assert torch.equal(steered[s.name][1], plain[s.name][1])  # step 1, upstream: untouched
    assert torch.equal(steered[target.name][1], plain[target.name][1] + 2.0 * v[1])  # every row, both CFG copies


def test_alpha_zero_is_bit_identical_and_the_file_round_trips(planted, blue, tmp_path, one_thread):
    vectors = steering_vectors(planted, blue, sites="5-6", seeds=1, steps=2)
    path = save_steering(tmp_path / "blue.safetensors", vectors)
    back = read_steering(path)
    assert back.sites == vectors.sites and back.model == "tiny-sd" and back.concept == "blue"
    assert back.seeds == [0] and back.pairs == 2 and back.targets == ["blue"] and back.steps == 2
    assert all(torch.equal(back.vectors[s], vectors.vectors[s]) for s in vectors.sites)
    before = {k: v.clone() for k, v in planted.denoiser.state_dict().items()}
    plain = generate(planted, ["a red cube"], seeds=[0], steps=2)[0][0]
    same = generate(planted, ["a red cube"], seeds=[0], steps=2, modifiers=[Steer(path, 0.0, steps=2)])[0][0]
    assert np.array_equal(plain, same)
    moved = generate(planted, ["a red cube"], seeds=[0], steps=2, modifiers=[Steer(back, 8.0, steps=2)])[0][0]
    assert abs(moved - plain).max() > 1e-4
    assert all(torch.equal(before[k], v) for k, v in planted.denoiser.state_dict().items())
    # The same model with its conditioning projections edited (plant() zeroed them): still its file.
    fresh = multiloc.load("tiny-sd")
    check_steering(fresh, back)
    # Another model's file: other weights at a site (same family and sites), other widths.
    with torch.no_grad():
        fresh.denoiser.get_submodule(back.sites[0]).to_q.weight.mul_(1.5)
    with pytest.raises(multiloc.UserError, match="whose weights at .* differ"):
        check_steering(fresh, back)
    with pytest.raises(multiloc.UserError, match="8 channels wide there, 32 in toy-shapes"):
        check_steering(multiloc.load("toy-shapes"), back)


FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-if", "tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana",
            "tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_steers_its_image_side(name, one_thread):
    model = multiloc.load(name)
    concept = multiloc.Concept(name="c", pairs=[("a red cube", "a blue cube")])
    vectors = steering_vectors(model, concept, sites=model.sites, seeds=1, steps=2)
    with capture_outputs(model.denoiser, model.sites) as seen:
        plain = model.generate(["a red cube"], seed=0, steps=2)[0]
    for s in model.sites:  # one vector per channel of the image side (IF's feature maps read channels last)
        assert vectors.vectors[s.name].shape == (2, seen[s.name][0].shape[-1])
    if name in ("tiny-sd3", "tiny-flux"):  # image tokens only: FLUX single-stream outputs lose their text part
        assert len({seen[s.name][0].shape for s in model.sites}) == 1
    # CFG's conditional copy: a donor that differs shows (ACE-Step stacks (cond, null), the others (null, cond)).
    assert max(float(v.abs().max()) for v in vectors.vectors.values()) > 0
    assert np.array_equal(plain, generate(model, ["a red cube"], steps=2, modifiers=[Steer(vectors, 0.0, 2)])[0][0])
    moved = generate(model, ["a red cube"], steps=2, modifiers=[Steer(vectors, 50.0, 2)])[0][0]
    assert abs(moved - plain).max() > 1e-4


def test_cli_steer_sweep_and_generate(tmp_path, capsys, one_thread):
    concept = tmp_path / "saw.yaml"
    concept.write_text("name: toy-saw\nmodality: audio\nscorer: instrument\ntarget: saw\n"
                       "template: '{x} notes'\ndonor: slow low saw\nbases: [slow low sine, slow low square]\n")
    save, out = tmp_path / "saw.safetensors", tmp_path / "sweep"
    assert main(["steer", "--model", "toy-tones", "--concept", str(concept), "--sites", "0-1", "--steps", "4",
                 "--save", str(save), "--alphas", "0,4", "--prompt", "fast mid plucked notes", "--out", str(out),
                 "--quiet"]) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.png").stat().st_size > 0 and read_steering(save).sites == record["sites"]["localized"]
    assert record["sites"]["all-but-localized"] == [f"transformer_blocks.{i}.attn2" for i in range(2, 16)]
    for mode in ("localized", "all", "all-but-localized"):
        zero, four = record["modes"][mode]
        assert zero["score"] == record["unsteered_score"] and zero["preservation"]["lsd_db"] == 0
        assert four["preservation"]["lsd_db"] > 0
    assert record["modes"]["localized"][1]["score"] > record["unsteered_score"] + 0.3  # the saw appears
    assert main(["generate", "--model", "toy-tones", "--prompt", "fast mid plucked notes", "--steps", "4",
                 "--steer", str(save), "--alpha", "4", "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    info = json.loads((tmp_path / "gen" / "generate.json").read_text())
    assert info["modifiers"] == [{"steer": str(save), "alpha": 4.0}]


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "a", "--steer", "S", "--alpha", "abc"], "--alpha must be a number"),
    (["generate", "--prompt", "a", "--steer", "S"], "--steer FILE and --alpha A go together"),
    (["generate", "--prompt", "a", "--steer", "README.md", "--alpha", "1"], "is not a safetensors file"),
    (["steer", "--concept", "toy-colour", "--alphas", "1:2"], "is not lo:hi:n"),
    (["steer", "--concept", "toy-colour", "--alphas", "-4:4:x"], "is not lo:hi:n"),
    (["steer", "--concept", "toy-colour", "--alphas", "-4:4"], "is not lo:hi:n"),
    (["steer", "--concept", "toy-colour", "--prompt", "a"], "belong to the sweep"),
    (["steer", "--concept", "toy-colour", "--save", "."], "is a directory"),
    (["steer", "--concept", "toy-colour", "--alphas", "0:1:2", "--prompt", "a", "--out", "o"], "pass --target"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    where = "--save" if argv[0] == "steer" else "--out"
    argv = [argv[0], "--model", "toy-shapes", *argv[1:], *([] if where in argv else [where, str(tmp_path / "x")])]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (a malformed number)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("multiloc") and message in err[-1]


def test_sweep_on_images_scores_blue_and_measures_preservation(one_thread):
    from multiloc.control.steer_sweep import plot_sweep, sweep
    from multiloc.localize import scorer_for

    model = multiloc.load("toy-shapes")
    concept = multiloc.Concept.load("toy-blue")
    site = model.spec["localized"]["toy-colour"]
    vectors = steering_vectors(model, concept, sites=site, seeds=1, steps=4)
    record = sweep(model, vectors, site, ["a small red circle"], [0.0, 6.0], scorer=scorer_for(model, concept),
                   target="blue", steps=4, modes=("localized",))
    zero, six = record["modes"]["localized"]
    assert list(record["modes"]) == ["localized"] and record["unsteered_score"] == zero["score"] == 0.0
    assert zero["preservation"] == {"mse": 0.0, "ssim": 1.0}
    assert six["score"] > 0.5 and six["preservation"]["mse"] > 0 and six["preservation"]["ssim"] < 1
    assert plot_sweep(record)[:4] == b"\x89PNG"
