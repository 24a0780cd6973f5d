"""The adapter contract: how multiloc talks to one model family.

An adapter is a short declaration. The base class :class:`Adapter` implements what every
diffusers family shares; a concrete adapter sets class attributes (which denoiser classes it
handles, its site table, its defaults) and overrides :meth:`Adapter.encode` (how the family turns
prompts into the pipeline's embedding arguments) and, when the pipeline's call differs from the
common one, :meth:`Adapter.pipeline_kwargs`.

Example (a third-party family, registered under the entry-point group ``multiloc.adapters``)::

    class MyAdapter(Adapter):
        name = "my-family"
        denoiser_attr = "transformer"
        denoiser_classes = ("MyTransformer2DModel",)
        site_rules = (SiteRule(kind="cross_attn", where=is_attn2, taps=("to_k", "to_v")),)

        def encode(self, pipe, prompts, device, settings=None):
            pe, npe = pipe.encode_prompt(prompts, device=device, negative_prompt=[""] * len(prompts))
            return {"prompt_embeds": pe, "negative_prompt_embeds": npe}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .sites import Site, SiteRule, find_sites

Conditioning = dict[str, Any]
"""Pipeline keyword arguments holding embeddings (or, with ``prompt_in_call``, the prompts), each
indexed by prompt along dim 0."""


class Adapter:
    """Base class of model-family adapters (see the module docstring)."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "image"
    denoiser_attr: ClassVar[str] = "unet"
    denoiser_classes: ClassVar[tuple[str, ...]] = ()
    site_rules: ClassVar[tuple[SiteRule, ...]] = ()
    block_order: ClassVar[tuple[str, ...]] = ()
    calls_per_step: ClassVar[int] = 1
    # True where a site's conditioning (its taps) does not depend on the step or the latent (pure
    # cross-attention on the prompt's embeddings): a sweep then captures the donor's taps once and
    # leaves the donor row out of its generations. Joint attention (SD3, FLUX) mixes the text with
    # the image stream block by block, so it keeps the in-batch donor.
    cached_donor: ClassVar[bool] = False
    # Under classifier-free guidance a denoiser call holds copies of the rows one after the other:
    # which copy is the conditional one (most pipelines: the last; ACE-Step: the first).
    conditional_copy: ClassVar[int] = -1
    # Conditioning entries laid out token by token like the tokenizer's output (causal tracing
    # corrupts the concept's positions in these).
    sequence_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds",)
    # True for pipelines that take no embeddings (they encode inside their call): rows then reach
    # ``generate`` as ``{"prompt": [str, ...]}`` and the pipeline's own encoding is the one used.
    prompt_in_call: ClassVar[bool] = False
    # Negative prompts (what the unconditional copy under CFG reads): each conditioning key of a prompt
    # -> the key the pipeline takes its negative in (keys a pipeline lacks, e.g. SD's pooled, are skipped).
    # Empty: the family takes no negative prompt, and ``no_negative`` says why.
    negative_keys: ClassVar[dict[str, str]] = {}
    no_negative: ClassVar[str] = "its pipeline takes no negative prompt"
    no_finetune: ClassVar[str] = ""  # why ``multiloc finetune`` cannot train this family yet
    # Text encoders (``multiloc trace``, encoder edits): (module path in the pipeline, its tokenizer's
    # attribute); the layers and their parts are found by transformers' names (multiloc/encoders.py).
    # Entries a pipeline lacks are skipped (SD has no text_encoder_2).
    text_encoders: ClassVar[tuple[tuple[str, str], ...]] = (("text_encoder", "tokenizer"),)
    # Family defaults; a registry entry overrides them with the settings its paper used.
    defaults: ClassVar[dict[str, Any]] = {"steps": 50, "guidance": 7.5}

    # --- what a family declares -------------------------------------------------------------
    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        """Encode ``prompts`` (with empty negative prompts) into the pipeline's embedding kwargs.

        ``settings`` are the model's settings (e.g. a text length the pipeline call must match).
        """
        raise NotImplementedError

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments for the pipeline call (size, audio length ...)."""
        return {k: settings[k] for k in ("height", "width") if settings.get(k)}

    def token_positions(self, pipe: Any, prompt: str, words: Sequence[str]) -> list[int]:
        """Positions, in the sequence the sites read, of the tokens that spell ``words`` in ``prompt``.

        Uses the fast tokenizer's character offsets, so special tokens (BOS) are accounted for. A
        family whose sites read a concatenation of several encoders overrides this.
        """
        return offsets_positions(pipe.tokenizer, prompt, words)

    def prepare(self, pipe: Any) -> Any:
        """Fix up a freshly loaded pipeline (e.g. swap a component class); returns the pipeline."""
        return pipe

    def sample_rate(self, pipe: Any) -> int | None:
        """Audio families: the sample rate of the outputs (None for images)."""
        return None

    # --- training (multiloc finetune) ----------------------------------------------------------
    def train_conditioning(self, pipe: Any, prompts: Sequence[str], device: torch.device,
                           settings: Mapping[str, Any] | None = None) -> Conditioning:
        """The conditional inputs :meth:`denoise` reads for ``prompts`` (no CFG copy), as the
        pipeline computes them."""
        cond = self.encode(pipe, prompts, device, settings)
        return {k: v for k, v in cond.items() if not k.startswith("negative_")}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's prediction for input ``x`` at timesteps ``t``, called the way the family's
        pipeline calls it (``cond``: rows of :meth:`train_conditioning`). Families that support
        ``multiloc finetune`` override this."""
        raise UserError(f"fine-tuning is not supported yet for the {self.name} family")

    def check_finetune(self, pipe: Any) -> None:
        """UserError unless ``multiloc finetune`` supports this pipeline (checked before any work)."""
        if type(self).denoise is Adapter.denoise:
            why = f" ({self.no_finetune})" if self.no_finetune else ""
            raise UserError(f"fine-tuning is not supported yet for the {self.name} family{why}")

    def sample_shape(self, pipe: Any, settings: Mapping[str, Any]) -> tuple[int, ...]:
        """The shape of one clean training sample before :meth:`to_latents`: images ``(3, H, W)``
        at the model's size (audio families override: ``(channels, samples)``)."""
        denoiser = self.denoiser(pipe)
        factor = getattr(pipe, "vae_scale_factor", 1) if getattr(pipe, "vae", None) is not None else 1
        size = int(denoiser.config.sample_size) * factor
        return (3, int(settings.get("height") or size), int(settings.get("width") or size))

    def to_latents(self, pipe: Any, x: torch.Tensor) -> torch.Tensor:
        """Clean samples (images in [-1, 1], waveforms) as the denoiser's clean latents: the VAE's
        mean, shifted and scaled as the pipeline's decoding undoes; pixel-space pipelines pass through."""
        vae = getattr(pipe, "vae", None)
        if vae is None:
            return x
        latents = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        scale = getattr(vae.config, "scaling_factor", None) or 1.0
        return (latents - shift) * scale

    # --- shared machinery -------------------------------------------------------------------
    def handles(self, pipe: Any) -> bool:
        """Whether ``pipe``'s denoiser is one of this family's classes (subclasses count)."""
        denoiser = getattr(pipe, self.denoiser_attr, None)
        return denoiser is not None and any(
            c.__name__ in self.denoiser_classes for c in type(denoiser).__mro__)

    def denoiser(self, pipe: Any) -> nn.Module:
        return getattr(pipe, self.denoiser_attr)

    def sites(self, denoiser: nn.Module, settings: Mapping[str, Any] | None = None) -> list[Site]:
        """The family's sites in execution order.

        ``settings`` are the model's settings: a family whose sites depend on them (FLUX's text length,
        an optional pooled-embedding site) reads them here.
        """
        return find_sites(denoiser, self.site_rules, self.block_order)

    def generate(self, pipe: Any, cond: Conditioning, *, seed: int, steps: int, guidance: float,
                 settings: dict[str, Any], output_type: str = "np") -> list[np.ndarray]:
        """Run the pipeline on a batch of rows; every row starts from the noise of ``seed``.

        One generator per row, all seeded alike: each row draws the same noise whatever the batch
        size, so base, donor and patched rows share latents and a sweep batched any way gives the
        same outputs. ``output_type="pt"`` returns the pipeline's own tensors instead (images channels
        first, audio as the pipeline makes it), not detached: attribution patching differentiates them.
        """
        n = len(next(iter(cond.values())))
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(n)]
        out = pipe(**cond, generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                   output_type=output_type, **self.pipeline_kwargs(pipe, settings))
        if output_type != "np":
            return list(getattr(out, "images", None) if hasattr(out, "images") else out.audios)
        return self.outputs(out)

    def outputs(self, pipeline_output: Any) -> list[np.ndarray]:
        """Turn the pipeline's output into one array per row."""
        images = pipeline_output.images
        return [np.asarray(img, dtype=np.float32) for img in images]


def offsets_positions(tokenizer: Any, prompt: str, words: Sequence[str], offset: int = 0) -> list[int]:
    """Token positions of ``words`` (whole words, case-insensitive) in ``prompt``, plus ``offset``.

    >>> offsets_positions(pipe.tokenizer, "a blue cube", ["blue"])
    [2]
    """
    import re

    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__} gives no character offsets; load a fast tokenizer")
    spans = [m.span() for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", prompt, re.IGNORECASE)]
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True,
                    max_length=getattr(tokenizer, "model_max_length", 512))
    return [offset + i for i, (a, b) in enumerate(enc["offset_mapping"])
            if b > a and any(a < e and b > s for s, e in spans)]
