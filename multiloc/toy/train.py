"""Training the built-in toy models from their registry entry (``multiloc train-toy``).

The architecture comes from the model's YAML (``configs/models/toy-shapes.yaml``) without its
``weights`` key, built with the entry's seed; the data is drawn on the fly (:mod:`.shapes`); every
random choice comes from seeded generators, so a run on the same machine reproduces the shipped
weights bit for bit (other CPUs or thread counts may differ in the last bits of float sums).

Example::

    from multiloc.toy.train import train_shapes
    report = train_shapes("out/toy")      # out/toy/toy-shapes.safetensors, out/toy/toy-shapes.json
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build import build_pipeline, component_state
from ..objectives import descend, objective_for  # descend: re-exported for the other toy trainers
from . import shapes

# Chosen to fit a few minutes on a shared 2-core CPU while every held-out prompt is read back right.
# One thread: these tensors are so small that thread synchronization costs more than it saves (on a
# loaded machine, 5-20x more), and a fixed thread count keeps float sums, so the weights, reproducible.
SHAPES_RECIPE = {"steps": 800, "batch_size": 32, "lr": 3e-3, "warmup": 100, "uncond_p": 0.1, "seed": 0,
                 "threads": 1}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, restoring the previous count after (also on errors)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cosine_schedule(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(i, steps) / steps)))


def log_progress(log: Callable[[str], None], step: int, steps: int, losses: list[float], start: float) -> None:
    """Every 100 steps and at the last: the mean loss of the last 100 steps and the time so far."""
    if (step + 1) % 100 == 0 or step + 1 == steps:
        log(f"step {step + 1}/{steps}  loss {np.mean(losses[-100:]):.4f}  {time.perf_counter() - start:.0f} s")


def save_toy(out: Path, name: str, components: dict[str, Any], report: dict[str, Any],
             accuracy: Callable[[], dict[str, Any]] | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``OUT/NAME.safetensors`` (the components' tensors, the recipe as metadata) and
    ``OUT/NAME.json`` (``report``, plus ``accuracy()`` and the settings it ran with unless None)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_file(component_state(components), str(weights), metadata={"recipe": json.dumps(report["recipe"])})
    if accuracy is not None:
        defaults = _defaults(name)
        report["accuracy"] = accuracy()
        report["accuracy_settings"] = {"steps": defaults["steps"], "guidance": defaults["guidance"], "seeds": 5}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) in {report['train_s']:.0f} s"
        + (f"; accuracy {json.dumps(report['accuracy'])}" if accuracy is not None else ""))
    return report


def world_accuracy(pipe: Any, name: str, world: Any, readers: dict[str, Callable[[Any, tuple], bool]],
                   unit: str, seeds: tuple[int, ...] = (0, 1, 2, 3, 4), **settings: Any) -> dict[str, dict[str, float]]:
    """For the training and held-out prompts of a toy ``world`` (a module with ``combos(split)`` and
    ``prompt(*combo)``): how often each reader finds what the prompt names (``reader(output, combo)``)
    and how often all do (``both``), over ``seeds``, with registry entry ``name``'s settings unless
    ``settings`` override them; ``unit`` counts the outputs."""
    import multiloc

    model = multiloc.load(pipe, settings={**_defaults(name), **settings})
    out: dict[str, dict[str, float]] = {}
    for split in ("train", "held-out"):
        combos = world.combos(split)
        hits: dict[str, list[bool]] = {k: [] for k in [*readers, "both"]}
        for seed in seeds:
            outputs = model.generate([world.prompt(*c) for c in combos], seed=seed)
            for combo, output in zip(combos, outputs):
                got = [reader(output, combo) for reader in readers.values()]
                for key, hit in zip(readers, got):
                    hits[key].append(hit)
                hits["both"].append(all(got))
        out[split] = {k: round(float(np.mean(v)), 3) for k, v in hits.items()}
        out[split][unit] = len(combos) * len(seeds)
    return out


def _spec(name: str) -> dict[str, Any]:
    from .. import registry

    entry = registry.model_spec(name)
    spec = copy.deepcopy(entry["build"])
    spec.pop("weights", None)  # the architecture alone, with the entry's seeded initial weights
    return spec


def _defaults(name: str) -> dict[str, Any]:
    from .. import registry

    return dict(registry.model_spec(name).get("defaults", {}))


def _tokens(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    # As IFPipeline.encode_prompt tokenizes: padded to 77, with the attention mask.
    enc = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def train_shapes(out: str | Path, *, steps: int | None = None, log: Callable[[str], None] = print,
                 evaluate: bool = True, **recipe: Any) -> dict[str, Any]:
    """Train ``toy-shapes`` on coloured shapes; write ``OUT/toy-shapes.safetensors`` and a JSON
    report (recipe, loss, time and, with ``evaluate``, the scorers' accuracy on training and
    held-out prompts)."""
    r = {**SHAPES_RECIPE, **recipe, **({"steps": steps} if steps else {})}
    with torch_threads(r["threads"]):
        return _train_shapes(Path(out), r, log, evaluate)


def _train_shapes(out: Path, r: dict[str, Any], log: Callable[[str], None], evaluate: bool) -> dict[str, Any]:

    spec = _spec("toy-shapes")
    words = spec["components"]["tokenizer"]["config"]["words"]
    if sorted(words) != sorted(shapes.vocabulary()):
        raise ValueError("the toy-shapes tokenizer's words differ from the toy world's vocabulary")
    pipe = build_pipeline(spec, seed=spec.get("seed", 0))
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    train = shapes.combos("train")
    images = torch.from_numpy(np.stack([shapes.render(*t) for t in train])).permute(0, 3, 1, 2) * 2 - 1
    ids, att = _tokens(pipe.tokenizer, [shapes.prompt(*t) for t in train] + [""])
    gen = torch.Generator().manual_seed(r["seed"])
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=r["lr"], weight_decay=0.0, foreach=True)
    sched = cosine_schedule(opt, r["warmup"], r["steps"])
    unet.train()
    text_encoder.train()
    objective = objective_for(scheduler)  # prediction_type: sample (the clean image)
    start, losses = time.perf_counter(), []
    for step in range(r["steps"]):
        b = r["batch_size"]
        pick = torch.randint(len(train), (b,), generator=gen)
        # Some prompts dropped to "" so the model also learns the unconditional output CFG needs.
        text = torch.where(torch.rand(b, generator=gen) < r["uncond_p"], len(train), pick)
        noised = objective.noise(images[pick], gen)
        ehs = text_encoder(ids[text], attention_mask=att[text])[0]
        # The model predicts the clean image (prediction_type: sample): each prompt names one image,
        # so this target is learnt in far fewer steps than the noise is.
        pred = unet(noised.x, noised.t, encoder_hidden_states=ehs).sample[:, :3]  # the first half of IF's 6 channels
        loss = noised.loss(pred)
        descend(loss, opt, params)
        sched.step()
        losses.append(loss.item())
        log_progress(log, step, r["steps"], losses, start)
    train_s = time.perf_counter() - start
    unet.eval()
    text_encoder.eval()
    report: dict[str, Any] = {"model": "toy-shapes", "recipe": r, "train_s": round(train_s, 1),
                              "final_loss": float(np.mean(losses[-100:]))}
    return save_toy(out, "toy-shapes", {"unet": unet, "text_encoder": text_encoder}, report,
                    (lambda: evaluate_shapes(pipe)) if evaluate else None, log)


def evaluate_shapes(pipe: Any, seeds: tuple[int, ...] = (0, 1, 2, 3, 4), model: str = "toy-shapes",
                    **settings: Any) -> dict[str, dict[str, float]]:
    """The ``colour`` and ``shape`` scorers' accuracy (the named colour / shape is the one read
    back) on the generations of ``pipe`` (a toy-shapes world model, registry entry ``model``), for
    training and held-out prompts, over ``seeds``, with the entry's settings (steps, guidance ...)
    unless ``settings`` override them."""
    return world_accuracy(pipe, model, shapes, {
        "colour": lambda img, combo: shapes.best_colour(img) == combo[0],
        "shape": lambda img, combo: shapes.best_shape(img) == combo[1],
    }, "images", seeds, **settings)


def _lazy(module: str, function: str) -> Callable[..., dict[str, Any]]:
    """A trainer imported on first call: the other toys' trainers import this module's helpers."""
    def train(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return getattr(import_module(module, __package__), function)(*args, **kwargs)

    return train


# toy model name -> trainer (``multiloc train-toy MODEL``); each writes OUT/MODEL.safetensors + OUT/MODEL.json
TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "toy-shapes": train_shapes,
    "toy-shapes-dit": _lazy(".train_dit", "train_shapes_dit"),
    "toy-tones": _lazy(".train_audio", "train_tones"),
}
