"""Causal tracing in the text encoders and Diff-QuickFix: known answers on the trained toy-shapes model
(its 2-layer CLIP text encoder), discovery of every declared encoder of the tiny families."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.encoders import encoder_names, find_encoder, run_encoders
from multiloc.hooks import capture_encoder, corrupt_restore
from multiloc.localize.encoder_trace import EMBED, parts, prepare, traced_outputs

STEPS = 2
PROMPT = "a small blue circle"


@pytest.fixture(scope="module")
def toy() -> multiloc.Model:
    return multiloc.load("toy-shapes")


def blue_share(model: multiloc.Model, outs: list[np.ndarray]) -> float:
    return float(np.mean(multiloc.get_scorer("colour").score(outs, ["blue"] * len(outs))))


def test_embedding_row_and_any_whole_layer_restore_the_clean_output(toy, one_thread):
    enc = find_encoder(toy)
    mods = parts(enc, "block")
    prep = prepare(toy, enc, mods, PROMPT, ["blue"], seed=0)
    assert prep.positions == [3]  # <bos> a small blue
    everything = tuple(range(prep.clean["embed"].shape[1]))
    rows = [None, (EMBED, ()), (EMBED, (3,))] + [(layer, everything) for layer in range(len(enc.layers))]
    outs = traced_outputs(toy, enc, mods, PROMPT, prep, rows, seed=0, steps=STEPS)
    plain = toy.generate([PROMPT], seed=0, steps=STEPS)[0]
    np.testing.assert_allclose(outs[0], plain, atol=1e-5)  # the clean row is the model's own output
    assert np.abs(outs[1] - outs[0]).max() > 0.05  # the noise on "blue" changes the output
    for out in outs[2:]:  # the only corrupted input put back, or a whole layer restored: all recovered
        np.testing.assert_allclose(out, outs[0], atol=1e-5)


def test_a_planted_encoder_recovers_only_at_its_layer(one_thread):
    """All self-attentions but layer ``keep``'s cut (output projection weights zeroed): restoring any
    other layer's attention output changes nothing, and restoring ``keep``'s at the corrupted token does."""
    for keep in (0, 1):
        model = multiloc.load("toy-shapes")
        enc = find_encoder(model)
        with torch.no_grad():
            for layer in range(len(enc.layers)):
                if layer != keep:
                    enc.out_proj(layer)[0].weight.zero_()
        mods = parts(enc, "attn")
        prep = prepare(model, enc, mods, PROMPT, ["blue"], seed=0)
        rows = [(EMBED, ())] + [(layer, (t,)) for layer in range(len(enc.layers)) for t in range(3, 6)]
        outs = traced_outputs(model, enc, mods, PROMPT, prep, rows, seed=0, steps=STEPS)
        moved = [float(np.abs(o - outs[0]).max()) for o in outs[1:]]
        for (layer, _), d in zip(rows[1:], moved):
            assert (d > 1e-3) if layer == keep else (d < 1e-6), (keep, layer, d)


def test_trace_command_writes_the_map(toy, tmp_path, one_thread, capsys):
    out = tmp_path / "trace"
    assert main(["trace", "--model", "toy-shapes", "--concept", "toy-colour", "--steps", str(STEPS),
                 "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "trace.json").read_text())
    assert {"encoder", "component", "layers", "tokens", "effect", "ci"} <= set(data)
    assert data["encoder"] == "text_encoder" and data["layers"] == ["embed", "layer 0", "layer 1"]
    eff = np.array(data["effect"])
    assert eff.shape == (3, len(data["tokens"])) == np.array(data["ci"]).shape[:2]
    assert data["concept_positions"] == [3]
    assert eff[0, 3] == pytest.approx(1.0, abs=1e-6)  # the corrupted token restored where it enters
    assert np.abs(np.delete(eff[0], 3)).max() < 1e-9  # restoring an uncorrupted input changes nothing
    assert (out / "trace.png").stat().st_size > 1000 and not (out / ".scan-state.json").exists()
    assert "wrote" in capsys.readouterr().out
    assert main(["trace", "--model", "toy-shapes", "--concept", "toy-colour", "--encoder", "text_encoder_2",
                 "--out", str(out)]) == 2
    assert "has no text encoder 'text_encoder_2'" in capsys.readouterr().err


def test_diff_quickfix_edits_the_encoder_and_undoes_exactly(toy, tmp_path, one_thread, capsys):
    templates = ["a small {} circle", "a large {} square", "a large {} triangle"]
    wf = multiloc.rewrite(toy, ["red => blue"], preserve=["green", "yellow", "cyan", "magenta"],
                          sites="text_encoder:0", lam=0.01, templates=templates, progress=False)
    key = "text_encoder.encoder.layers.0.self_attn.out_proj.weight"
    assert list(wf.tensors) == [key] and wf.sites == ["text_encoder:0"]
    res = wf.details["residual"]
    assert res["after"] < 0.5 * res["before"] and res["preserve_drift"] < 0.1
    prompts = [t.format("red") for t in templates] + ["a small red triangle"]  # the last one unseen
    before = {k: v.clone() for k, v in toy.pipe.text_encoder.state_dict().items()}
    plain = toy.generate(prompts, seed=0, steps=4)
    with toy.applied(wf):  # applying clears the conditioning cache: the edited encoder is read
        edited = toy.generate(prompts, seed=0, steps=4)
    assert blue_share(toy, plain) < 0.1 and blue_share(toy, edited) > 0.4
    assert all(torch.equal(v, toy.pipe.text_encoder.state_dict()[k]) for k, v in before.items())
    np.testing.assert_array_equal(np.stack(toy.generate(prompts, seed=0, steps=4)), np.stack(plain))
    path = tmp_path / "fix.safetensors"
    assert main(["rewrite", "--model", "toy-shapes", "--edit", "red => blue", "--sites", "text_encoder:0",
                 "--save", str(path), "--quiet"]) == 0 and path.exists()
    assert main(["rewrite", "--model", "toy-shapes", "--edit", "red => blue", "--sites", "text_encoder_3:0",
                 "--save", str(path)]) == 2
    assert "no text encoder 'text_encoder_3'" in capsys.readouterr().err


@pytest.mark.parametrize("name,expected", [
    ("tiny-sdxl", ["text_encoder", "text_encoder_2"]),
    ("tiny-sd3", ["text_encoder", "text_encoder_2", "text_encoder_3"]),
    ("tiny-flux", ["text_encoder", "text_encoder_2"]),
    ("tiny-audioldm2", ["text_encoder.text_model", "text_encoder_2"]),
    ("tiny-sana", ["text_encoder"]),
])
def test_every_declared_encoder_is_found_and_traced(name, expected, one_thread):
    """Each encoder's layers and parts are found by transformers' names, and restoring a whole layer in
    the corrupted encoder gives back the clean conditioning (the encoder really runs, cache bypassed)."""
    model = multiloc.load(name)
    assert encoder_names(model) == expected
    prompt = "a photo of a red car"
    for enc_name in expected:
        enc = find_encoder(model, enc_name)
        for component in ("attn", "mlp"):
            assert len(parts(enc, component)) == len(enc.layers) >= 1
        assert enc.out_proj(0)[1].endswith(".weight")
        mods = parts(enc, "block")
        prep = prepare(model, enc, mods, prompt, ["red"], seed=0)
        everything = tuple(range(prep.clean["embed"].shape[1]))
        with capture_encoder(enc.layers[0], mods) as seen:  # only the first call: the clean prompt
            clean = run_encoders(model, [prompt])
        with corrupt_restore(enc.layers[0], mods, prep.clean, [(EMBED, ()), (0, everything)], prep.noise,
                             prep.positions):
            got = run_encoders(model, [prompt, prompt])
        assert torch.equal(seen[0], prep.clean[0])
        keys = [k for k, v in clean.items() if torch.is_tensor(v) and not k.startswith("negative")]
        assert max(float((got[k][0] - clean[k][0]).abs().max()) for k in keys) > 1e-4  # the noise got through
        for k in keys:  # the first layer restored everywhere: the clean conditioning again
            torch.testing.assert_close(got[k][1], clean[k][0], atol=1e-5, rtol=1e-4)
