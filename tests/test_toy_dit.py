"""The built-in toy DiT (toy-shapes-dit): the shapes world drawn by a stock PixArtAlphaPipeline (trained
VAE, PixArt transformer, T5 encoder) through the `pixart` adapter; its weights, its training, and the
claim it exists for: a scan finds a set of sites that is sufficient and specific."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import multiloc
from multiloc.build import build_pipeline, load_weights, package_file
from multiloc.toy import shapes
from multiloc.toy.train import _spec
from multiloc.toy.train_dit import _images, normalize_latents


@pytest.fixture(scope="module")
def toy() -> multiloc.Model:
    return multiloc.load("toy-shapes-dit")


def test_loads_through_the_pixart_adapter(toy):
    assert type(toy.pipe).__name__ == "PixArtAlphaPipeline" and toy.adapter.name == "pixart"
    assert [s.name for s in toy.sites] == [f"transformer_blocks.{i}.attn2" for i in range(8)]
    # No BOS: the caption's tokens start at 0; PixArt's encode_prompt pads to max_sequence_length (8).
    assert toy.adapter.token_positions(toy.pipe, "a small red circle", ["red"]) == [2]
    cond = toy.adapter.encode(toy.pipe, ["a small red circle", ""], torch.device("cpu"), toy.settings)
    assert cond["prompt_embeds"].shape == (2, 8, 32)
    assert cond["prompt_attention_mask"].sum(1).tolist() == [5, 1]  # 4 words + <eos>; <eos>


def test_shipped_weights_load_strictly(tmp_path, toy):
    tensors = load_file(str(package_file("toy/toy-shapes-dit.safetensors")))
    assert {k.split(".")[0] for k in tensors} == {"transformer", "vae", "text_encoder"}
    assert torch.equal(toy.pipe.transformer.pos_embed.proj.weight, tensors["transformer.pos_embed.proj.weight"])
    assert torch.equal(toy.pipe.vae.post_quant_conv.weight, tensors["vae.post_quant_conv.weight"])
    del tensors["vae.post_quant_conv.weight"]
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(multiloc.UserError, match="does not fit the vae"):
        load_weights({"vae": toy.pipe.vae}, tmp_path / "bad.safetensors")


def test_held_out_prompts_come_out_right(toy, one_thread):
    """Prompts the transformer never saw in training come out in the named colour and shape."""
    combos = shapes.combos("held-out")
    imgs = toy.generate([shapes.prompt(*t) for t in combos], seed=0)
    for (colour, shape, _), img in zip(combos, imgs):
        assert img.shape == (16, 16, 3)
        assert shapes.best_colour(img) == colour and shapes.best_shape(img) == shape
    report = json.loads(package_file("toy/toy-shapes-dit.json").read_text())
    assert report["accuracy"]["held-out"]["both"] >= 0.9
    assert report["vae_reconstruction"] == {"train": 1.0, "held-out": 1.0}


def test_the_stock_pipeline_draws_it(toy, one_thread):
    """No multiloc in the loop: the diffusers pipeline's own call, from a prompt string."""
    out = toy.pipe("a large cyan square", num_inference_steps=10, guidance_scale=1.0, height=16, width=16,
                   generator=torch.Generator().manual_seed(0), output_type="np", clean_caption=False,
                   use_resolution_binning=False, max_sequence_length=8)
    img = out.images[0]
    assert shapes.best_colour(img) == "cyan" and shapes.best_shape(img) == "square"


def test_shipped_vae_latents_are_normalized(toy):
    with torch.no_grad():
        z = toy.pipe.vae.encode(_images("train")).latent_dist.mean
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_normalize_latents_keeps_reconstructions():
    spec = _spec("toy-shapes-dit")
    vae = build_pipeline(spec, seed=1).vae  # random weights: the fold is exact for any VAE
    images = _images("train")
    with torch.no_grad():
        before = vae.decode(vae.encode(images).latent_dist.mean).sample
        normalize_latents(vae, images)
        z = vae.encode(images).latent_dist.mean
        after = vae.decode(z).sample
    assert (after - before).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_training_is_reproducible(tmp_path):
    from multiloc.toy.train import TRAINERS

    for run in ("a", "b"):
        TRAINERS["toy-shapes-dit"](tmp_path / run, steps=3, evaluate=False, log=lambda _: None)
    a, b = (load_file(str(tmp_path / r / "toy-shapes-dit.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shipped = load_file(str(package_file("toy/toy-shapes-dit.safetensors")))
    assert a.keys() == shipped.keys()  # the training writes exactly the tensors the registry loads
    assert not torch.equal(a["transformer.proj_out.weight"], shipped["transformer.proj_out.weight"])
    recipe = json.loads((tmp_path / "a" / "toy-shapes-dit.json").read_text())["recipe"]
    assert recipe["steps"] == 3 and recipe["vae_steps"] == 3


def test_scan_finds_a_sufficient_and_specific_set(toy, one_thread, tmp_path):
    """The claim on the shipped weights (the demo's call): the greedy colour set moves >= 80% of the
    colour, nothing moves without it, and random sets of as many sites move far less."""
    result = multiloc.scan(toy, "toy-colour", seeds=1, batch_size=len(toy.sites) + 2, search="greedy",
                           control=10, out=tmp_path, progress=False)
    found = result.extra["set_search"]
    assert found["joint_effect"] >= 0.8 and found["necessity"] >= 0.8
    assert set(found["sites"]) == {"transformer_blocks.0.attn2", "transformer_blocks.1.attn2"}
    assert found["random_sets"]["mean"] <= 0.3 and len(found["random_sets"]["sets"]) == 10
    shape = multiloc.scan(toy, "toy-shape", seeds=1, batch_size=len(toy.sites) + 2, search="greedy",
                          progress=False)
    assert shape.ranking[0] == "transformer_blocks.1.attn2"
    assert shape.extra["set_search"]["joint_effect"] >= 0.8
