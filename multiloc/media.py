"""Writing outputs a person can look at or listen to.

Example::

    save_output("out/samples/base", image_array)   # writes out/samples/base.png (HxWxC floats in [0, 1])
    save_output("out/samples/base", waveform, "audio", sample_rate=16000)   # writes out/samples/base.wav
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .results import write_atomic


def to_pil(image: Any) -> Any:
    """A PIL image from an HxWxC float array in [0, 1] (PIL images pass through)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)


def wav_bytes(audio: Any, sample_rate: int) -> bytes:
    """A 32-bit float WAV file of ``audio``: (samples,) mono, or (channels, samples) as pipelines return it."""
    import soundfile

    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr.T  # soundfile wants (samples, channels)
    elif arr.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {arr.shape}")
    buf = io.BytesIO()
    soundfile.write(buf, arr, int(sample_rate), format="WAV", subtype="FLOAT")
    return buf.getvalue()


def save_output(path: str | Path, output: Any, modality: str = "image", sample_rate: int | None = None) -> Path:
    """Save one output: images as PNG, audio as WAV at ``sample_rate``. Returns the path written."""
    path = Path(path)
    if modality == "audio":
        if not sample_rate:
            raise ValueError("saving audio needs the sample rate")
        data, suffix = wav_bytes(output, sample_rate), "wav"
    elif modality == "image":
        buf = io.BytesIO()
        to_pil(output).save(buf, format="PNG")
        data, suffix = buf.getvalue(), "png"
    else:
        raise ValueError(f"no writer for {modality!r} outputs")
    path = path.parent / f"{path.name}.{suffix}"
    write_atomic(path, data)
    return path
