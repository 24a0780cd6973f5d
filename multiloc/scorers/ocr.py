"""The ``ocr`` scorer: read the text in an image and compare it with the target word.

Backends:

- ``tesseract`` (default): the Tesseract engine through ``pytesseract``; runs offline on the CPU,
  about 0.1 s an image. Needs the ``tesseract`` program (Debian/Ubuntu: ``apt-get install
  tesseract-ocr``; the README's set-up installs it) and ``pip install multiloc[ocr]``.
- ``easyocr``: the engine the paper used (``pip install multiloc[easyocr]``). It downloads its
  detection and recognition weights (about 100 MB) into ``~/.EasyOCR`` on first use, so the first
  run needs the network (or copy the weights there); a CUDA torch makes it fast.

The score of one image is the paper's character-multiset F1 of the text read against the target
(see :mod:`multiloc.metrics`): graded, so a half-written word counts for something, and it penalizes
both missing and extra characters. Per row, ``result.json`` also reports corpus precision, recall,
F1 = 2PR / (P + R), exact word accuracy and Levenshtein similarity, as the paper tabulates them, and
the texts read (one per sample, in the order of ``samples.ids``).

Example::

    scorer = multiloc.get_scorer("ocr")                 # or get_scorer("ocr", backend="easyocr")
    scorer.read([image])                                 # ['coffee']
    scorer.score([image], ["coffee"])                    # [1.0]
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import metrics
from ..errors import UserError
from ..media import to_pil
from . import Scorer

BACKENDS = ("tesseract", "easyocr")


class TesseractReader:
    """Words Tesseract reads with at least ``min_conf`` confidence, joined by spaces.

    ``psm`` 11 (sparse text) finds a sign anywhere in a scene; ``min_conf`` drops the low-confidence
    fragments Tesseract reports in textures and noise (those score 0-60, printed words above 90).
    """

    def __init__(self, psm: int = 11, min_conf: float = 70.0, lang: str = "eng", upscale: int = 256):
        try:
            import pytesseract
        except ImportError:
            raise UserError("the OCR scorer needs pytesseract: pip install 'multiloc[ocr]'") from None
        cmd = os.environ.get("TESSERACT_CMD") or shutil.which("tesseract")
        if cmd is None:
            raise UserError("the OCR scorer needs the tesseract program: apt-get install tesseract-ocr "
                            "(or brew install tesseract), or set TESSERACT_CMD to its path")
        pytesseract.pytesseract.tesseract_cmd = cmd
        self._tess = pytesseract
        self.config = f"--psm {int(psm)}"
        self.min_conf, self.lang, self.upscale = float(min_conf), lang, int(upscale)

    def __call__(self, image: Any) -> str:
        img = to_pil(image).convert("RGB")
        # Tesseract wants letters at least ~20 px high: small outputs (toy models, IF stage I at
        # 64 px) are enlarged so their shorter side is ``upscale`` pixels.
        short = min(img.size)
        if short < self.upscale:
            from PIL import Image

            f = self.upscale / short
            img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BICUBIC)
        data = self._tess.image_to_data(img, lang=self.lang, config=self.config,
                                        output_type=self._tess.Output.DICT)
        words = [w.strip() for w, c in zip(data["text"], data["conf"])
                 if float(c) >= self.min_conf and re.search(r"\w", w or "")]
        return " ".join(words)


class EasyOCRReader:
    """EasyOCR's ``readtext(..., detail=0)`` joined by spaces, as in the paper's code."""

    def __init__(self, gpu: bool | None = None, lang: str = "en"):
        try:
            import easyocr
        except ImportError:
            raise UserError("the easyocr backend needs EasyOCR: pip install 'multiloc[easyocr]' (it "
                            "downloads its weights on first use)") from None
        if gpu is None:
            import torch

            gpu = torch.cuda.is_available()
        try:
            self._reader = easyocr.Reader([lang], gpu=gpu)
        except Exception as e:  # noqa: BLE001 - a download failure comes in many types
            raise UserError(f"EasyOCR could not load its weights ({type(e).__name__}: {e}); they are "
                            "downloaded into ~/.EasyOCR on first use, which needs the network") from None

    def __call__(self, image: Any) -> str:
        arr = np.asarray(to_pil(image).convert("RGB"))
        return " ".join(self._reader.readtext(arr, detail=0))


class OcrScorer(Scorer):
    """Character-multiset F1 of the text read in each image against its target word."""

    name = "ocr"
    modality = "image"
    reference = False
    meaning = ("per image, the character-multiset F1 of the OCR'd text against the donor's word (the paper's "
               "metric; order-blind); effects are ratios of its means. metrics.* are corpus values per row: "
               "mean precision P and recall R, f1 = 2PR/(P+R), exact word accuracy, Levenshtein similarity, "
               "and the texts read, one per sample")
    flat_hint = ("OCR read no text that tells base from donor: the model does not write legible words at "
                 "these settings (a random-weight toy model never does); try more --steps, the model's own "
                 "resolution, or a model that renders text")

    def __init__(self, backend: str = "tesseract", **options: Any):
        if backend not in BACKENDS:
            raise UserError(f"unknown OCR backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.backend = backend
        self._reader = (TesseractReader if backend == "tesseract" else EasyOCRReader)(**options)

    def read(self, images: Sequence[Any]) -> list[str]:
        """The text read in each image, lower-cased ("" where nothing was read)."""
        return [self._reader(img).lower().strip() for img in images]

    def evaluate(self, outputs: Sequence[Any], targets: Sequence[Any]
                 ) -> tuple[list[float], list[dict[str, Any]]]:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        records = [{"text": t, **metrics.text_scores(t, str(target))}
                   for t, target in zip(self.read(outputs), targets)]
        return [r["f1"] for r in records], records

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        return self.evaluate(outputs, targets)[0]

    def summarize(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {**metrics.summarize_text(records), "read_nothing": sum(not r["text"] for r in records),
                "texts": [r["text"] for r in records]}
