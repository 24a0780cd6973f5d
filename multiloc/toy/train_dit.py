"""Training ``toy-shapes-dit``: the toy shapes world drawn by a diffusion transformer (PixArt-alpha).

Two phases, both from the registry entry (``configs/models/toy-shapes-dit.yaml``) built with its
seed: first the tiny ``AutoencoderKL`` learns to reconstruct the training images (16 px -> 8 x 8 x 4
latents), then its latents are normalized inside its weights (so the entry's ``scaling_factor`` is
1.0), then the ``PixArtTransformer2DModel`` and the ``T5EncoderModel`` learn to denoise those latents
given the prompt. The transformer's loss adds ``attn2_l1`` x the sum over blocks of the norm of each
``attn2``'s output projection (a group lasso: a block's cross-attention is either used or switched
off), so the model reads the prompt in as few blocks as it can; which blocks is left to training.
Without it (``attn2_l1=0``) the colour is spread over blocks 0-3 and no set of 3 sites moves 80% of
it. Held-out prompts stay out of both phases. Every random choice comes from seeded generators, so a
run on the same machine with the recipe's one thread reproduces the shipped weights bit for bit.

Example::

    from multiloc.toy.train_dit import train_shapes_dit
    report = train_shapes_dit("out/toy")   # out/toy/toy-shapes-dit.safetensors, out/toy/toy-shapes-dit.json
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build import build_pipeline
from ..objectives import objective_for
from . import shapes
from .train import (
    _defaults,
    _spec,
    cosine_schedule,
    descend,
    evaluate_shapes,
    log_progress,
    save_toy,
    torch_threads,
)

NAME = "toy-shapes-dit"
# Chosen to fit a few minutes on one thread of a shared 2-core CPU (see train.py on why one thread).
DIT_RECIPE = {"vae_steps": 1000, "vae_lr": 3e-3, "kl": 1e-5, "steps": 2500, "batch_size": 32, "lr": 1e-3,
              "warmup": 100, "uncond_p": 0.1, "attn2_l1": 3e-3, "seed": 0, "threads": 1}


def train_shapes_dit(out: str | Path, *, steps: int | None = None, log: Callable[[str], None] = print,
                     evaluate: bool = True, **recipe: Any) -> dict[str, Any]:
    """Train ``toy-shapes-dit``; write ``OUT/toy-shapes-dit.safetensors`` and a JSON report (recipe,
    losses, time, the VAE's reconstruction accuracy and, with ``evaluate``, the scorers' accuracy on
    training and held-out prompts). ``steps`` (a quick run) sets the transformer's steps and caps the VAE's."""
    r = {**DIT_RECIPE, **recipe}
    if steps:
        r.update(steps=steps, vae_steps=min(r["vae_steps"], steps))
    with torch_threads(r["threads"]):
        return _train(Path(out), r, log, evaluate)


def _images(split: str) -> torch.Tensor:
    """The split's images, (N, 3, 16, 16) in [-1, 1] as the VAE reads them."""
    return torch.from_numpy(np.stack([shapes.render(*t) for t in shapes.combos(split)])).permute(0, 3, 1, 2) * 2 - 1


