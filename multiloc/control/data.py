"""Training data for ``multiloc finetune``: a folder in the ``imagefolder`` / ``audiofolder`` convention.

The folder holds the files and a ``metadata.jsonl``, one JSON object a line with the file's path
relative to the folder (``file_name``) and its caption (``text``)::

    data/metadata.jsonl   {"file_name": "0001.png", "text": "a small orange circle"}
    data/0001.png

Images are converted to RGB and resized to the model's size (bicubic), as ``[-1, 1]`` tensors;
audio is mixed or repeated to the model's channels, resampled to its rate and cropped (or padded
with silence) to the length the pipeline denoises. Everything is read and checked before any
training: an empty or malformed folder, a missing caption or an unreadable file is a one-line
:class:`~multiloc.errors.UserError`.

Example::

    samples, captions = load_folder(model, "data/")     # (N, 3, H, W) in [-1, 1], N captions
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

METADATA = "metadata.jsonl"


def read_metadata(folder: str | Path) -> list[tuple[Path, str]]:
    """``(file, caption)`` pairs of ``FOLDER/metadata.jsonl``, every file checked to exist.

    >>> read_metadata("data/")[0]
    (PosixPath('data/0001.png'), 'a small orange circle')
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist")
    meta = folder / METADATA
    if not meta.is_file():
        raise UserError(f"{folder} has no {METADATA} (one JSON line per file: "
                        '{"file_name": "0001.png", "text": "a caption"})')
    rows = []
    for n, line in enumerate(meta.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{meta} line {n} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise UserError(f"{meta} line {n} has no file_name")
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{meta} line {n} ({row['file_name']}) has no caption (a non-empty 'text')")
        path = folder / row["file_name"]
        if not path.is_file():
            raise UserError(f"{meta} line {n} names {row['file_name']}, which is not in {folder}")
        rows.append((path, text))
    if not rows:
        raise UserError(f"{meta} lists no files")
    return rows


def load_folder(model: Any, folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """The folder's samples shaped for ``model`` (see the module docstring) and their captions.

    >>> samples, captions = load_folder(multiloc.load("toy-tones"), "clips/")   # (N, 1, 4096) at 4 kHz
    """
    rows = read_metadata(folder)
    shape = model.adapter.sample_shape(model.pipe, model.settings)
    read = _image if model.modality == "image" else _audio
    samples = []
    for path, _ in rows:
        try:
            samples.append(read(path, shape, model.sample_rate))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure: say which file, in one line
            raise UserError(f"cannot read {path} as {'an image' if model.modality == 'image' else 'audio'} "
                            f"({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
    return torch.from_numpy(np.stack(samples)), [text for _, text in rows]


def _image(path: Path, shape: tuple[int, ...], _rate: int | None) -> np.ndarray:
    from PIL import Image

    _, h, w = shape
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1) * 2 - 1


def _audio(path: Path, shape: tuple[int, ...], rate: int | None) -> np.ndarray:
    import soundfile

    channels, length = shape
    audio, sr = soundfile.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    audio = audio.T
    if audio.shape[0] != channels:  # mix down, or repeat mono
        audio = np.repeat(audio.mean(0, keepdims=True), channels, axis=0)
    if rate and sr != rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sr), int(rate))
        audio = resample_poly(audio, rate // g, sr // g, axis=1).astype(np.float32)
    out = np.zeros((channels, length), dtype=np.float32)
    out[:, :min(length, audio.shape[1])] = audio[:, :length]
    return out
