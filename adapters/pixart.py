"""PixArt-α/Σ (``PixArtTransformer2DModel``) and SANA (``SanaTransformer2DModel``): masked cross-attention.

Sites: every block's ``attn2`` (cross-attention to the T5 / Gemma caption after the transformer's
``caption_projection``); the text enters through ``to_k`` / ``to_v``, which are patched.

The caption comes with an attention mask (padding is masked out), and base and donor prompts of
different lengths have different masks. Patching the keys/values alone would keep the base's mask,
hiding the donor's extra tokens (and showing padding where the donor is shorter), so the site's mask
input (``attention_mask``, the per-row bias the block passes to ``attn2``) is a mask tap: an inject
patch carries the donor's mask into that site along with its keys/values, all other sites keep the
base's. Nothing else carries the prompt in these families (no pooled embedding).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning
from multiloc.errors import UserError
from multiloc.sites import SiteRule


def is_attn2(name: str, module: nn.Module) -> bool:
    return name.endswith(".attn2") and hasattr(module, "to_k")


_RULE = SiteRule(kind="cross_attn", where=is_attn2, taps=("to_k", "to_v"), masks=("attention_mask",),
                 values=("to_v",))


class PixArtAdapter(Adapter):
    name = "pixart"
    modality = "image"
    denoiser_attr = "transformer"
    denoiser_classes = ("PixArtTransformer2DModel",)
    cached_donor = True  # pure cross-attention: the donor's keys/values are the same at every step
    site_rules = (_RULE,)
    defaults = {"steps": 20, "guidance": 4.5, "max_sequence_length": 120}
    negative_keys = {"prompt_embeds": "negative_prompt_embeds",
                     "prompt_attention_mask": "negative_prompt_attention_mask"}
    # Settings passed through to the pipeline call as they are.
    passthrough = ("max_sequence_length", "use_resolution_binning")

    def encode_kwargs(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_sequence_length": settings.get("max_sequence_length", self.defaults["max_sequence_length"])}

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        pe, pm, npe, npm = pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=True, negative_prompt=[""] * len(prompts),
            num_images_per_prompt=1, device=device, clean_caption=False,
            **self.encode_kwargs(settings or self.defaults))
        return {"prompt_embeds": pe, "prompt_attention_mask": pm,
                "negative_prompt_embeds": npe, "negative_prompt_attention_mask": npm}

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        extra = {k: settings[k] for k in self.passthrough if k in settings}
        # negative_prompt defaults to "" in these pipelines, which clashes with negative_prompt_embeds.
        return {**super().pipeline_kwargs(pipe, settings), **extra, "negative_prompt": None}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        n, tr = x.shape[0], pipe.transformer
        extra = {"resolution": None, "aspect_ratio": None}
        if tr.config.sample_size == 128:  # PixArt-alpha 1024 px: size conditioning, as the pipeline gives it
            h, w = (d * pipe.vae_scale_factor for d in x.shape[-2:])
            extra = {"resolution": torch.tensor([h, w], dtype=x.dtype).repeat(n, 1).to(x.device),
                     "aspect_ratio": torch.tensor([h / w], dtype=x.dtype).repeat(n, 1).to(x.device)}
        pred = tr(x, encoder_hidden_states=cond["prompt_embeds"], encoder_attention_mask=cond["prompt_attention_mask"],
                  timestep=t, added_cond_kwargs=extra).sample
        return pred[:, :x.shape[1]]  # a learned sigma doubles the channels: the first half is the prediction


class SanaAdapter(PixArtAdapter):
    name = "sana"
    denoiser_classes = ("SanaTransformer2DModel",)
    # No value taps declared: the contribution method needs token positions, not mapped for SANA yet.
    site_rules = (SiteRule(kind="cross_attn", where=is_attn2, taps=("to_k", "to_v"), masks=("attention_mask",)),)
    defaults = {"steps": 20, "guidance": 4.5, "max_sequence_length": 300}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # As the pipeline calls it: the flow timestep (sigma x 1000) times the model's timestep_scale
        tr = pipe.transformer
        pred = tr(x, encoder_hidden_states=cond["prompt_embeds"], encoder_attention_mask=cond["prompt_attention_mask"],
                  timestep=t * tr.config.timestep_scale, return_dict=False)[0]
        return pred[:, :x.shape[1]]  # a learned sigma doubles the channels: the first half is the prediction

    def to_latents(self, pipe: Any, x: torch.Tensor) -> torch.Tensor:
        # A DC-AE: deterministic latents, scaled as the pipeline's decoding divides them back
        vae = pipe.vae
        return vae.encode(x.to(vae.device, vae.dtype)).latent * vae.config.scaling_factor

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        settings = dict(settings or self.defaults)
        if "complex_human_instruction" not in settings:
            # SANA's __call__ prefixes prompts with an instruction by default; encode_prompt does not.
            # Use the call's default so embeddings match what the stock pipeline would compute.
            settings["complex_human_instruction"] = inspect.signature(
                pipe.__call__).parameters["complex_human_instruction"].default
        return super().encode(pipe, prompts, device, settings)

    def encode_kwargs(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().encode_kwargs(settings),
                "complex_human_instruction": settings.get("complex_human_instruction")}

    def token_positions(self, pipe: Any, prompt: str, words: Sequence[str]) -> list[int]:
        # The instruction prefix and the window SANA keeps of it move the prompt's tokens.
        raise UserError("token positions (used by --method trace and contribution) are not mapped for "
                        "SANA's instruction-prefixed captions yet; use --method patch")
