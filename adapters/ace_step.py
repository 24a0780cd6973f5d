"""ACE-Step 1.5 (``AceStepTransformer1DModel``, diffusers' ``AceStepPipeline``): text-to-music.

Sites: ``layers.N.cross_attn`` of the DiT; each reads the packed conditioning (lyrics, timbre and caption
tokens from the ``condition_encoder``, projected by the DiT's ``condition_embedder``) through ``to_k`` /
``to_v``, whose outputs are patched. Patching at the taps means the donor's caption goes through the very
same ``condition_encoder`` packing and ``condition_embedder`` as the base's.

The pipeline takes no embeddings: it formats each caption into its long instruction + metadata text and
encodes it inside the call, so rows are handed over as prompts. Its DiT ignores the conditioning mask
(padding tokens are attended), and captions are padded to the batch's longest; every generation of a scan
holds the donor and base prompts, so all of a pair's rows share one padded length whatever the batch size.
``max_text_length`` defaults generously (1024 tokens) so the caption is never cut.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from multiloc.adapter import Adapter, Conditioning
from multiloc.sites import SiteRule


def is_cross_attn(name: str, module: nn.Module) -> bool:
    return name.endswith(".cross_attn") and getattr(module, "is_cross_attention", False)


class AceStepAdapter(Adapter):
    name = "ace-step"
    modality = "audio"
    denoiser_attr = "transformer"
    denoiser_classes = ("AceStepTransformer1DModel",)
    # Pure cross-attention, but its pipeline encodes and pads the prompts to the batch's longest inside
    # its call: a donor captured alone does not line up with a batch of base rows, so it stays in-batch.
    cached_donor = False
    site_rules = (SiteRule(kind="cross_attn", where=is_cross_attn, taps=("to_k", "to_v")),)
    prompt_in_call = True
    no_negative = "its pipeline takes no negative prompt (its guidance runs against a learnt null condition)"
    no_finetune = "its DiT reads the packed lyric, timbre and caption sequence its pipeline builds inside the call"
    conditional_copy = 0  # its pipeline stacks (conditional, null) under guidance
    defaults = {"steps": 50, "guidance": 7.0, "audio_duration": 30.0, "max_text_length": 1024,
                "lyrics": "[Instrumental]"}

    def generate(self, pipe: Any, cond: Conditioning, *, seed: int, steps: int, guidance: float,
                 settings: dict[str, Any], output_type: str = "np") -> list[np.ndarray]:
        # The pipeline pairs lyrics with prompts one to one; every row sings the same lyrics.
        cond = {**cond, "lyrics": [settings.get("lyrics") or ""] * len(cond["prompt"])}
        return super().generate(pipe, cond, seed=seed, steps=steps, guidance=guidance, settings=settings,
                                output_type=output_type)

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {k: settings[k] for k in ("audio_duration", "max_text_length", "shift", "vocal_language")
                if settings.get(k) is not None}

    def outputs(self, pipeline_output: Any) -> list[np.ndarray]:
        return [np.asarray(a, dtype=np.float32) for a in pipeline_output.audios]

    def sample_rate(self, pipe: Any) -> int:
        return int(pipe.sample_rate)
