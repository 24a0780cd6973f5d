"""AudioLDM2 (``AudioLDM2UNet2DConditionModel``): text-to-audio and text-to-music.

Sites: per resnet position the U-Net has one transformer per entry of its block's
``cross_attention_dim`` list, e.g. ``[None, 768, 1024]``: the ``None`` one is self-attention only (its
``attn2`` is a second self-attention, not a site); the next reads the **gpt2** stream (the 8 hidden states
GPT-2 generates from the projected CLAP + T5 embeddings, ``encoder_hidden_states``); the last reads the
**t5** stream (Flan-T5 token embeddings with their mask, ``encoder_hidden_states_1``). That is the routing of
diffusers' blocks (entries at list position <= 1 read the first stream, later ones the second). Each
site's ``to_k`` / ``to_v`` outputs are patched (a T5 site also takes the donor's attention mask, since the
donor's caption may be longer or shorter than the base's); a scan patches both streams' sites from the donor row, and
``stream="t5"`` (CLI ``--stream t5``) keeps one.

Prompts are encoded one at a time, each with its own empty negative prompt, exactly as ``pipe(prompt)``
would for that prompt alone, so a row's conditioning never depends on its batch-mates; the T5 stream is then
right-padded to a fixed length with masked zeros (masked keys get zero attention weight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from multiloc.adapter import Adapter, Conditioning
from multiloc.errors import UserError
from multiloc.sites import Site, SiteRule, find_sites

# encode_prompt's outputs under CFG: [negative; positive] along dim 0.
_KEYS = (("prompt_embeds", "negative_prompt_embeds"), ("attention_mask", "negative_attention_mask"),
         ("generated_prompt_embeds", "negative_generated_prompt_embeds"))
MAX_T5_TOKENS = 512


def text_streams(denoiser: nn.Module) -> dict[str, str]:
    """``{attn2 module name: "gpt2" | "t5"}`` for the transformers that read text."""
    streams = {}
    for name, block in denoiser.named_modules():
        dims = vars(block).get("cross_attention_dim")  # a block attribute (not the model config)
        if not isinstance(dims, (list, tuple)) or not hasattr(block, "attentions"):
            continue
        for k, transformer in enumerate(block.attentions):
            idx = k % len(dims)
            if dims[idx] is None:
                continue  # self-attention-only transformer
            stream = "gpt2" if idx <= 1 else "t5"
            for sub, _ in transformer.named_modules():
                if sub.endswith("attn2"):
                    streams[f"{name}.attentions.{k}.{sub}"] = stream
    return streams


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[1] >= length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


class AudioLDM2Adapter(Adapter):
    name = "audioldm2"
    text_encoders = (("text_encoder.text_model", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    modality = "audio"
    denoiser_attr = "unet"
    denoiser_classes = ("AudioLDM2UNet2DConditionModel",)
    cached_donor = True  # pure cross-attention: the donor's keys/values are the same at every step
    block_order = ("down_blocks", "mid_block", "up_blocks")
    defaults = {"steps": 100, "guidance": 4.5, "audio_length_in_s": 9.0}
    no_finetune = ("its VAE reads log-mel spectrograms, and the pipeline carries no mel front end to turn "
                   "training clips into them")
    negative_keys = dict(_KEYS)

    def sites(self, denoiser: nn.Module, settings: Mapping[str, Any] | None = None) -> list[Site]:
        streams = text_streams(denoiser)
        # The T5 stream is padded and masked: a T5 site takes the donor's mask with its keys/values.
        rules = (
            SiteRule(kind="cross_attn", where=lambda n, m: streams.get(n) == "gpt2", taps=("to_k", "to_v"),
                     stream="gpt2"),
            SiteRule(kind="cross_attn", where=lambda n, m: streams.get(n) == "t5",
                     taps=("to_k", "to_v"), masks=("attention_mask",), stream="t5"),
        )
        return find_sites(denoiser, rules, self.block_order)

    def prepare(self, pipe: Any) -> Any:
        """Under transformers 5 the pipeline's ``generate_language_model`` needs GPT-2 with its LM head."""
        from transformers import GPT2LMHeadModel, GPT2Model

        lm = getattr(pipe, "language_model", None)
        if isinstance(lm, GPT2Model):
            head = GPT2LMHeadModel(lm.config)
            head.transformer = lm
            head.tie_weights()  # the LM head shares the token embedding, as in GPT-2 checkpoints
            head.to(device=lm.device, dtype=lm.dtype).eval()
            pipe.register_modules(language_model=head)
        return pipe

    def encode(self, pipe: Any, prompts: Sequence[str], device: torch.device,
               settings: Mapping[str, Any] | None = None) -> Conditioning:
        rows = []
        for prompt in prompts:
            out = pipe.encode_prompt([prompt], device, num_waveforms_per_prompt=1,
                                     do_classifier_free_guidance=True)
            rows.append(out)
        limit = getattr(pipe.tokenizer_2, "model_max_length", MAX_T5_TOKENS)
        length = max([min(int(limit), MAX_T5_TOKENS)] + [r[0].shape[1] for r in rows])
        cond: Conditioning = {}
        for i, (pos, neg) in enumerate(_KEYS):
            parts = [_pad(r[i], length) if i < 2 else r[i] for r in rows]
            cond[neg] = torch.cat([p[:1] for p in parts])
            cond[pos] = torch.cat([p[1:] for p in parts])
        return cond

    def pipeline_kwargs(self, pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {"audio_length_in_s": float(settings["audio_length_in_s"])}

    def token_positions(self, pipe: Any, prompt: str, words: Sequence[str]) -> list[int]:
        # The GPT-2 stream is generated tokens, not the prompt's: no position maps to a word there.
        raise UserError("token positions (used by --method trace and contribution) are not mapped for "
                        "AudioLDM2's generated GPT-2 stream; use --method patch")

    def outputs(self, pipeline_output: Any) -> list[np.ndarray]:
        return [np.asarray(a, dtype=np.float32) for a in pipeline_output.audios]

    def sample_rate(self, pipe: Any) -> int:
        return int(pipe.vocoder.config.sampling_rate)
