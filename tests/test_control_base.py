"""The control package's shared pieces: site targets, weight files, plain generation (`multiloc generate`)."""

from __future__ import annotations

import json

import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.control import resolve_sites
from multiloc.control import weights as W


def _edit(model: multiloc.Model, scale: float = 3.0) -> W.WeightFile:
    site = model.sites[0]
    key = f"unet.{site.name}.to_k.weight"
    return W.make_weights(model, {key: W.parameter(model, key) * scale}, kind="rewrite", sites=[site.name],
                          details={"lam": 0.1})


def test_resolve_sites_spec_result_and_published(tiny_sd, tmp_path):
    toy = multiloc.load("toy-shapes")
    assert [s.index for s in resolve_sites(toy, concept="toy-shape")] == [0, 1, 7, 8]
    assert [s.index for s in resolve_sites(toy, "14")] == [14]
    with pytest.raises(multiloc.UserError, match="choose one with --concept"):
        resolve_sites(toy)
    with pytest.raises(multiloc.UserError, match="no published localized sites; scan first"):
        resolve_sites(tiny_sd)
    names = [tiny_sd.sites[3].name, tiny_sd.sites[1].name]
    (tmp_path / "result.json").write_text(json.dumps({"selected": names}))
    for spec in (tmp_path, tmp_path / "result.json"):
        assert [s.index for s in resolve_sites(tiny_sd, spec)] == [1, 3]  # execution order
    (tmp_path / "result.json").write_text(json.dumps({"selected": ["nope.attn2"]}))
    with pytest.raises(multiloc.UserError, match="does not have"):
        resolve_sites(tiny_sd, tmp_path)


def test_weight_file_round_trip_and_exact_revert(tiny_sd, tmp_path):
    edit = _edit(tiny_sd)
    path = W.save_weights(tmp_path / "e.safetensors", edit)
    back = W.read_weights(path)
    assert back.kind == "rewrite" and back.model == "tiny-sd" and back.sites == edit.sites
    assert back.details == {"lam": 0.1}
    (key, value), = back.tensors.items()
    assert torch.equal(value, edit.tensors[key])
    before = {k: v.clone() for k, v in tiny_sd.denoiser.state_dict().items()}
    base = tiny_sd.generate(["a red cube"], seed=0, steps=2)[0]
    with tiny_sd.applied(path):
        assert torch.equal(W.parameter(tiny_sd, key), value)
        edited = tiny_sd.generate(["a red cube"], seed=0, steps=2)[0]
    assert abs(edited - base).max() > 1e-4  # the edit did something
    after = tiny_sd.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # and is undone bit for bit
    with pytest.raises(RuntimeError), tiny_sd.applied(path):
        raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in tiny_sd.denoiser.state_dict().items())


def test_weight_file_refused_for_other_models(tiny_sd, tmp_path):
    path = W.save_weights(tmp_path / "e.safetensors", _edit(tiny_sd))
    with pytest.raises(multiloc.UserError, match="does not have"):
        W.check_weights(multiloc.load("tiny-sdxl"), W.read_weights(path))  # same family, other layout
    with pytest.raises(multiloc.UserError, match="the unet family"):
        W.check_weights(multiloc.load("tiny-pixart"), W.read_weights(path))
    other = multiloc.load("tiny-sd")
    with torch.no_grad():
        W.parameter(other, next(iter(W.read_weights(path).tensors))).mul_(2)  # same shapes, other weights
    with pytest.raises(multiloc.UserError, match="differ"):
        W.check_weights(other, W.read_weights(path))


@pytest.mark.parametrize("content, message", [(b"hello", "not a safetensors file"), (None, "does not exist")])
def test_generate_cli_bad_weight_files(tmp_path, capsys, content, message):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    code = main(["generate", "--model", "tiny-sd", "--prompt", "a", "--weights", str(path), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_generate_cli_applies_weights(tiny_sd, tmp_path, capsys):
    path = W.save_weights(tmp_path / "e.safetensors", _edit(tiny_sd))
    common = ["generate", "--model", "tiny-sd", "--prompt", "a red cube", "--prompt", "a cat", "--steps", "2",
              "--seeds", "2", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--weights", str(path), "--out", str(tmp_path / "edited")]) == 0
    record = json.loads((tmp_path / "edited" / "generate.json").read_text())
    assert record["seeds"] == [0, 1] and len(record["files"]) == 4
    assert record["modifiers"] == [{"weights": [str(path)]}]
    plain = (tmp_path / "plain" / record["files"][0]).read_bytes()
    assert plain != (tmp_path / "edited" / record["files"][0]).read_bytes()
    # the same as the Python API under the same seed
    outs = multiloc.control.generate(tiny_sd, ["a red cube", "a cat"], seeds=[0, 1], steps=2)
    import numpy as np
    from PIL import Image
    img = np.asarray(Image.open(tmp_path / "plain" / record["files"][3]), dtype=np.float32) / 255
    assert abs(img - outs[1][1]).max() <= 1 / 255 + 1e-6
