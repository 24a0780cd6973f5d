"""``multiloc finetune``: LoRA (PEFT) on exactly the chosen sites' projections, with the family's own loss.

The paper's localization-based fine-tuning: rank-4 LoRA on ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``
of the localized cross-attention layers only; everything else stays frozen. The data is a folder of
captioned images or clips (:mod:`.data`); the loss is the denoiser's training objective derived from
the pipeline's scheduler (:mod:`multiloc.objectives`); the denoiser is called as the family's pipeline
calls it (``Adapter.denoise``; supported: U-Net families but SDXL, PixArt, Stable Audio).

Training saves a checkpoint (the LoRA, the optimizer and the random generator's state) every
``checkpoint_every`` steps, atomically; running the same call again after an interruption continues
from it and gives the same LoRA as an uninterrupted run. The result is a LoRA folder (:mod:`.lora`)
that ``multiloc generate --lora DIR`` and, where the pipeline has a LoRA loader, stock
``pipe.load_lora_weights(DIR)`` load. The model is left as it was found (the LoRA is removed).

Example::

    model = multiloc.load("toy-shapes")
    path = multiloc.finetune(model, "data/", sites="up_blocks.1.attentions.1.*", steps=200, out="out/lora")
    with multiloc.control.lora_applied(model, path):
        images = model.generate(["a small cyan circle"])
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..objectives import descend, objective_for
from ..results import write_atomic
from ..sites import Site
from .data import load_folder
from .lora import DEFAULT_TARGETS, attached, lora_config, lora_modules, lora_state, save_lora, set_lora_state
from .targets import resolve_sites

CHECKPOINT = "checkpoint.pt"


def finetune(model: Any, data: str | Path, *, sites: Any = None, concept: str | None = None, rank: int = 4,
             targets: Sequence[str] = DEFAULT_TARGETS, steps: int = 200, lr: float = 1e-3, seed: int = 0,
             batch_size: int = 4, out: str | Path, checkpoint_every: int = 50, progress: bool = True) -> Path:
    """Train a rank-``rank`` LoRA on ``targets`` of ``sites`` (a spec, a scan's result, a list of
    :class:`~multiloc.sites.Site`, or None: the model's published sites for ``concept``) to denoise
    the captioned samples of the folder ``data``; write it to ``out`` and return ``out``.

    >>> finetune(model, "data/", sites="up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    ...          steps=100, out="out/lora")
    PosixPath('out/lora')
    """
    for name, value, least in (("steps", steps, 1), ("batch size", batch_size, 1), ("checkpoint-every", checkpoint_every, 0)):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    if not lr > 0:
        raise UserError(f"the learning rate must be positive, got {lr}")
    model.adapter.check_finetune(model.pipe)
    chosen = list(sites) if isinstance(sites, (list, tuple)) and all(isinstance(s, Site) for s in sites) \
        else resolve_sites(model, sites, concept=concept)
    config = lora_config(lora_modules(model, chosen, targets), rank)
    objective = objective_for(model.pipe.scheduler)
    samples, captions = load_folder(model, data)
    latents, cond, rows = _encode(model, samples, captions)
    dtype = model.denoiser.dtype  # the objective works in float32; the denoiser reads its own dtype
    try:
        with torch.no_grad():  # fails fast (mismatched shapes) before any training
            model.adapter.denoise(model.pipe, latents[:1].to(dtype), objective.noise(latents[:1], torch.Generator()).t,
                                  {k: v[rows[:1]] for k, v in cond.items()})
    except RuntimeError as e:
        raise UserError(f"{model.name}'s denoiser cannot read the latents its VAE makes of the data (shape "
                        f"{tuple(latents.shape[1:])}: {str(e).splitlines()[0][:100]})") from None
    out = Path(out)
    run = {"model": model.name, "sites": [s.name for s in chosen], "rank": rank, "targets": list(targets),
           "steps": steps, "lr": lr, "seed": seed, "batch_size": batch_size,
           "data": {"folder": str(Path(data).resolve()), "samples": len(captions), "sha256": _fingerprint(samples, captions)}}
    # The denoiser stays in eval mode (no dropout): a run is a function of its seed, so resuming is exact.
    with attached(model, config, seed) as params:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        start, losses = _resume(model, out / CHECKPOINT, run, opt, gen)
        t0 = time.perf_counter()
        bar = tqdm(total=steps, initial=start, desc=f"finetune {model.name}", unit="step", disable=not progress)
        for step in range(start, steps):
            pick = torch.randint(len(latents), (batch_size,), generator=gen)
            noised = objective.noise(latents[pick], gen)
            pred = model.adapter.denoise(model.pipe, noised.x.to(dtype), noised.t,
                                         {k: v[rows[pick]] for k, v in cond.items()})
            loss = noised.loss(pred.float())
            descend(loss, opt, params)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                save_checkpoint(out / CHECKPOINT, model, run, opt, gen, step + 1, losses)
        bar.close()
        info = {**run, "alpha": config.lora_alpha, "objective": objective.name,
                "trainable_params": sum(p.numel() for p in params),
                "final_loss": float(np.mean(losses[-20:])), "train_s": round(time.perf_counter() - t0, 1)}
        save_lora(out, model, config, info)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


def _encode(model: Any, samples: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                            torch.Tensor]:
    """Clean latents of ``samples``, the conditioning of each distinct caption, and each sample's row
    in it (the text encoders stay frozen: encoded once)."""
    unique = list(dict.fromkeys(captions))
    with torch.no_grad():
        latents = torch.cat([model.adapter.to_latents(model.pipe, samples[i:i + 16]) for i in range(0, len(samples), 16)])
        cond = model.adapter.train_conditioning(model.pipe, unique, model.device, settings=model.settings)
    rows = torch.tensor([unique.index(c) for c in captions])
    return latents.to(model.device, torch.float32), {k: v.detach() for k, v in cond.items()}, rows.to(model.device)


def _fingerprint(samples: torch.Tensor, captions: list[str]) -> str:
    h = hashlib.sha256(samples.numpy().tobytes())
    h.update(json.dumps(captions).encode())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, model: Any, run: dict[str, Any], opt: torch.optim.Optimizer,
                    gen: torch.Generator, step: int, losses: list[float]) -> None:
    """Write what resuming needs (the LoRA, the optimizer, the generator, the step) atomically.

    >>> save_checkpoint(Path("out/lora/checkpoint.pt"), model, run, opt, gen, step=50, losses=losses)
    """
    buf = io.BytesIO()
    torch.save({"run": run, "step": step, "lora": lora_state(model), "opt": opt.state_dict(),
                "gen": gen.get_state(), "losses": losses}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())


def _resume(model: Any, path: Path, run: dict[str, Any], opt: torch.optim.Optimizer,
            gen: torch.Generator) -> tuple[int, list[float]]:
    """Load ``path``'s checkpoint into the attached LoRA, ``opt`` and ``gen``: (the step, the losses);
    (0, []) when there is none. A checkpoint of another run is refused."""
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint: one line
        raise UserError(f"{path} is damaged; delete it to start over") from None
    if state.get("run") != run:
        diff = sorted(k for k in run if state.get("run", {}).get(k) != run[k])
        raise UserError(f"{path} is a checkpoint of another run (different {', '.join(diff)}); use another "
                        "--out, or delete it to start over")
    set_lora_state(model, state["lora"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    return int(state["step"]), list(state["losses"])