def _read_back(images: torch.Tensor, split: str) -> dict[str, float]:
    """Share of ``images`` (in [-1, 1]) whose colour and shape read back as the split's prompts name."""
    hits = []
    for (colour, shape, _), img in zip(shapes.combos(split), images):
        a = ((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
        hits.append(shapes.best_colour(a) == colour and shapes.best_shape(a) == shape)
    return float(np.mean(hits))


def train_vae(vae: Any, images: torch.Tensor, r: dict[str, Any], gen: torch.Generator,
              log: Callable[[str], None]) -> list[float]:
    """Reconstruct ``images`` through the sampled latent (so the decoder tolerates latents a little
    off the encoder's, as the transformer's will be); a small KL term keeps the latents tame."""
    opt = torch.optim.AdamW(vae.parameters(), lr=r["vae_lr"], weight_decay=0.0, foreach=True)
    sched = cosine_schedule(opt, min(50, r["vae_steps"]), r["vae_steps"])
    vae.train()
    losses = []
    for step in range(r["vae_steps"]):
        posterior = vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, images) + r["kl"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == r["vae_steps"]:
            log(f"vae step {step + 1}/{r['vae_steps']}  loss {np.mean(losses[-100:]):.5f}")
    vae.eval()
    return losses


@torch.no_grad()
def normalize_latents(vae: Any, images: torch.Tensor) -> None:
    """Fold a per-channel affine map into ``quant_conv`` / ``post_quant_conv`` so the latent means of
    ``images`` have zero mean and unit variance per channel: the scale the transformer's noise
    assumes, with the pipeline's ``scaling_factor`` left at 1.0. Reconstructions are unchanged."""
    c = vae.config.latent_channels
    mean = vae.encode(images).latent_dist.mean
    m, s = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
    q, p = vae.quant_conv, vae.post_quant_conv
    # quant_conv's first c outputs are the means: z' = (z - m) / s; its last c the log-variances: - 2 log s.
    q.weight[:c] /= s.view(-1, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - m) / s
    q.bias[c:] -= 2 * s.log()
    # post_quant_conv reads z = z' * s + m.
    p.bias += (p.weight[:, :, 0, 0] @ m)
    p.weight *= s.view(1, -1, 1, 1)


def _train(out: Path, r: dict[str, Any], log: Callable[[str], None], evaluate: bool) -> dict[str, Any]:

    spec = _spec(NAME)
    words = spec["components"]["tokenizer"]["config"]["words"]
    if sorted(words) != sorted(shapes.vocabulary()):
        raise ValueError(f"the {NAME} tokenizer's words differ from the toy world's vocabulary")
    pipe = build_pipeline(spec, seed=spec.get("seed", 0))
    vae, transformer, text_encoder, scheduler = pipe.vae, pipe.transformer, pipe.text_encoder, pipe.scheduler
    gen = torch.Generator().manual_seed(r["seed"])
    images = _images("train")
    start = time.perf_counter()

    vae_losses = train_vae(vae, images, r, gen, log)
    normalize_latents(vae, images)
    vae_s = time.perf_counter() - start
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
        recon = {split: _read_back(vae.decode(vae.encode(_images(split)).latent_dist.mean).sample, split)
                 for split in ("train", "held-out")}
    log(f"vae: {vae_s:.0f} s; reconstructions read back right: {recon}")

    train = shapes.combos("train")
    max_len = _defaults(NAME)["max_sequence_length"]
    # As PixArtAlphaPipeline.encode_prompt tokenizes: padded to max_sequence_length, with the mask.
    enc = pipe.tokenizer([shapes.prompt(*t) for t in train] + [""], padding="max_length", max_length=max_len,
                         truncation=True, return_tensors="pt")
    ids, att = enc.input_ids, enc.attention_mask
    params = [*transformer.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=r["lr"], weight_decay=0.0, foreach=True)
    sched = cosine_schedule(opt, r["warmup"], r["steps"])
    transformer.train()
    text_encoder.train()
    objective = objective_for(scheduler)  # prediction_type: sample, as toy-shapes
    cond = {"resolution": None, "aspect_ratio": None}
    losses: list[float] = []
    dit_start = time.perf_counter()
    for step in range(r["steps"]):
        b = r["batch_size"]
        pick = torch.randint(len(train), (b,), generator=gen)
        # Some prompts dropped to "" so the model also learns the unconditional output CFG needs.
        text = torch.where(torch.rand(b, generator=gen) < r["uncond_p"], len(train), pick)
        noised = objective.noise(latents[pick], gen)
        ehs = text_encoder(ids[text], attention_mask=att[text])[0]
        pred = transformer(noised.x, encoder_hidden_states=ehs, encoder_attention_mask=att[text], timestep=noised.t,
                           added_cond_kwargs=cond).sample
        loss = noised.loss(pred)
        total = loss
        if r["attn2_l1"]:  # the group lasso of the module docstring
            total = loss + r["attn2_l1"] * sum(blk.attn2.to_out[0].weight.norm() for blk in transformer.transformer_blocks)
        descend(total, opt, params)
        sched.step()
        losses.append(loss.item())
        log_progress(log, step, r["steps"], losses, dit_start)
    train_s = time.perf_counter() - start
    transformer.eval()
    text_encoder.eval()
    report: dict[str, Any] = {"model": NAME, "recipe": r, "train_s": round(train_s, 1), "vae_s": round(vae_s, 1),
                              "vae_final_loss": float(np.mean(vae_losses[-50:])),
                              "vae_reconstruction": recon, "final_loss": float(np.mean(losses[-100:]))}
    return save_toy(out, NAME, {"transformer": transformer, "vae": vae, "text_encoder": text_encoder}, report,
                    (lambda: evaluate_shapes(pipe, model=NAME)) if evaluate else None, log)
