"""Sites: real architecture configs (offline, meta device) and execution order."""

from __future__ import annotations

import pytest

import multiloc
from multiloc.hooks import hooks
from multiloc.offline import offline_sites
from multiloc.sites import select_sites


def test_sd15_has_16_sites():
    name, sites, total = offline_sites("sd15")
    assert len(sites) == 16
    assert total == 859_520_964
    assert {s.kind for s in sites} == {"cross_attn"}


def test_sdxl_has_70_sites_and_the_papers_three_hold_061_percent():
    _, sites, total = offline_sites("sdxl")
    assert len(sites) == 70
    assert total == 2_567_463_684
    paper = [f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3)]
    by_name = {s.name: s for s in sites}
    assert [by_name[n].index for n in paper] == [55, 56, 57]
    kv = sum(by_name[n].params["kv"] for n in paper)
    assert kv == 3 * 5_242_880
    assert round(100 * kv / total, 2) == 0.61


def test_deepfloyd_if_has_22_sites_reading_text_through_added_kv():
    _, sites, total = offline_sites("deepfloyd-if")
    assert len(sites) == 22
    assert all(t.path in ("add_k_proj", "add_v_proj") for s in sites for t in s.taps)
    assert total == 4_304_695_110
    # FACTS.md: the paper's 0.21% for index 17 matches neither the text-side add_k/add_v (0.276%) ...
    assert round(100 * sites[17].params["kv"] / total, 3) == 0.276
    assert sites[9].name == "mid_block.attentions.0"  # the mid block runs between down and up blocks


def test_sd21_has_16_sites():
    _, sites, _ = offline_sites("sd21")
    assert len(sites) == 16


def test_site_order_is_execution_order(tiny_image):
    """The order `sites` reports is the order forward hooks fire in a real generation."""
    fired: list[str] = []
    den = tiny_image.denoiser
    recorders = [(den.get_submodule(s.name), lambda m, a, o, n=s.name: fired.append(n)) for s in tiny_image.sites]
    with hooks(forward=recorders):
        tiny_image.generate(["x"], steps=1, guidance=1.0)
    assert fired == [s.name for s in tiny_image.sites]
    assert [s.index for s in tiny_image.sites] == list(range(len(tiny_image.sites)))


def test_select_sites_by_index_and_pattern(tiny_sd):
    sites = tiny_sd.sites
    assert [s.index for s in select_sites(sites, "0-2,5")] == [0, 1, 2, 5]
    assert [s.name for s in select_sites(sites, "up_blocks.1.*")] == [s.name for s in sites if s.name.startswith("up_blocks.1.")]
    assert select_sites(sites, None) == sites
    with pytest.raises(multiloc.UserError, match="no site matches"):
        select_sites(sites, "nothing.*")


def test_site_json_form(tiny_sd):
    d = tiny_sd.sites[0].to_dict(total_params=tiny_sd.total_params)
    assert set(d) >= {"index", "name", "kind", "stream", "params", "fraction"}
    assert set(d["params"]) == {"kv", "qkvo"}
    assert 0 < d["fraction"]["kv"] < d["fraction"]["qkvo"] < 1
