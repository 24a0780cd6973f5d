"""The ``clip`` scorer: CLIPScore between an image and a caption, or cosine between two images.

- image-text (targets are strings): CLIPScore = w * max(cos(image, text), 0) with w = 2.5
  (Hessel et al. 2021, as the paper computed it with ViT-B/32).
- image-image (targets are images, e.g. ``reference=True`` so the targets are the donor's outputs):
  the cosine of the two image embeddings.

Weights come from the hub (``openai/clip-vit-base-patch32`` by default) or a local directory; a
``CLIPModel`` object with its tokenizer and image processor can be passed in directly (that is how
the tests build a tiny one). Images are preprocessed by transformers' PIL-backend CLIP image
processor (no torchvision).

Example::

    scorer = multiloc.get_scorer("clip")                       # ViT-B/32 from the hub
    scorer.score([image], ["a photo of a violin"])             # [0.74]
    multiloc.get_scorer("clip", reference=True)                # cosine to the donor's image
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UserError
from ..media import to_pil
from . import Scorer

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def _pil_image_processor() -> Any:
    """transformers 5's PIL-backend CLIP image processor (the default one wants torchvision)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def load_clip(name: str, device: Any = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor) from a hub id or a local directory."""
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        processor = _pil_image_processor().from_pretrained(name)
    except OSError as e:
        raise UserError(f"cannot load CLIP model {name!r} ({e.__class__.__name__}); pass a hub id you can "
                        "reach or a local directory with its weights") from None
    # Offline, a tokenizer can come back nearly empty without an error (see DESIGN.md).
    if len(tokenizer) < 1000:
        raise UserError(f"the tokenizer of {name!r} loaded with only {len(tokenizer)} tokens; its files are "
                        "missing from the cache: download them or pass a local directory")
    return model.to(device or "cpu").eval(), tokenizer, processor


class ClipScorer(Scorer):
    """CLIPScore (w * max(cos, 0)) to a caption, or cosine to a reference image."""

    name = "clip"
    modality = "image"
    reference = False
    meaning = "per image, CLIPScore 2.5 * max(cos, 0) to the target text (or cosine to the donor's image)"

    def __init__(self, model: str | Any = DEFAULT_MODEL, tokenizer: Any = None, image_processor: Any = None,
                 device: str | torch.device | None = None, w: float = 2.5, reference: bool = False,
                 batch_size: int = 32):
        if isinstance(model, str):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, tokenizer, image_processor = load_clip(model, device)
        elif tokenizer is None or image_processor is None:
            raise UserError("a CLIP model object needs its tokenizer and image_processor too")
        self.model, self.tokenizer, self.processor = model.eval(), tokenizer, image_processor
        self.device = next(model.parameters()).device
        self.w, self.batch_size = float(w), int(batch_size)
        self.reference = bool(reference)  # per instance: image-image scoring uses the donor's outputs

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalized image embeddings, (n, d), float32 on the CPU."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [to_pil(im).convert("RGB") for im in images[i:i + self.batch_size]]
            pix = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pix.to(self.device, self.model.dtype))
            out.append(_normalize(feats))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized text embeddings, (n, d), float32 on the CPU."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                 return_tensors="pt")
            feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device))
            out.append(_normalize(feats))
        return torch.cat(out) if out else torch.empty(0)

    def score(self, outputs: Sequence[Any], targets: Sequence[Any]) -> list[float]:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        if not outputs:
            return []
        images = self.embed_images(outputs)
        if all(isinstance(t, str) for t in targets):
            cos = (images * self._cached_texts(targets)).sum(-1)
            return (self.w * cos.clamp(min=0)).tolist()
        return (images * self.embed_images(targets)).sum(-1).tolist()

    def _cached_texts(self, texts: Sequence[str]) -> torch.Tensor:
        # A scan scores one target many times over: embed each distinct text once.
        distinct = sorted(set(texts))
        table = dict(zip(distinct, self.embed_texts(distinct)))
        return torch.stack([table[t] for t in texts])


def _normalize(feats: Any) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor):  # transformers 5: the projected embedding is the pooler output
        feats = feats.pooler_output
    feats = feats.float().cpu()
    return feats / feats.norm(dim=-1, keepdim=True)
