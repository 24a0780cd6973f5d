"""The ``clap`` scorer: cosine similarity between an audio clip and a text in CLAP's joint space.

score = cos(a, t) with a, t the L2-normalised audio and text embeddings of a CLAP model, as the audio
localization work scored concepts ("Violin music"). Audio is resampled with librosa to the rate of the
model's feature extractor (48 kHz for LAION's checkpoints) and stereo is averaged to mono.

Backends:
  - ``"transformers"`` (default): ``transformers.ClapModel`` + ``ClapProcessor`` from a hub id or a local
    directory (default ``laion/larger_clap_music``). Tested here on a tiny ``ClapModel`` built from config.
  - ``"laion"``: LAION's own ``laion_clap`` package and its ``.pt`` checkpoints, exactly as the published
    audio work scored them (``pip install 'multiloc[laion]'``). Thin and **not tested here**: the package pins
    numpy<2, imports torchvision and calls the hub at import, none of which this project's CI allows.

Example::

    scorer = multiloc.get_scorer("clap", model="/data/larger_clap_music")
    scorer.score([waveform], ["Piano music"], sample_rate=16000)     # [0.31]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from . import Scorer

DEFAULT_MODEL = "laion/larger_clap_music"


def to_mono(audio: Any) -> np.ndarray:
    """A float32 mono waveform from (samples,) or (channels, samples)."""
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr.mean(axis=0)
    if arr.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {arr.shape}")
    return arr


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono waveform with librosa (a no-op when the rates match)."""
    if int(orig_sr) == int(target_sr):
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=int(orig_sr), target_sr=int(target_sr)).astype(np.float32)


class ClapScorer(Scorer):
    """CLAP audio-text cosine similarity (see the module docstring)."""

    name = "clap"
    modality = "audio"
    reference = False

    def __init__(self, model: str | None = None, backend: str = "transformers", device: str | None = None,
                 sample_rate: int | None = None) -> None:
        if backend not in ("transformers", "laion"):
            raise UserError(f"unknown CLAP backend {backend!r}; use 'transformers' or 'laion'")
        self.model_id = model or DEFAULT_MODEL
        self.backend = backend
        self.device = device
        self.sample_rate = sample_rate
        self._model: Any = None
        self._processor: Any = None

    # --- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is not None:
            return
        if self.backend == "laion":
            self._load_laion()
            return
        import torch
        from transformers import ClapModel, ClapProcessor

        from ..model import _hub_unreachable

        local = Path(self.model_id).exists()
        try:
            self._model = ClapModel.from_pretrained(self.model_id, local_files_only=True)
            self._processor = ClapProcessor.from_pretrained(self.model_id, local_files_only=True)
        except (OSError, ValueError) as e:
            if local:
                raise UserError(f"cannot load a CLAP model from {self.model_id}: {str(e).splitlines()[0]}") from None
            reason = _hub_unreachable(self.model_id)
            if reason:
                raise UserError(f"cannot fetch the CLAP model {self.model_id!r} ({reason}); pass a local "
                                "directory with --scorer-model") from None
            self._model = ClapModel.from_pretrained(self.model_id)
            self._processor = ClapProcessor.from_pretrained(self.model_id)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(device).eval()

    def _load_laion(self) -> None:
        try:
            import laion_clap  # optional extra; never imported by the core otherwise
        except ImportError:
            raise UserError("the 'laion' CLAP backend needs the laion-clap package: "
                            "pip install 'multiloc[laion]'") from None
        model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base")
        model.load_ckpt(self.model_id if self.model_id != DEFAULT_MODEL else None)
        self._model = model

    @property
    def model_rate(self) -> int:
        """The sample rate the CLAP model expects (48 kHz for LAION's)."""
        self._load()
        if self.backend == "laion":
            return 48000
        return int(self._processor.feature_extractor.sampling_rate)

    # --- embeddings -------------------------------------------------------------------------------
    def audio_embeddings(self, audios: Sequence[Any], sample_rate: int) -> np.ndarray:
        """L2-normalised audio embeddings, (n, d)."""
        self._load()
        clips = [resample(to_mono(a), sample_rate, self.model_rate) for a in audios]
        if self.backend == "laion":
            emb = np.asarray(self._model.get_audio_embedding_from_data(x=clips, use_tensor=False))
            return emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        import torch

        inputs = self._processor.feature_extractor(clips, sampling_rate=self.model_rate, return_tensors="pt")
        inputs = {k: v.to(self._model.device) for k, v in inputs.items()}
        with torch.no_grad():
            emb = self._model.get_audio_features(**inputs)
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, (n, d)."""
        self._load()
        if self.backend == "laion":
            emb = np.asarray(self._model.get_text_embedding(list(texts), use_tensor=False))
            return emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        import torch

        inputs = self._processor.tokenizer(list(texts), padding=True, return_tensors="pt")
        inputs = {k: v.to(self._model.device) for k, v in inputs.items()}
        with torch.no_grad():
            emb = self._model.get_text_features(**inputs)
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    def score(self, outputs: Sequence[Any], targets: Sequence[str], sample_rate: int | None = None) -> list[float]:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        rate = sample_rate or self.sample_rate
        if not rate:
            raise ValueError("the clap scorer needs the audio's sample rate")
        a = self.audio_embeddings(outputs, rate)
        unique = list(dict.fromkeys(targets))
        t = dict(zip(unique, self.text_embeddings(unique)))
        return [float(np.dot(a[i], t[target])) for i, target in enumerate(targets)]
