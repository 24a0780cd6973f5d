"""U-Net families (``UNet2DConditionModel``): Stable Diffusion 1.x/2.x, SDXL, DeepFloyd IF stage I.

Sites:
  - SD / SDXL: every ``attn2`` (cross-attention) of the transformer blocks; the text enters through
    ``to_k`` / ``to_v``, which are patched.
  - DeepFloyd IF: the ``SimpleCrossAttn`` attentions read the text through ``add_k_proj`` /
    ``add_v_proj`` (concatenated to the image tokens' own keys/values). The donor's text passes the
    U-Net's ``encoder_hid_proj`` exactly like the base's, because it is patched from an in-batch row.

What is not patched: SDXL's pooled text embedding (and IF's pooled text-time embedding) feed the time
embedding, not a site; they stay on the base prompt, so a site's effect is what flows through its
cross-attention alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning
from multiloc.sites import SiteRule


def _attention(module: nn.Module) -> bool:
    return hasattr(module, "is_cross_attention") and hasattr(module, "added_kv_proj_dim")


def is_cross_attn(name: str, module: nn.Module) -> bool:
    return _attention(module) and module.is_cross_attention and module.added_kv_proj_dim is None


def is_added_kv_attn(name: str, module: nn.Module) -> bool:
    return _attention(module) and module.added_kv_proj_dim is not None


# encode_prompt returns 2 tensors (SD, IF) or 4 (SDXL: + pooled); these are the call's kwargs.
_ENCODED = {
    2: ("prompt_embeds", "negative_prompt_embeds"),
    4: ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
}


class UNetAdapter(Adapter):
    name = "unet"
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    modality = "image"
    denoiser_attr = "unet"
    denoiser_classes = ("UNet2DConditionModel",)
    cached_donor = True  # pure cross-attention: the donor's keys/values are the same at every step
    block_order = ("down_blocks", "mid_block", "up_blocks")
    site_rules = (
        SiteRule(kind="cross_attn", where=is_cross_attn, taps=("to_k", "to_v"), values=("to_v",)),
        SiteRule(kind="cross_attn", where=is_added_kv_attn, taps=("add_k_proj", "add_v_proj"),
                 values=("add_v_proj",), image_values=("to_v",)),
    )
    defaults = {"steps": 50, "guidance": 7.5}
    negative_keys = {"prompt_embeds": "negative_prompt_embeds",
                     "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        # negative_prompt=None keeps each pipeline's own default ("" for SD/IF, zeros for SDXL).
        out = pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt=None)
        return dict(zip(_ENCODED[len(out)], out))

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extra = None
        if pipe.unet.config.addition_embed_type == "text_time":
            # SDXL: the pooled text and the size conditioning, as the pipeline builds them for an image
            # of this size, uncropped (original size = target size)
            h, w = (d * pipe.vae_scale_factor for d in x.shape[-2:])
            ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=x.dtype, device=x.device).repeat(x.shape[0], 1)
            extra = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": ids}
        pred = pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=extra).sample
        return pred[:, :x.shape[1]]  # IF's U-Net also predicts a variance: the first channels are the prediction
