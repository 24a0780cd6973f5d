"""Stable Audio Open (``StableAudioDiTModel``): text-to-audio with a T5 text encoder.

Sites: every transformer block's ``attn2`` (cross-attention over the projected T5 tokens followed by the
start/end-seconds tokens); its ``to_k`` / ``to_v`` outputs are patched. The pipeline encodes the prompts
itself (padding to the tokenizer's fixed length, so a row's conditioning never depends on its batch-mates);
the donor row's text goes through the same projection and seconds tokens as the base's. The unconditional
copy under CFG is the pipeline's zero embedding for every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from multiloc.adapter import Adapter
from multiloc.sites import SiteRule


def is_cross_attn(name: str, module: nn.Module) -> bool:
    return name.endswith("attn2") and getattr(module, "is_cross_attention", False)


class StableAudioAdapter(Adapter):
    name = "stable-audio"
    modality = "audio"
    denoiser_attr = "transformer"
    denoiser_classes = ("StableAudioDiTModel",)
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
