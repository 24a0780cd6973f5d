"""Loading: registry names, pipeline objects, local directories, hub ids without a network."""

from __future__ import annotations

import time

import numpy as np
import pytest

import multiloc
from multiloc.build import build_pipeline
from multiloc.registry import model_spec


def test_load_pipeline_object_picks_adapter_by_denoiser_class():
    pipe = build_pipeline(model_spec("tiny-sdxl")["build"])
    model = multiloc.load(pipe)
    assert model.adapter.name == "unet"
    assert len(model.sites) == 8


def test_load_local_directory_round_trip(tmp_path, tiny_sd):
    tiny_sd.pipe.save_pretrained(tmp_path / "pipe")
    loaded = multiloc.load(tmp_path / "pipe", settings={"steps": 2, "height": 16, "width": 16})
    assert [s.name for s in loaded.sites] == [s.name for s in tiny_sd.sites]
    a = tiny_sd.generate(["a red cube"], steps=2)[0]
    b = loaded.generate(["a red cube"], steps=2)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_unknown_object_is_a_user_error():
    with pytest.raises(multiloc.UserError, match="no adapter handles"):
        multiloc.load(object())


def test_unknown_name_lists_known():
    with pytest.raises(multiloc.UserError, match="unknown model 'nope'.*sdxl"):
        multiloc.load("nope")


def test_hub_id_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a real connection failure
    start = time.monotonic()
    with pytest.raises(multiloc.UserError, match="cannot fetch 'someone/missing-model'.*local directory"):
        multiloc.load("someone/missing-model")
    assert time.monotonic() - start < 30
