"""Shared fixtures: tiny real pipelines (built from config, random weights) and site planting."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub

import multiloc  # noqa: E402
from multiloc.scorers.reference import ReferenceScorer  # noqa: E402

TINY_IMAGE = ("tiny-sd", "tiny-sdxl", "tiny-if")


def plant(model: multiloc.Model, keep: set[str]) -> None:
    """Make every site but ``keep`` ignore the prompt, and cut the prompt's other paths.

    A site ignores the prompt when the projections reading it (its ``kv`` taps) have zero weights: the
    keys and values of the text are then constants (their biases), whatever the prompt. The prompt's
    other paths into the denoiser (SDXL's pooled text embedding, IF's text-time embedding, the pooled
    embedding of SD3 / FLUX unless it is kept as a site) are cut the same way, so only the kept sites
    can carry it.

    Joint-attention models: the text stream still evolves through every block (and keeps the prompt
    in its residual), but zeroed ``add_k_proj``/``add_v_proj`` mean the image reads only constants
    from it. A FLUX single-stream site cannot be silenced that way (its ``to_k``/``to_v`` serve the
    image tokens too), so its block's attention output is cut instead (the attention half of
    ``proj_out``): the block then mixes no tokens at all and reads nothing from the text.
    """
    den = model.denoiser
    with torch.no_grad():
        for site in model.sites:
            if site.name in keep:
                continue
            module = den.get_submodule(site.name)
            if site.kind == "single_stream":
                block = den.get_submodule(site.name.rsplit(".", 1)[0])
                block.proj_out.weight[:, :block.proj_mlp.in_features].zero_()
                continue
            for tap in site.taps:
                if tap.kwarg is None:
                    for m in module.get_submodule(tap.path).modules():
                        if isinstance(m, torch.nn.Linear):
                            m.weight.zero_()
        extra = [getattr(den, "add_embedding", None)]
        tte = getattr(den, "time_text_embed", None)
        if tte is not None and "time_text_embed.text_embedder" not in keep:
            extra.append(tte.text_embedder)
        for e in extra:
            for m in (e.modules() if e is not None else ()):
                if isinstance(m, torch.nn.Linear):
                    m.weight.zero_()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch thread, as the demo does: toy-sized tensors run faster on one
    thread (and far faster on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def require_tesseract() -> None:
    """Skip where Tesseract is missing on a developer's machine; in CI (CI=true) fail loudly instead."""
    import shutil

    if shutil.which("tesseract") or os.environ.get("TESSERACT_CMD"):
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("Tesseract is not installed on this CI machine; the set-up (make setup) installs "
                    "tesseract-ocr, so the OCR tests must run here")
    pytest.skip("Tesseract is not installed (apt-get install tesseract-ocr); CI runs these tests")


def require_chromium() -> str:
    """The headless browser the report tests render with (Debian's ``chromium``, installed by make setup);
    missing: skip on a developer's machine, fail in CI (CI=true)."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("Chromium is not installed on this CI machine; the set-up (make setup) installs "
                    "chromium, so the report tests must run here")
    pytest.skip("Chromium is not installed (apt-get install chromium); CI runs these tests")


@pytest.fixture(scope="session")
def ocr_scorer():
    require_tesseract()
    return multiloc.get_scorer("ocr")


def render_word(word: str, size: tuple[int, int] = (160, 64), font_size: int = 28):
    """A word in black on white, as an HxWx3 float array in [0, 1] (the form image models return).

    PIL's built-in scalable font (Pillow >= 10.1) needs no font files on the machine.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((size[0] // 2, size[1] // 2), word, fill="black",
                             font=ImageFont.load_default(size=font_size), anchor="mm")
    return np.asarray(img, dtype=np.float32) / 255


class Exploding(ReferenceScorer):
    """Raises on its n-th call: a scan that dies midway."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def score(self, outputs, targets):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return super().score(outputs, targets)
