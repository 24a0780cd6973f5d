"""Audio families (AudioLDM2, Stable Audio Open, ACE-Step) on tiny real pipelines; CLAP, WAV, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile

import multiloc
from multiloc.cli import main
from multiloc.media import save_output

from .conftest import TINY_AUDIO, plant


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread: None) -> None:
    """Toy audio models gain nothing from intra-op threads; on a busy 2-core machine OpenMP workers spinning
    for each other made a tiny AudioLDM2 generation 25x slower (3.1 s vs 0.13 s measured here)."""


MUSIC = multiloc.Concept(name="piano", scorer="reference",
                         pairs=[("a violin solo, studio recording", "a piano solo, studio recording")])




def _load(name: str) -> multiloc.Model:
    return multiloc.load(name)


def test_audioldm2_sites_are_the_text_reading_transformers():
    model = _load("tiny-audioldm2")
    names = [s.name for s in model.sites]
    # Per position: attentions k*3 is self-attention only (not a site), k*3+1 the GPT-2 stream, k*3+2 T5.
    for s in model.sites:
        k = int(s.name.split(".attentions.")[1].split(".")[0])
        assert s.stream == ("gpt2" if k % 3 == 1 else "t5")
    assert Counter(s.stream for s in model.sites) == {"gpt2": 7, "t5": 7}
    assert not any(".attentions.0." in n or ".attentions.3." in n for n in names)
    # execution order: down, mid, up
    blocks = [n.split(".")[0] for n in names]
    assert blocks == sorted(blocks, key=["down_blocks", "mid_block", "up_blocks"].index)


@pytest.mark.parametrize("name, pick", [("tiny-audioldm2", "gpt2"), ("tiny-audioldm2", "t5"),
                                        ("tiny-stable-audio", None), ("tiny-ace-step", None)])
def test_planted_site_ranks_first(name, pick):
    model = _load(name)
    candidates = [s for s in model.sites if pick is None or s.stream == pick]
    planted = candidates[len(candidates) // 2].name
    plant(model, {planted})
    result = multiloc.scan(model, MUSIC, seeds=1, steps=2, batch_size=len(model.sites) + 2, progress=False)
    assert result.ranking[0] == planted
    assert result.effects[planted] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e) for n, e in result.effects.items() if n != planted) < 1e-4
    assert result.selected == [planted]


@pytest.mark.parametrize("name", TINY_AUDIO)
def test_batched_equals_sequential(name):
    """Every site patched in one batch gives the same clips as one generation per site.

    Compared on the waveforms (amplitude ~1): float round-off differs between batch shapes by ~1e-6, which
    the effect ratio can magnify when donor and base clips of a random tiny model lie close together.
    """
    model = _load(name)
    donor, base = MUSIC.pairs[0].donor, MUSIC.pairs[0].base
    n = len(model.sites)
    plan = [multiloc.Patch(s.name, rows=(i + 2,), source=0) for i, s in enumerate(model.sites)]
    batched = model.generate([donor, base] + [base] * n, plan, steps=2)
    for i, site in enumerate(model.sites):
        alone = model.generate([donor, base], [multiloc.Patch(site.name, rows=(1,), source=0)], steps=2)
        np.testing.assert_allclose(batched[i + 2], alone[1], atol=1e-5)
        np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(batched[1], model.generate([base], steps=2)[0], atol=1e-5)
    # and patching does something: the patched clips are not all the base clip
    assert max(float(np.abs(b - batched[1]).max()) for b in batched[2:]) > 1e-3


def test_stream_selects_one_streams_sites():
    model = _load("tiny-audioldm2")
    result = multiloc.scan(model, MUSIC, seeds=1, steps=1, stream="t5", progress=False, samples=False)
    assert [s.name for s in result.sites] == [s.name for s in model.sites if s.stream == "t5"]
    assert result.config["stream"] == "t5"
    with pytest.raises(multiloc.UserError, match="no site reads stream 'clip'"):
        multiloc.scan(model, MUSIC, steps=1, stream="clip", progress=False)


def test_wav_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mono = rng.uniform(-1, 1, 800).astype(np.float32)
    stereo = rng.uniform(-1, 1, (2, 800)).astype(np.float32)
    for label, clip in (("mono", mono), ("stereo", stereo)):
        path = save_output(tmp_path / label, clip, "audio", sample_rate=22050)
        assert path.name == f"{label}.wav"
        data, rate = soundfile.read(path, dtype="float32")
        assert rate == 22050
        np.testing.assert_array_equal(data.T if clip.ndim == 2 else data, clip)
    with pytest.raises(ValueError, match="sample rate"):
        save_output(tmp_path / "x", mono, "audio")


def test_clap_scorer(tiny_clap_dir):
    scorer = multiloc.get_scorer("clap", model=tiny_clap_dir)
    assert scorer.model_rate == 8000
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clips = [np.sin(2 * np.pi * 440 * t).astype(np.float32), rng.normal(0, 0.1, (2, 16000)).astype(np.float32)]
    audio = scorer.audio_embeddings(clips, 16000)
    text = scorer.text_embeddings(["Piano music", "Violin music", "Piano music"])
    assert audio.shape == (2, 8) and text.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(audio, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(text[0], text[2], atol=1e-6)
    scores = scorer.score(clips, ["Piano music", "Violin music"], sample_rate=16000)
    assert scores == pytest.approx([float(audio[0] @ text[0]), float(audio[1] @ text[1])], abs=1e-5)
    assert all(-1 <= s <= 1 for s in scores)
    # identical inputs score identically (also inside one batch)
    same = scorer.score([clips[0], clips[0]], ["Piano music"] * 2, sample_rate=16000)
    assert same[0] == pytest.approx(same[1], abs=1e-6) and same[0] == pytest.approx(scores[0], abs=1e-5)
    # resampling: a 16 kHz clip scores as the same clip resampled to the model's 8 kHz beforehand
    import librosa

    pre = librosa.resample(clips[0], orig_sr=16000, target_sr=8000)
    assert scorer.score([pre], ["Piano music"], sample_rate=8000)[0] == pytest.approx(scores[0], abs=1e-5)


def test_clap_laion_backend_without_package_is_a_user_error():
    try:
        import laion_clap  # noqa: F401
        pytest.skip("laion-clap is installed here")
    except ImportError:
        pass
    with pytest.raises(multiloc.UserError, match="pip install 'multiloc\\[laion\\]'"):
        multiloc.get_scorer("clap", backend="laion").text_embeddings(["Piano music"])


def test_audio_features_scorer():
    sr = 16000
    t = np.arange(2 * sr) / sr
    low, high = np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 880 * t)
    pitch = multiloc.get_scorer("audio-features", feature="pitch").score([low, high], [None, None], sample_rate=sr)
    assert pitch == pytest.approx([220, 880], rel=0.02)
    dark = multiloc.get_scorer("audio-features", feature="centroid", sign=-1)
    assert dark.score([low], [None], sample_rate=sr)[0] > dark.score([high], [None], sample_rate=sr)[0]

    def clicks(bpm: float) -> np.ndarray:
        y = np.zeros(6 * sr)
        for start in np.arange(0, 6, 60 / bpm):
            i = int(start * sr)
            y[i:i + 200] = np.hanning(200) * np.sin(2 * np.pi * 1000 * np.arange(200) / sr)
        return y

    tempo = multiloc.get_scorer("audio-features", feature="tempo").score([clicks(70), clicks(140)], [None] * 2,
                                                                         sample_rate=sr)
    assert tempo == pytest.approx([70, 140], rel=0.05)
    with pytest.raises(multiloc.UserError, match="unknown audio feature"):
        multiloc.get_scorer("audio-features", feature="loudness")


def test_sites_cli_lists_audioldm2_text_sites_with_streams(capsys):
    assert main(["sites", "--model", "audioldm2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 346_943_496
    assert len(data["sites"]) == 32
    assert Counter(s["stream"] for s in data["sites"]) == {"gpt2": 16, "t5": 16}
    assert all(s["name"].endswith("attn2") for s in data["sites"])
    assert main(["sites", "--model", "audioldm2"]) == 0
    table = capsys.readouterr().out
    assert "32 sites" in table and " gpt2 " in table and " t5 " in table


def test_musical_concepts_load():
    for name in ("piano", "violin", "jazz", "fast", "female", "happy"):
        concept = multiloc.Concept.load(name)
        assert concept.scorer == "clap" and concept.modality == "audio"
        for pair in concept.pairs:
            assert name in pair.donor and name not in pair.base
    assert multiloc.Concept.load("piano").target == "Piano music"


def test_scan_without_network_fails_in_one_line(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "multiloc.cli", "scan", "--model", "audioldm2", "--concept",
                           "piano", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cvssp/audioldm2" in lines[0] and "local directory" in lines[0]


def test_scan_cli_end_to_end_on_a_saved_pipeline(tmp_path, tiny_clap_dir, capsys):
    from transformers import GPT2Model

    pipe = multiloc.load("tiny-audioldm2").pipe
    # Save it as the hub checkpoints list it: the language model as a bare GPT2Model.
    pipe.register_modules(language_model=pipe.language_model.transformer)
    assert isinstance(pipe.language_model, GPT2Model)
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = multiloc.load(tmp_path / "pipe")
    assert type(reloaded.pipe.language_model).__name__ == "GPT2LMHeadModel"
    assert reloaded.adapter.name == "audioldm2" and len(reloaded.sites) == 14

    out = tmp_path / "out"
    rc = main(["scan", "--model", str(tmp_path / "pipe"), "--concept", "piano", "--steps", "2", "--seeds", "1",
               "--batch-size", "16", "--scorer-model", tiny_clap_dir,
               "--set", "audio_length_in_s=0.016", "--device", "cpu", "--out", str(out),
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["scorer"] == "clap" and len(result["sites"]) == 14
    assert result["ranking"][0] == max(result["sites"], key=lambda s: s["effect"] or -1e9)["name"]
    wavs = sorted(p.name for p in (out / "samples").glob("*.wav"))
    assert "base.wav" in wavs and "donor.wav" in wavs and any(w.startswith("top-site") for w in wavs)
    data, rate = soundfile.read(out / "samples" / "base.wav")
    assert rate == 16000 and data.ndim == 1 and len(data) == 256


def test_ace_step_variants_in_the_registry():
    """The ACE-Step 1.5 variants diffusers documents, with their defaults (turbo: no CFG, 8 steps)."""
    from multiloc.registry import model_spec

    turbo = model_spec("ace-step-turbo")
    assert turbo["defaults"]["steps"] == 8 and turbo["defaults"]["guidance"] == 1.0 and turbo["defaults"]["shift"] == 3.0
    assert turbo["hub_id"] == "ACE-Step/acestep-v15-xl-turbo-diffusers"
    for name in ("ace-step", "ace-step-sft", "ace-step-xl-base"):
        spec = model_spec(name)
        assert spec["adapter"] == "ace-step" and spec["defaults"]["guidance"] == 7.0 and spec["defaults"]["steps"] == 50
