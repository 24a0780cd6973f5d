"""Stable Audio Open (``StableAudioDiTModel``): text-to-audio with a T5 text encoder.

Sites: every transformer block's ``attn2`` (cross-attention over the projected T5 tokens followed by the
start/end-seconds tokens); its ``to_k`` / ``to_v`` outputs are patched. The pipeline encodes the prompts
itself (padding to the tokenizer's fixed length, so a row's conditioning never depends on its batch-mates);
the donor row's text goes through the same projection and seconds tokens as the base's. The unconditional
copy under CFG is the pipeline's zero embedding for every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning
from multiloc.sites import SiteRule


def is_cross_attn(name: str, module: nn.Module) -> bool:
    return name.endswith("attn2") and getattr(module, "is_cross_attention", False)


class StableAudioAdapter(Adapter):
    name = "stable-audio"
    modality = "audio"
    denoiser_attr = "transformer"
    denoiser_classes = ("StableAudioDiTModel",)
    cached_donor = True  # pure cross-attention: the donor's keys/values are the same at every step
    site_rules = (SiteRule(kind="cross_attn", where=is_cross_attn, taps=("to_k", "to_v")),)
    prompt_in_call = True
    defaults = {"steps": 100, "guidance": 7.0, "audio_end_in_s": 10.0}
    negative_keys = {"prompt": "negative_prompt"}

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {"audio_end_in_s": float(settings["audio_end_in_s"])}

    def outputs(self, pipeline_output: Any) -> list[np.ndarray]:
        return [np.asarray(a, dtype=np.float32) for a in pipeline_output.audios]

    def sample_rate(self, pipe: Any) -> int:
        return int(pipe.vae.config.sampling_rate)

    def train_conditioning(self, pipe: Any, prompts: Sequence[str], device: torch.device,
                           settings: Mapping[str, Any] | None = None) -> Conditioning:
        """What the pipeline feeds the DiT for ``prompts`` (no CFG): the masked, projected T5 tokens
        followed by the start/end-seconds tokens (cross-attention), and the seconds as global states.
        Gradients flow (the toy trainer trains the text encoder through this)."""
        seconds = float((settings or self.defaults)["audio_end_in_s"])
        enc = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
        text = pipe.text_encoder(ids, attention_mask=mask)[0]
        text = pipe.projection_model(text_hidden_states=text).text_hidden_states
        text = text * mask.unsqueeze(-1).to(text.dtype)
        n = len(prompts)
        secs = pipe.projection_model(start_seconds=torch.zeros(n, device=device),
                                     end_seconds=torch.full((n,), seconds, device=device))
        start, end = secs.seconds_start_hidden_states, secs.seconds_end_hidden_states
        return {"encoder_hidden_states": torch.cat([text, start, end], dim=1),
                "global_hidden_states": torch.cat([start, end], dim=2)}

    def denoise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        dit, glob = pipe.transformer, cond["global_hidden_states"]
        rotary = get_1d_rotary_pos_embed(dit.config.attention_head_dim // 2, x.shape[2] + glob.shape[1],
                                         use_real=True, repeat_interleave_real=False)
        return dit(x, t, encoder_hidden_states=cond["encoder_hidden_states"], global_hidden_states=glob,
                   rotary_embedding=tuple(r.to(x.device) for r in rotary), return_dict=False)[0]

    def sample_shape(self, pipe: Any, settings: Mapping[str, Any]) -> tuple[int, ...]:
        # The pipeline always denoises transformer.sample_size latent frames (and trims the output).
        return (int(pipe.vae.config.audio_channels), int(pipe.transformer.config.sample_size * pipe.vae.hop_length))

    def to_latents(self, pipe: Any, x: torch.Tensor) -> torch.Tensor:
        return pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean  # decoded unscaled
