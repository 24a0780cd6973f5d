"""`multiloc edit`: one-pass output edits through chosen sites, the baselines, the evaluation, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.control.edit import draw_sites, edit, evaluate, parse_pairs, removed_words
from multiloc.hooks import guide_prediction
from multiloc.interventions import Patch, StepWindow
from multiloc.metrics import spectrogram_ssim

P, Q = "a small red circle", "a small blue circle"


@pytest.fixture(scope="module")
def shapes() -> multiloc.Model:
    return multiloc.load("toy-shapes")


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl", "tiny-if", "tiny-sd3", "tiny-flux", "tiny-pixart",
                                  "tiny-sana", "tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step"])
def test_edit_is_the_hand_built_patch_plan(name, one_thread):
    model = multiloc.load(name)
    run = edit(model, "a red cube", "a blue cube", sites="1,2", from_step=1, seeds=[0], steps=3)
    plan = [Patch(model.sites[i].name, rows=(2,), source=0, window=StepWindow(1)) for i in (1, 2)]
    donor, original, edited = model.generate(["a blue cube", "a red cube", "a red cube"], plan, seed=0, steps=3)
    assert np.array_equal(run.donor[0], donor) and np.array_equal(run.original[0], original)
    assert np.array_equal(run.edited[0][0], edited)
    assert not np.array_equal(edited, original)  # the edit did something


def test_from_step_window(shapes, one_thread):
    steps = shapes.settings["steps"]
    run = edit(shapes, P, Q, concept="toy-colour", from_step=steps, seeds=[0])
    assert run.from_step == steps and np.array_equal(run.edited[0][0], run.original[0])  # nothing edited
    assert edit(shapes, P, Q, concept="toy-colour", seeds=[0]).from_step == round(steps * 4 / 50)
    # K = 3: the edited row's prediction is the original's, bit for bit, before step 3, and not from then on
    same: dict[int, bool] = {}

    def watch(pred, step):
        same[step] = same.get(step, True) and bool(torch.equal(pred[:, 1], pred[:, 2]))
        return pred

    with guide_prediction(shapes.denoiser, 3, {}, watch):
        edit(shapes, P, Q, concept="toy-colour", from_step=3, seeds=[0])
    assert [same[i] for i in range(steps)] == [True] * 3 + [False] * (steps - 3)
    for k in (-1, steps + 1):
        with pytest.raises(multiloc.UserError, match="outside"):
            edit(shapes, P, Q, concept="toy-colour", from_step=k)


def test_toy_colour_edit_flips_colour_keeps_shape(shapes, one_thread):
    runs = [edit(shapes, P, Q, concept="toy-colour", seeds=[0, 1], method=m)
            for m in ("localized", "all-sites", "random-sites")]
    s = evaluate(shapes, runs, scorer="colour", keep="shape")["summary"]
    assert s["localized"]["removed_original"] > 0.9 and s["localized"]["target_original"] < 0.1
    assert s["localized"]["removed"] < 0.1 and s["localized"]["target"] > 0.9  # red -> blue
    assert s["localized"]["kept"] > 0.9  # still the small circle
    assert s["random-sites"]["removed"] > 0.9 and s["random-sites"]["target"] < 0.1  # other sites: still red
    assert s["random-sites"]["ssim"] > s["localized"]["ssim"]


def test_baselines_through_the_same_harness(shapes, one_thread):
    every = edit(shapes, P, Q, from_step=0, seeds=[0], method="all-sites")
    assert every.sites == [s.name for s in shapes.sites]
    # every site reads Q from the first step: the U-Net reads the prompt nowhere else, so this is Q's output
    assert np.allclose(every.edited[0][0], shapes.generate([Q], seed=0)[0], atol=1e-5)
    rand = edit(shapes, P, Q, concept="toy-shape", seeds=[0], method="random-sites", draws=3, draw_seed=5)
    chosen = set(rand.sites)
    assert len(rand.draws) == 3 == len(rand.edited[0])
    assert all(len(d) == len(chosen) and not chosen & set(d) for d in rand.draws)
    assert rand.draws == [[s.name for s in d] for d in draw_sites(
        [s for s in shapes.sites if s.name not in chosen], len(chosen), 3, seed=5)]  # seeded
    with pytest.raises(multiloc.UserError, match="without classifier-free guidance"):
        edit(shapes, P, Q, method="negative-prompt")
    neg = edit(shapes, P, Q, seeds=[0], method="negative-prompt", guidance=3.0)
    assert neg.negative == "red" and neg.donor == [None]
    with pytest.raises(multiloc.UserError, match="without classifier-free guidance"):
        edit(shapes, P, Q, method="sld")


def test_negative_prompt_mapping(tiny_sd, one_thread):
    plain = tiny_sd.generate(["a red cube"], seed=0, steps=2)[0]
    # SD's own negative is the empty prompt: passing it explicitly changes nothing
    assert np.allclose(tiny_sd.generate(["a red cube"], seed=0, steps=2, negative=[""])[0], plain, atol=1e-6)
    assert not np.allclose(tiny_sd.generate(["a red cube"], seed=0, steps=2, negative=["red"])[0], plain, atol=1e-4)
    for name, why in (("tiny-flux", "guidance-distilled"), ("tiny-ace-step", "no negative prompt")):
        for method in ("negative-prompt", "sld"):
            with pytest.raises(multiloc.UserError, match=why):
                edit(multiloc.load(name), "a red cube", "a blue cube", method=method)


def test_sld_port_equals_diffusers_safe_pipeline(tiny_sd, one_thread):
    """Known answer: the SLD port gives StableDiffusionPipelineSafe's image (same weights, seed, settings)."""
    from diffusers import StableDiffusionPipelineSafe

    run = edit(tiny_sd, "a red cube", "a blue cube", seeds=[0], method="sld", from_step=1, steps=4)
    assert run.negative == "red"
    p = tiny_sd.pipe
    safe = StableDiffusionPipelineSafe(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                       scheduler=p.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = "red"
    ref = safe("a red cube", generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=4,
               guidance_scale=tiny_sd.settings["guidance"], output_type="np", sld_warmup_steps=1,
               height=16, width=16).images[0]
    assert np.abs(ref - run.edited[0][0]).max() < 1e-5
    assert np.abs(run.original[0] - run.edited[0][0]).max() > 1e-3  # the guidance did something
    assert not tiny_sd.denoiser._forward_hooks and not tiny_sd.denoiser._forward_pre_hooks  # all removed


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-audioldm2", "tiny-stable-audio"])
def test_sld_and_negative_prompt_run_on_every_cfg_family(name, one_thread):
    model = multiloc.load(name)
    for method in ("sld", "negative-prompt"):
        run = edit(model, "a red cube", "a blue cube", seeds=[0], method=method, from_step=0, steps=2)
        assert run.edited[0][0].shape == run.original[0].shape
        assert not np.allclose(run.edited[0][0], run.original[0], atol=1e-6), method


def test_audio_edit_and_spectrogram_ssim(one_thread):
    tones = multiloc.load("toy-tones")
    run = edit(tones, "slow low sine notes", "slow low saw notes", concept="toy-instrument", seeds=[0])
    r = evaluate(tones, [run], scorer="instrument", keep="pitch")["records"][0]
    assert r["target"] > r["target_original"] + 0.3 and r["kept"] == 1.0  # now a saw, still low
    assert spectrogram_ssim(run.original[0], run.original[0]) == 1.0
    assert 0 < r["ssim"] < 1


def test_pairs_and_words():
    text = "# toxic text\n\na small red circle => a small blue circle\n  a b => a c  # no inline comments\n"
    assert parse_pairs(text)[0] == (P, Q)
    assert removed_words(P, Q) == ["red"] and removed_words(Q, P) == ["blue"]
    for bad in ("a small red circle", "a => ", "x => x", "a => b => c", "# nothing\n"):
        with pytest.raises(multiloc.UserError):
            parse_pairs(bad)


def test_cli_edit_writes_outputs_and_table(tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    code = main(["edit", "--model", "toy-shapes", "--prompt", P, "--to", Q, "--concept", "toy-colour",
                 "--keep", "shape", "--out", str(out), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit.json", "edited-s0.png", "original-s0.png"]
    data = json.loads((out / "edit.json").read_text())
    assert data["runs"][0]["sites"] == ["up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    assert data["runs"][0]["from_step"] == 1 and data["scorer"] == "colour"
    assert data["summary"]["localized"]["target"] > 0.9
    assert "target ↑" in capsys.readouterr().out
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"# two edits\n{P} => {Q}\na large green square => a large cyan square\n")
    code = main(["edit", "--model", "toy-shapes", "--pairs", str(pairs), "--concept", "toy-colour",
                 "--method", "localized,random-sites", "--draws", "2", "--out", str(tmp_path / "t"), "--quiet"])
    assert code == 0
    data = json.loads((tmp_path / "t" / "edit.json").read_text())
    assert set(data["summary"]) == {"localized", "random-sites"} and data["summary"]["localized"]["n"] == 2
    assert (tmp_path / "t" / "01-a-large-green-square" / "edited-random-sites-s0-d1.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-sd", "--prompt", "a", "--to", "b"], "scan first"),
    (["--model", "toy-shapes", "--pairs", "PAIRS"], "line 2"),
    (["--model", "toy-shapes", "--prompt", "a", "--to", "b", "--method", "blur"], "unknown edit method"),
    (["--model", "toy-shapes", "--prompt", "a", "--to", "b", "--concept", "toy-colour", "--from-step", "11"],
     "outside 0..10"),
    (["--model", "toy-shapes", "--prompt", "a", "--to", "b", "--method", "sld"], "without classifier-free"),
    (["--model", "toy-shapes", "--prompt", "a"], "needs --prompt P and --to Q"),
])
def test_cli_bad_input_one_line_nothing_written(tmp_path, capsys, args, message):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a red circle => a blue circle\njust one prompt\n")
    out = tmp_path / "out"
    code = main(["edit", *[str(pairs) if a == "PAIRS" else a for a in args], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
