"""FLUX.1 (``FluxTransformer2DModel``): double-stream and single-stream blocks.

Sites, in execution order:
  - ``transformer_blocks.N.attn`` (kind ``joint_attn``): like SD3, the text-side keys/values
    (``add_k_proj`` / ``add_v_proj`` outputs) are patched from an in-batch donor row.
  - ``single_transformer_blocks.N.attn`` (kind ``single_stream``): text and image tokens share
    ``to_k`` / ``to_v``; only the text positions, the first ``max_sequence_length`` tokens of the
    joint sequence, are patched. The adapter passes the same ``max_sequence_length`` to
    ``encode_prompt`` and to the pipeline call, so the site's token range is the text, always.

What is not patched by default: the pooled CLIP embedding and the guidance embedding (both enter
AdaLN through ``time_text_embed``) stay on the base prompt. ``pooled_site: true`` (``--pooled``)
adds ``time_text_embed.text_embedder`` as a site of its own (kind ``pooled``); the guidance scale
is not prompt-dependent and is never patched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning, offsets_positions
from multiloc.sites import Site, SiteRule, find_sites

from .sd3 import POOLED, is_joint_attn


def is_single_stream(name: str, module: nn.Module) -> bool:
    return name.startswith("single_transformer_blocks.") and name.endswith(".attn")


class FluxAdapter(Adapter):
    name = "flux"
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    modality = "image"
    denoiser_attr = "transformer"
    denoiser_classes = ("FluxTransformer2DModel",)
    block_order = ("time_text_embed", "transformer_blocks", "single_transformer_blocks")
    site_rules = (SiteRule(kind="joint_attn", where=is_joint_attn, taps=("add_k_proj", "add_v_proj"),
                           values=("add_v_proj",), image_values=("to_v",)),)
    defaults = {"steps": 28, "guidance": 3.5, "max_sequence_length": 512}
    no_negative = ("FLUX.1 is guidance-distilled: its guidance scale is an input of the transformer, and no "
                   "unconditional copy runs for a negative prompt to steer")

    @staticmethod
    def text_length(settings: Mapping[str, Any] | None) -> int:
        return int((settings or {}).get("max_sequence_length") or FluxAdapter.defaults["max_sequence_length"])

    def sites(self, denoiser: nn.Module, settings: Mapping[str, Any] | None = None) -> list[Site]:
        single = SiteRule(kind="single_stream", where=is_single_stream, taps=("to_k", "to_v"),
                          tokens=(0, self.text_length(settings)), values=("to_v",))
        rules = self.site_rules + (single,) + ((POOLED,) if (settings or {}).get("pooled_site") else ())
        return find_sites(denoiser, rules, self.block_order)

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        pe, ppe, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                        num_images_per_prompt=1,
                                        max_sequence_length=self.text_length(settings))
        # text_ids is shared by all rows (not per prompt); the pipeline rebuilds it from prompt_embeds.
        return {"prompt_embeds": pe, "pooled_prompt_embeds": ppe}

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {**super().pipeline_kwargs(pipe, settings), "max_sequence_length": self.text_length(settings)}

    def train_conditioning(self, pipe: Any, prompts: Sequence[str], device: torch.device,
                           settings: Mapping[str, Any] | None = None) -> Conditioning:
        cond = self.encode(pipe, prompts, device, settings)
        # FLUX.1 dev reads the guidance scale as an input: train at the scale it samples with
        guidance = float((settings or self.defaults).get("guidance", self.defaults["guidance"]))
        return {**cond, "guidance": torch.full((len(prompts),), guidance, device=device)}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # As the pipeline calls it: 2 x 2 latent patches packed into tokens with their position ids, zero
        # text ids, the timestep as sigma (the objective's t is sigma x 1000), guidance where embedded.
        n, c, h, w = x.shape
        tr = pipe.transformer
        packed = type(pipe)._pack_latents(x, n, c, h, w)
        img_ids = type(pipe)._prepare_latent_image_ids(n, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = cond["guidance"].to(x.dtype) if tr.config.guidance_embeds else None
        pred = tr(hidden_states=packed, timestep=t / 1000, guidance=guidance,
                  pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=cond["prompt_embeds"],
                  txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return type(pipe)._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                          pipe.vae_scale_factor)

    def sample_shape(self, pipe: Any, settings: Mapping[str, Any]) -> tuple[int, ...]:
        size = pipe.default_sample_size * pipe.vae_scale_factor  # the pipeline's default height and width
        return (3, int(settings.get("height") or size), int(settings.get("width") or size))

    def token_positions(self, pipe: Any, prompt: str, words: Sequence[str]) -> list[int]:
        # The sites read the T5 sequence only (CLIP gives the pooled embedding).
        return offsets_positions(pipe.tokenizer_2, prompt, words)

    def generate(self, pipe: Any, cond: Conditioning, **kwargs: Any) -> list:
        # The single-stream sites patch tokens [0, L): the text must be exactly L tokens long.
        length = self.text_length(kwargs["settings"])
        if cond["prompt_embeds"].shape[1] != length:
            raise RuntimeError(f"prompt embeddings have {cond['prompt_embeds'].shape[1]} tokens, "
                               f"the single-stream sites expect {length}")
        return super().generate(pipe, cond, **kwargs)
