"""Shared fixtures: tiny real pipelines (built from config, random weights) and site planting."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub

import multiloc  # noqa: E402

TINY_IMAGE = ("tiny-sd", "tiny-sdxl", "tiny-if")


def plant(model: multiloc.Model, keep: set[str]) -> None:
    """Make every site but ``keep`` ignore the prompt, and cut the prompt's other paths.

    A site ignores the prompt when the projections reading it (its ``kv`` taps) have zero weights: the
    keys and values of the text are then constants (their biases), whatever the prompt. The prompt's
    other paths into the denoiser (SDXL's pooled text embedding, IF's text-time embedding) are cut
    the same way, so only the kept sites can carry it.
    """
    den = model.denoiser
    with torch.no_grad():
        for site in model.sites:
            if site.name not in keep:
                for tap in site.taps:
                    if tap.path.startswith("@"):  # an input tap (a mask) has no weights
                        continue
                    den.get_submodule(site.name).get_submodule(tap.path).weight.zero_()
        extra = getattr(den, "add_embedding", None)
        if extra is not None:
            for m in extra.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.zero_()


@pytest.fixture
def tiny_sd() -> multiloc.Model:
    return multiloc.load("tiny-sd")


@pytest.fixture(params=TINY_IMAGE)
def tiny_image(request: pytest.FixtureRequest) -> multiloc.Model:
    return multiloc.load(request.param)


@pytest.fixture
def colour() -> multiloc.Concept:
    return multiloc.Concept(name="colour", scorer="reference",
                            pairs=[("a red cube", "a blue cube"), ("a green ball", "a yellow ball")])


TINY_AUDIO = ("tiny-audioldm2", "tiny-stable-audio", "tiny-ace-step")


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CLAP model (real ``ClapModel`` class, random weights) and its processor, saved to a folder.

    Its feature extractor runs at 8 kHz, so scoring the 16 kHz clips of tiny-audioldm2 resamples them.
    """
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    from multiloc.build import roberta_char_tokenizer

    torch.manual_seed(0)
    config = ClapConfig(
        projection_dim=8,
        text_config=dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, projection_dim=8),
        audio_config=dict(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=32, depths=[1, 1],
                          num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=16, projection_dim=8,
                          patch_embeds_hidden_size=8, patch_size=2, patch_stride=2, patch_embed_input_channels=4))
    path = tmp_path_factory.mktemp("tiny-clap")
    ClapModel(config).eval().save_pretrained(path)
    extractor = ClapFeatureExtractor(feature_size=64, sampling_rate=8000, hop_length=160, max_length_s=1,
                                     fft_window_size=256)
    ClapProcessor(feature_extractor=extractor, tokenizer=roberta_char_tokenizer(77)).save_pretrained(path)
    return str(path)
