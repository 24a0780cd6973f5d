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

SITES_HELP = ("a site spec ('55-57', 'up_blocks.0.*'), or a scan's result.json (its selected set); "
              "default: the sites published for the model in its registry entry")


def model_options(p: argparse.ArgumentParser) -> None:
    """--model, --steps, --guidance, --set, --device, --dtype: as ``multiloc scan`` reads them."""
    p.add_argument("--model", required=True, help="registry name (see `multiloc models`), local directory or hub id")
    p.add_argument("--steps", type=_positive("--steps"), help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model setting, repeatable (e.g. audio_length_in_s=4, height=512)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (auto: fp16 on cuda, else fp32)")


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
    from .generate import Weights
    from .weights import check_weights, read_weights

    mods: list[Any] = []
    if args.weights:
        for path in args.weights:
            check_weights(model, read_weights(path))
        mods.append(Weights(args.weights))
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
    seed_options(p)
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8, help="prompts per generation (default: 8)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
