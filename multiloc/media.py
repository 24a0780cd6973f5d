"""Writing outputs a person can look at or listen to.

Example::

    save_output("out/samples/base", image_array)   # writes out/samples/base.png        # HxWxC floats in [0, 1]
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


def save_output(path: str | Path, output: Any, modality: str = "image") -> Path:
    """Save one output: images as PNG. Returns the path written."""
    path = Path(path)
    if modality != "image":
        raise ValueError(f"no writer for {modality!r} outputs")
    buf = io.BytesIO()
    to_pil(output).save(buf, format="PNG")
    path = path.parent / f"{path.name}.png"
    write_atomic(path, buf.getvalue())
    return path
