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


def require_tesseract() -> None:
    """Skip where Tesseract is missing on a developer's machine; in CI (CI=true) fail loudly instead."""
    import shutil

    if shutil.which("tesseract") or os.environ.get("TESSERACT_CMD"):
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("Tesseract is not installed on this CI machine; the set-up (make setup) installs "
                    "tesseract-ocr, so the OCR tests must run here")
    pytest.skip("Tesseract is not installed (apt-get install tesseract-ocr); CI runs these tests")


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
