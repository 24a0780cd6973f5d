"""The cached donor (pure cross-attention families): the same scores as the in-batch donor, fewer rows."""

import numpy as np
import pytest

import multiloc

PURE = ("tiny-sd", "tiny-sdxl", "tiny-if", "tiny-pixart", "tiny-sana", "tiny-audioldm2", "tiny-stable-audio")
# Different prompt lengths: a captured donor must line up with base rows of another length.
CONCEPT = multiloc.Concept(name="colour", scorer="reference",
                           pairs=[("a red cube", "a blue cube"), ("a green ball on the grass", "a yellow ball")])
SCAN = {"seeds": 1, "steps": 2, "batch_size": 3, "progress": False, "samples": False}


def rows_generated(model: multiloc.Model, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the prompt rows of every sweep generation (the real one runs); a donor's capture (no plan,
    stopped after one denoiser call) is recorded as 0."""
    real, sizes = model.generate, []

    def spy(rows, *args, **kwargs):
        sizes.append(len(rows) if args else 0)
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return sizes


@pytest.mark.parametrize("name", PURE)
def test_cached_donor_equals_in_batch_donor(name, monkeypatch, one_thread):
    model = multiloc.load(name)
    sizes = rows_generated(model, monkeypatch)
    in_batch = multiloc.scan(model, CONCEPT, cached_donor=False, **SCAN)
    rows_in_batch, sizes[:] = sum(sizes), []
    cached = multiloc.scan(model, CONCEPT, **SCAN)
    assert (in_batch.config["donor"], cached.config["donor"]) == ("in-batch", "cached")
    for key in ("base", "donor", "patched"):
        np.testing.assert_allclose(cached.extra["samples"][key], in_batch.extra["samples"][key], rtol=1e-4, atol=1e-9)
    for site, effect in in_batch.effects.items():
        assert cached.effects[site] == pytest.approx(effect, abs=1e-5, nan_ok=True)
    # The donor only in the generation with the base: fewer rows; one capture per sample.
    assert sum(sizes) < rows_in_batch and sizes.count(0) == len(CONCEPT.pairs)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-ace-step"])
def test_joint_attention_and_batch_padded_families_keep_the_in_batch_donor(name):
    model = multiloc.load(name)
    result = multiloc.scan(model, CONCEPT, **{**SCAN, "steps": 1, "sites": "0"})
    assert result.config["donor"] == "in-batch"
