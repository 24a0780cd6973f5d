"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``): one site per joint-attention block.

Sites: ``transformer_blocks.N.attn``. The text tokens evolve from block to block (they attend to the
image and to themselves), so "inject prompt B" has no fixed meaning past the first block: a site's
text-side keys and values (the outputs of ``add_k_proj`` / ``add_v_proj``) are replaced by those of an
in-batch donor row at the same step and latent. The last block is ``context_pre_only``: its text
stream has no output, but its text keys/values are still read by the image tokens, so it is a site
like the others. SD3.5-medium's extra image-only ``attn2`` reads no text and is not a site.

What is not patched by default: the pooled text embedding (CLIP pooled, through
``time_text_embed.text_embedder`` into AdaLN) stays on the base prompt. With the setting
``pooled_site: true`` (``--pooled`` on the command line) it becomes a site of its own, kind
``pooled``, first in execution order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning, offsets_positions
from multiloc.sites import Site, SiteRule, find_sites


def is_joint_attn(name: str, module: nn.Module) -> bool:
    """A joint (text + image) attention: it has the text-side projections."""
    return getattr(module, "add_k_proj", None) is not None and hasattr(module, "heads")


# The pooled text embedding's projection into the time embedding (SD3 and FLUX alike).
POOLED = SiteRule(kind="pooled", where=lambda n, m: n == "time_text_embed.text_embedder", taps=("",),
                  stream="pooled")


def sites_with_pooled(adapter: Adapter, denoiser: nn.Module, settings: Mapping[str, Any] | None) -> list[Site]:
    """The adapter's sites, plus the pooled-embedding site when ``settings['pooled_site']`` is set."""
    rules = adapter.site_rules + ((POOLED,) if (settings or {}).get("pooled_site") else ())
    return find_sites(denoiser, rules, adapter.block_order)


class SD3Adapter(Adapter):
    name = "sd3"
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                     ("text_encoder_3", "tokenizer_3"))
    modality = "image"
    denoiser_attr = "transformer"
    denoiser_classes = ("SD3Transformer2DModel",)
    site_rules = (SiteRule(kind="joint_attn", where=is_joint_attn, taps=("add_k_proj", "add_v_proj"),
                           values=("add_v_proj",), image_values=("to_v",)),)
    defaults = {"steps": 28, "guidance": 7.0, "max_sequence_length": 256}
    negative_keys = {"prompt_embeds": "negative_prompt_embeds",
                     "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}

    def sites(self, denoiser: nn.Module, settings: Mapping[str, Any] | None = None) -> list[Site]:
        return sites_with_pooled(self, denoiser, settings)

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        length = (settings or self.defaults).get("max_sequence_length", 256)
        pe, npe, ppe, nppe = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=[""] * len(prompts),
            max_sequence_length=length)
        return {"prompt_embeds": pe, "negative_prompt_embeds": npe,
                "pooled_prompt_embeds": ppe, "negative_pooled_prompt_embeds": nppe}

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {**super().pipeline_kwargs(pipe, settings),
                "max_sequence_length": settings.get("max_sequence_length", 256)}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # As the pipeline calls it: the flow-matching timestep (sigma x 1000), the joint text sequence and
        # the pooled CLIP embedding
        return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond["prompt_embeds"],
                                pooled_projections=cond["pooled_prompt_embeds"], return_dict=False)[0]

    def token_positions(self, pipe: Any, prompt: str, words: Sequence[str]) -> list[int]:
        # The text sequence is the CLIP tokens (padded to the tokenizer's length), then the T5 tokens.
        clip = offsets_positions(pipe.tokenizer, prompt, words)
        if getattr(pipe, "tokenizer_3", None) is None:
            return clip
        return clip + offsets_positions(pipe.tokenizer_3, prompt, words, offset=pipe.tokenizer_max_length)
