"""Diffusion-transformer families (SD3, FLUX, PixArt, SANA): real configs offline, planted sites,
batching, masks of different-length prompts, head-level patching, the pooled-embedding site."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import multiloc
from multiloc.interventions import Patch, apply_patch
from multiloc.offline import offline_sites

from .conftest import plant

TINY_DIT = ("tiny-sd3", "tiny-flux", "tiny-pixart", "tiny-sana")


@pytest.fixture
def uneven() -> multiloc.Concept:
    """Donor and base differ in length (in both directions): masks differ, not only embeddings."""
    return multiloc.Concept(name="colour", scorer="reference",
                            pairs=[("a red cube", "a blue cube, big"), ("a green ball here", "a yellow ball")])


# --- real architecture configs, offline ---------------------------------------------------------
def test_sd3_medium_sites_and_block_10_fraction():
    name, sites, total = offline_sites("sd3-medium")
    assert len(sites) == 24 and total == 2_028_328_000
    assert [s.name for s in sites] == [f"transformer_blocks.{i}.attn" for i in range(24)]
    block10 = sites[10]
    assert block10.params["kv"] == 4_721_664  # add_k_proj + add_v_proj, weights and biases
    assert round(100 * block10.params["kv"] / total, 2) == 0.23
    assert block10.heads == 24
    # the last block is context_pre_only: still a site, with the same text-side K/V
    assert sites[-1].params["kv"] == 4_721_664 and [t.path for t in sites[-1].taps] == ["add_k_proj", "add_v_proj"]


def test_flux_dev_double_and_single_sites():
    _, sites, total = offline_sites("flux-dev")
    kinds = [s.kind for s in sites]
    assert kinds == ["joint_attn"] * 19 + ["single_stream"] * 38
    assert total == 11_901_408_320
    single = sites[19]
    assert single.name == "single_transformer_blocks.0.attn"
    assert {t.tokens for t in single.taps} == {(0, 512)}  # the text: the first 512 tokens
    assert all(t.tokens is None for t in sites[0].taps)
    # schnell runs with 256 text tokens: its single-stream sites follow the setting
    _, schnell, _ = offline_sites("flux-schnell")
    assert {t.tokens for t in schnell[19].taps} == {(0, 256)}


@pytest.mark.parametrize("name, n_sites", [("pixart-alpha", 28), ("pixart-sigma", 28), ("sana", 20),
                                           ("sd3.5-medium", 24), ("sd3.5-large", 38), ("flux-schnell", 57)])
def test_other_real_configs(name, n_sites):
    _, sites, _ = offline_sites(name)
    assert len(sites) == n_sites
    if name.startswith(("pixart", "sana")):
        assert all(s.kind == "cross_attn" and s.name.endswith(".attn2") for s in sites)
        assert all(any(t.mask for t in s.taps) for s in sites)  # the mask travels with the donor


def test_pooled_site_is_opt_in():
    _, sites, _ = offline_sites("sd3-medium", {"pooled_site": True})
    assert len(sites) == 25
    assert (sites[0].name, sites[0].kind) == ("time_text_embed.text_embedder", "pooled")


# --- planted sites ------------------------------------------------------------------------------
PLANTS = [
    ("tiny-sd3", "transformer_blocks.1.attn"),
    ("tiny-sd3", "transformer_blocks.3.attn"),          # the last, context_pre_only block
    ("tiny-flux", "transformer_blocks.1.attn"),         # double-stream
    ("tiny-flux", "single_transformer_blocks.1.attn"),  # single-stream: text positions only
    ("tiny-pixart", "transformer_blocks.1.attn2"),
    ("tiny-sana", "transformer_blocks.1.attn2"),
]


@pytest.mark.parametrize("name, planted", PLANTS)
def test_planted_site_ranks_first(name, planted, uneven):
    model = multiloc.load(name)
    plant(model, {planted})
    result = multiloc.scan(model, uneven, seeds=1, steps=3, batch_size=4, progress=False)
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e) for n, e in result.effects.items() if n != planted) < 1e-4
    assert result.selected == [planted]


@pytest.mark.parametrize("name", ["tiny-pixart", "tiny-sana"])
def test_mask_travels_with_the_donor(name, uneven):
    """Without the mask tap the base's mask hides (or shows) tokens: the planted site moves less than
    all of the concept, so the effect misses 1. With it (test above) the effect is 1."""
    model = multiloc.load(name)
    planted = "transformer_blocks.1.attn2"
    plant(model, {planted})
    no_mask = [dataclasses.replace(s, taps=tuple(t for t in s.taps if not t.mask)) for s in model.sites]
    model.__dict__["sites"] = no_mask
    result = multiloc.scan(model, uneven, seeds=1, steps=3, batch_size=5, progress=False)
    assert abs(result.effects[planted] - 1.0) > 0.02  # measured: 0.87 (PixArt), 0.90 (SANA)


@pytest.mark.parametrize("name", TINY_DIT)
def test_batched_equals_sequential(name, uneven):
    model = multiloc.load(name)
    batched = multiloc.scan(model, uneven, seeds=1, steps=2, batch_size=len(model.sites) + 2, progress=False)
    sequential = multiloc.scan(model, uneven, seeds=1, steps=2, batch_size=2, progress=False)
    for site, effect in batched.effects.items():
        assert effect == pytest.approx(sequential.effects[site], abs=1e-5)
    assert np.ptp(list(batched.effects.values())) > 1e-4  # not trivially equal


def test_pooled_site_recovered(uneven):
    model = multiloc.load("tiny-flux", settings={"pooled_site": True})
    pooled = "time_text_embed.text_embedder"
    plant(model, {pooled})
    result = multiloc.scan(model, uneven, seeds=1, steps=3, batch_size=8, progress=False)
    assert result.ranking[0] == pooled
    assert result.effects[pooled] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e) for n, e in result.effects.items() if n != pooled) < 1e-4


# --- head-level patching ------------------------------------------------------------------------
def test_apply_patch_touches_only_the_chosen_heads_and_tokens():
    out = torch.randn(2 * 3, 5, 4 * 2)  # CFG copies x 3 rows, 5 tokens, 4 heads of width 2
    patched = apply_patch(Patch("s", rows=(2,), source=0, heads=(1, 3)), "to_k", out, 3, (0, 2), n_heads=4)
    view, before = patched.view(2, 3, 5, 4, 2), out.view(2, 3, 5, 4, 2)
    assert torch.equal(view[:, 2, :2, [1, 3]], before[:, 0, :2, [1, 3]])   # donor's heads 1, 3, tokens 0-1
    assert torch.equal(view[:, 2, :2, [0, 2]], before[:, 2, :2, [0, 2]])   # other heads untouched
    assert torch.equal(view[:, 2, 2:], before[:, 2, 2:])                   # other tokens untouched
    assert torch.equal(view[:, :2], before[:, :2])                         # other rows untouched
    every = apply_patch(Patch("s", rows=(2,), source=0, heads=(0, 1, 2, 3)), "to_k", out, 3, None, n_heads=4)
    assert torch.equal(every, apply_patch(Patch("s", rows=(2,), source=0), "to_k", out, 3, None))


def test_mask_tap_follows_inject_only():
    mask = torch.zeros(4, 1, 6)
    mask[0, :, 3:] = -10000.0  # row 0's prompt is shorter
    assert torch.equal(apply_patch(Patch("s", rows=(1,), kind="ablate"), "", mask, 2, None, mask=True), mask)
    moved = apply_patch(Patch("s", rows=(1,), source=0, heads=(0,)), "", mask, 2, None, n_heads=2, mask=True)
    assert torch.equal(moved[1], mask[0]) and torch.equal(moved[3], mask[2])  # both CFG copies, all heads


def test_planted_head_ranks_first(uneven):
    """Only head 1 of block 2 reads the text: scanning each head of every block finds it."""
    model = multiloc.load("tiny-sd3")
    site = model.sites[2]
    plant(model, {site.name})
    attn = model.denoiser.get_submodule(site.name)
    width = attn.add_k_proj.out_features // site.heads
    with torch.no_grad():
        for proj in (attn.add_k_proj, attn.add_v_proj):
            proj.weight[:width].zero_()  # head 0 of the kept site ignores the prompt too
    result = multiloc.scan(model, uneven, seeds=1, steps=3, batch_size=10, heads="each", progress=False)
    assert len(result.sites) == sum(s.heads for s in model.sites)
    assert result.ranking[0] == f"{site.name}#h1"
    assert result.effects[f"{site.name}#h1"] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e) for n, e in result.effects.items() if n != f"{site.name}#h1") < 1e-4


def test_bad_heads(uneven):
    model = multiloc.load("tiny-sd3")
    with pytest.raises(multiloc.UserError, match="head 7 does not exist"):
        multiloc.scan(model, uneven, heads=[7], progress=False)
    with pytest.raises(ValueError, match="not heads of"):
        model.generate(["a", "b"], [Patch(model.sites[0].name, rows=(1,), source=0, heads=(5,))], steps=1)


def test_flux_single_stream_patch_covers_exactly_the_text():
    """The tap output of a single-stream site, as the next module sees it: the patched row has the
    donor's text positions (the first max_sequence_length tokens) and its own image positions."""
    from multiloc.hooks import capture, intervene

    model = multiloc.load("tiny-flux")
    site = next(s for s in model.sites if s.kind == "single_stream")
    length = model.settings["max_sequence_length"]
    prompts = ["a blue cube, big", "a red cube", "a red cube"]
    cond = model.encode(prompts)
    plan = [Patch(site.name, rows=(2,), source=0)]
    with intervene(model.denoiser, model.sites, plan, 3), capture(model.denoiser, [site]) as store:
        model.adapter.generate(model.pipe, cond, seed=0, steps=1, guidance=3.5, settings=model.settings)
    k = store[(site.name, "to_k")][0]  # first call: rows 1 and 2 share every input up to this block
    assert k.shape[1] > length
    assert torch.equal(k[2, :length], k[0, :length]) and not torch.allclose(k[1, :length], k[0, :length])
    assert torch.equal(k[2, length:], k[1, length:])


def test_cli_pooled_and_heads_errors(capsys):
    from multiloc.cli import main

    assert main(["sites", "--model", "tiny-sd", "--pooled"]) == 2
    assert "no pooled-embedding site" in capsys.readouterr().err
    assert main(["sites", "--model", "tiny-flux", "--pooled", "--json"]) == 0
    assert '"kind": "pooled"' in capsys.readouterr().out
    assert main(["scan", "--model", "tiny-sd3", "--concept", "colour", "--heads", "one"]) == 2
    assert "--heads must be" in capsys.readouterr().err
