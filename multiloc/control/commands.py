"""The control commands of the ``multiloc`` CLI (``generate`` ...): parsers and handlers.

Each command adds its parser in :func:`add_commands`; the options every control command shares
(the model, its device and settings, seeds) come from :func:`model_options` and :func:`load_model`,
so they read and fail the same way everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import DTYPES, _positive, _settings, resolve_device, resolve_dtype
from .lora import DEFAULT_TARGETS

SITES_HELP = ("a site spec ('55-57', 'up_blocks.0.*'), or a scan's result.json (its selected set); "
              "default: the sites published for the model in its registry entry")


def model_options(p: argparse.ArgumentParser, sampling: bool = True, dtype: str = "auto") -> None:
    """--model, --steps, --guidance, --set, --device, --dtype: as ``multiloc scan`` reads them
    (without ``sampling``: no --steps / --guidance, for commands that do not generate; ``dtype``: the
    --dtype default)."""
    p.add_argument("--model", required=True, help="registry name (see `multiloc models`), local directory or hub id")
    if sampling:
        p.add_argument("--steps", type=_positive("--steps"), help="denoising steps (default: the model's)")
        p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model setting, repeatable (e.g. audio_length_in_s=4, height=512)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--dtype", default=dtype, choices=DTYPES,
                   help=f"weights dtype (auto: fp16 on cuda, else fp32; default: {dtype})")


def load_model(args: argparse.Namespace) -> Any:
    from .. import load

    device = resolve_device(args.device)
    return load(args.model, device=device, dtype=resolve_dtype(args.dtype, device),
                settings=_settings(args.set) or None)


def seed_list(args: argparse.Namespace) -> list[int]:
    """``--seed S --seeds N``: seeds S, S+1, ..., S+N-1."""
    return list(range(args.seed, args.seed + args.seeds))


def seed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--seeds", type=_positive("--seeds"), default=1, help="how many seeds, from --seed on (default: 1)")


# --- generate ---------------------------------------------------------------------------------
def modifiers_from_args(args: argparse.Namespace, model: Any) -> list[Any]:
    """The modifiers ``--weights`` (and, as they land, ``--lora`` / ``--steer``) ask for, checked
    against ``model`` before any generation runs."""
    from .generate import Lora, Weights
    from .lora import check_lora, read_lora
    from .weights import check_weights, read_weights

    mods: list[Any] = []
    if args.weights:
        for path in args.weights:
            check_weights(model, read_weights(path))
        mods.append(Weights(args.weights))
    if args.lora:
        check_lora(model, read_lora(args.lora))
        mods.append(Lora(args.lora))
    return mods


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate, save_generations

    model = load_model(args)
    modifiers = modifiers_from_args(args, model)
    seeds = seed_list(args)
    out = Path(args.out)
    outs = generate(model, args.prompt, seeds=seeds, modifiers=modifiers, steps=args.steps,
                    guidance=args.guidance, batch_size=args.batch_size, progress=not args.quiet)
    info = {"modifiers": [m.describe() for m in modifiers]}
    files = save_generations(out, model, args.prompt, seeds, outs, info)
    print(f"wrote {len(files)} outputs and {out / 'generate.json'}")
    return 0


def add_commands(sub: Any) -> None:
    """Add the control commands to the ``multiloc`` sub-parsers."""
    p = sub.add_parser("generate", help="plain generation, with weight edits (and LoRA, steering) applied")
    model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    p.add_argument("--weights", action="append", metavar="FILE",
                   help="a weight file from `multiloc rewrite`, applied for this run; repeatable")
    p.add_argument("--lora", metavar="DIR", help="a LoRA folder from `multiloc finetune`, loaded for this run")
    seed_options(p)
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8, help="prompts per generation (default: 8)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("finetune", help="train a LoRA on exactly the localized sites (PEFT; rerun to resume)")
    model_options(p, sampling=False, dtype="float32")  # training: fp32 base weights unless asked (the LoRA is fp32 always)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="training folder: files plus metadata.jsonl lines {\"file_name\": ..., \"text\": ...}")
    p.add_argument("--sites", help=SITES_HELP)
    p.add_argument("--concept", help="which published site set, when the model publishes several")
    p.add_argument("--rank", type=_positive("--rank"), default=4, help="LoRA rank (default: 4)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated projections of each site to adapt (default: {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--steps", type=_positive("--steps"), default=200, help="training steps (default: 200)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW; default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the LoRA's initial weights and the batches (default: 0)")
    # dest: cli.main checks any ``batch_size`` against scan's minimum of 2
    p.add_argument("--batch-size", dest="train_batch_size", metavar="B", type=_positive("--batch-size"), default=4,
                   help="samples per step (default: 4)")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="save a checkpoint every N steps, 0: never (default: 50)")
    p.add_argument("--out", required=True, help="the LoRA folder to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .data import read_metadata
    from .finetune import finetune

    read_metadata(args.data)  # a bad folder fails before the model loads
    model = load_model(args)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    out = finetune(model, args.data, sites=args.sites, concept=args.concept, rank=args.rank, targets=targets,
                   steps=args.steps, lr=args.lr, seed=args.seed, batch_size=args.train_batch_size, out=args.out,
                   checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    print(f"wrote the LoRA to {out} (load it with: multiloc generate --model {args.model} --lora {out} ...)")
    return 0
