"""The control commands of the ``multiloc`` CLI (``generate``, ``steer`` ...): parsers and handlers.

Each command adds its parser in :func:`add_commands`; the options every control command shares
(the model, its device and settings, seeds) come from :func:`model_options` and :func:`load_model`,
so they read and fail the same way everywhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..cli import DTYPES, _positive, _settings, number, resolve_device, resolve_dtype
from ..errors import UserError
from . import DEFAULT_TARGETS

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
    """The modifiers ``--weights``, ``--lora`` and ``--steer``/``--alpha`` ask for, checked against
    ``model`` before any generation runs."""
    from .generate import Lora, Steer, Weights
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
    if args.steer:
        steer = Steer(args.steer, args.alpha, args.steps)
        steer.load(model)
        mods.append(steer)
    return mods


def check_steer_args(args: argparse.Namespace) -> None:
    """``--steer`` and ``--alpha`` come together (before the model loads: a typo fails in a second)."""
    from ..errors import UserError

    if (args.steer is None) != (args.alpha is None):
        raise UserError("--steer FILE and --alpha A go together")


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate, save_generations

    check_steer_args(args)
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


# --- edit -------------------------------------------------------------------------------------
def _methods(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _concept_scorer(name: str | None) -> str | None:
    """The scorer of a built-in concept (None if ``name`` is not one: it may only name a published set)."""
    from ..concepts import Concept
    from ..errors import UserError

    if name is None:
        return None
    try:
        return Concept.load(name).scorer
    except UserError:
        return None


def cmd_edit(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..scorers import scorer_names
    from .edit import (
        METHODS,
        check_from_step,
        check_method,
        edit,
        evaluate,
        make_scorer,
        read_pairs,
        save_edits,
        table,
    )

    # Everything a user can get wrong fails here, before weights load or anything is written.
    if args.pairs and (args.prompt or args.to):
        raise UserError("pass either --pairs FILE or --prompt P --to Q, not both")
    if not args.pairs and not (args.prompt and args.to):
        raise UserError("an edit needs --prompt P and --to Q (or --pairs FILE of 'P => Q' lines)")
    pairs = read_pairs(args.pairs) if args.pairs else [(args.prompt, args.to)]
    if not args.pairs and args.prompt == args.to:
        raise UserError("--prompt and --to are the same prompt: nothing to edit")
    methods = [m for text in (args.method or ["localized"]) for m in _methods(text)]
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown edit method {m!r}; known: {', '.join(METHODS)}")
    scorer = args.scorer or _concept_scorer(args.concept)
    for name in (scorer, args.keep):
        if name is not None and name not in scorer_names():
            raise UserError(f"unknown scorer {name!r}; known: {', '.join(scorer_names())}")
    if args.steps is not None and args.from_step is not None:
        check_from_step(args.from_step, args.steps)
    if args.sites is None and {"localized", "random-sites"} & set(methods):
        from .. import registry
        from .targets import scan_first

        if args.model in registry.model_names() and not registry.model_spec(args.model).get("localized"):
            raise scan_first(args.model)  # before the weights load
    model = load_model(args)
    steps = args.steps or model.settings["steps"]
    check_from_step(args.from_step, steps)
    for m in methods:
        check_method(model, m, args.guidance)
    main, keeper = make_scorer(model, scorer), make_scorer(model, args.keep)  # e.g. OCR missing: fail now
    if {"localized", "random-sites"} & set(methods):
        from .targets import resolve_sites

        resolve_sites(model, args.sites, concept=args.concept)  # "scan first" fails before generating
    seeds = seed_list(args)
    runs = [edit(model, p, q, sites=args.sites, concept=args.concept, from_step=args.from_step, seeds=seeds,
                 method=m, negative=args.negative, draws=args.draws, steps=args.steps, guidance=args.guidance,
                 progress=not args.quiet)
            for p, q in pairs for m in methods]
    report = evaluate(model, runs, scorer=main, keep=keeper, toxicity=args.toxicity)
    out = Path(args.out)
    files = save_edits(out, model, runs, report, {"pairs": [list(p) for p in pairs], "methods": methods})
    print(table(report["summary"]))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {len(files)} outputs and {out / 'edit.json'}")
    return 0


# --- rewrite ----------------------------------------------------------------------------------
def cmd_rewrite(args: argparse.Namespace) -> int:
    from .rewrite import TEMPLATES, check_templates, edit_pairs, parse_edit, rewrite
    from .weights import save_weights

    edits = [parse_edit(e) for e in args.edit]  # every input is checked before the model loads
    if args.lam < 0:
        raise UserError(f"--lam must be >= 0, got {args.lam}")
    if args.templates is not None:
        edit_pairs(edits, check_templates(args.templates))
    if not str(args.save).endswith(".safetensors"):
        raise UserError(f"--save {args.save}: a weight file is a .safetensors file")
    model = load_model(args)
    wf = rewrite(model, edits, preserve=args.preserve or (), sites=args.sites, concept=args.concept,
                 lam=args.lam, templates=args.templates or TEMPLATES[model.modality],
                 seeds=seed_list(args), steps=args.steps, guidance=args.guidance, progress=not args.quiet)
    path = save_weights(args.save, wf)
    res = wf.details["residual"]
    print(f"rewrote {len(wf.sites)} site{'s' * (len(wf.sites) != 1)} ({len(wf.tensors)} tensors) of {model.name} "
          f"from {len(wf.details['pairs'])} source/target prompt pairs and {len(wf.details['preserve_prompts'])} "
          f"preserved prompts, the targets included (lambda {args.lam})")
    for name in wf.sites:
        print(f"  {name}")
    print(f"edit prompts' keys/values, relative residual |W'c_src - W c_tgt| / |W c_tgt|: "
          f"{res['before']:.3f} before -> {res['after']:.3f} after; preserved prompts' drift "
          f"|W'c_p - W c_p| / |W c_p|: {res['preserve_drift']:.3f}")
    print(f"wrote {path}; use it with: multiloc generate --model {model.name} --weights {path} --prompt ...")
    return 0


# --- steer ------------------------------------------------------------------------------------
def cmd_steer(args: argparse.Namespace) -> int:
    from ..concepts import Concept
    from ..errors import UserError
    from ..localize import scorer_for
    from ..results import write_atomic
    from .steer import contrast, save_steering, steering_vectors
    from .steer_sweep import parse_alphas, plot_sweep, sweep
    from .targets import resolve_sites

    # Everything a user can get wrong fails before the model loads or any generation runs.
    sweeping = args.alphas is not None
    if not sweeping and (args.prompt or args.out or args.target):
        raise UserError("--prompt, --target and --out belong to the sweep: add --alphas lo:hi:n")
    if Path(args.save).is_dir():
        raise UserError(f"--save {args.save} is a directory; name the file, e.g. {Path(args.save) / 'steer.safetensors'}")
    alphas = parse_alphas(args.alphas) if sweeping else []
    if sweeping and not (args.prompt and args.out):
        raise UserError("--alphas sweeps: it needs --prompt P (repeatable) and --out DIR")
    concept = Concept.load(args.concept)
    targets = contrast(concept)
    if len(targets) > 1:
        print(f"warning: the pairs of {concept.name!r} move towards {len(targets)} targets ({', '.join(targets)}); "
              "a steering vector then points from the bases' mean, not to one concept (README 'Steering')",
              file=sys.stderr)
    target = args.target or (targets[0] if len(targets) == 1 else None)
    if sweeping and target is None:
        raise UserError(f"the sweep scores one target and {concept.name!r} has {len(targets) or 'no'} targets: "
                        "pass --target")
    model = load_model(args)
    chosen = resolve_sites(model, args.sites, concept=concept.name)
    scorer = scorer_for(model, concept) if sweeping else None
    vectors = steering_vectors(model, concept, sites=model.sites if sweeping else chosen, seeds=seed_list(args),
                               steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                               progress=not args.quiet)
    names = [s.name for s in chosen]
    path = save_steering(args.save, vectors.subset(names))
    print(f"wrote {path}: {len(names)} sites x {vectors.steps} steps of {concept.name!r} vectors "
          f"({len(concept.pairs)} pairs x {args.seeds} seeds)")
    if sweeping:
        record = sweep(model, vectors, names, args.prompt, alphas, scorer=scorer, target=target,
                       seeds=seed_list(args), steps=args.steps, guidance=args.guidance, progress=not args.quiet)
        out = Path(args.out)
        write_atomic(out / "sweep.json", json.dumps(record, indent=2) + "\n")
        write_atomic(out / "sweep.png", plot_sweep(record))
        print(sweep_table(record))
        print(f"wrote {out / 'sweep.json'} and sweep.png")
    return 0


def sweep_table(record: dict[str, Any]) -> str:
    """The sweep as a text table: alpha, then per mode the score, the preservation (and ``kept``)."""
    modes = [m for m, rows in record["modes"].items() if rows]
    first = record["modes"][modes[0]][0]
    metric = next(iter(first["preservation"]))
    kept = "kept" in first
    cols = [metric] + (["kept"] if kept else [])
    head = f"{'alpha':>7}" + "".join(f" | {m[:17]:<17}" + "".join(f" {c:>7}" for c in cols) for m in modes)
    lines = [f"score = {record['target']!r} by the concept's scorer (unsteered {record['unsteered_score']:.3f}); "
             f"{metric} to the unsteered output"
             + (f"; kept = the prompt's other attribute (unsteered {record['unsteered_kept']:.3f})" if kept else ""),
             head]
    for i, alpha in enumerate(record["alphas"]):
        cells = ""
        for m in modes:
            row = record["modes"][m][i]
            cells += f" | {row['score']:<17.3f} {row['preservation'][metric]:>7.3g}"
            cells += f" {row['kept']:>7.3f}" if kept else ""
        lines.append(f"{alpha:>7.2f}{cells}")
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """Add the control commands to the ``multiloc`` sub-parsers."""
    p = sub.add_parser("edit", help="one-pass output edit: only the chosen sites read the edited prompt "
                       "(and the baselines, and their evaluation)")
    model_options(p)
    p.add_argument("--prompt", help="the prompt P to generate")
    p.add_argument("--to", help="the edited prompt Q the chosen sites read (the word to remove replaced)")
    p.add_argument("--pairs", metavar="FILE", help="a file of 'P => Q' lines (# comments) to edit and evaluate")
    p.add_argument("--sites", help=SITES_HELP)
    p.add_argument("--concept", help="which published site set (e.g. toy-colour); a built-in concept also "
                   "gives the default --scorer")
    p.add_argument("--from-step", type=int, help="first step the sites read Q (default: 4/50 of the steps, "
                   "rounded, as the paper's SDXL step 4 of 50)")
    p.add_argument("--method", action="append", metavar="M[,M...]",
                   help="localized (default), all-sites, random-sites, negative-prompt or sld; several (comma "
                   "list or repeated) make one table")
    p.add_argument("--negative", help="negative-prompt and sld methods: the concept to steer away from (default: P's words not in Q)")
    p.add_argument("--draws", type=_positive("--draws"), default=3,
                   help="random-sites method: how many random sets (default: 3)")
    p.add_argument("--scorer", help="scores the removed (P's words not in Q) and target (Q's words not in P) "
                   "concepts on the edits, e.g. ocr, colour, instrument (default: the --concept's)")
    p.add_argument("--keep", metavar="SCORER", help="a scorer that reads what must stay, on the words P and Q "
                   "share (e.g. shape for a colour edit, pitch for an instrument edit)")
    p.add_argument("--toxicity", action=argparse.BooleanOptionalAction, default=None,
                   help="score toxicity of the edits' text (default: with the ocr scorer; skipped with a note "
                   "when the classifier cannot be loaded)")
    seed_options(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("generate", help="plain generation, with weight edits (and LoRA, steering) applied")
    model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    p.add_argument("--weights", action="append", metavar="FILE",
                   help="a weight file from `multiloc rewrite`, applied for this run; repeatable")
    p.add_argument("--lora", metavar="DIR", help="a LoRA folder from `multiloc finetune`, loaded for this run")
    p.add_argument("--steer", metavar="FILE", help="a steering file from `multiloc steer`, added --alpha times")
    p.add_argument("--alpha", type=number("--alpha"), help="how many times the steering vectors are added "
                   "(0: plain generation; negative: away from the concept)")
    seed_options(p)
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8, help="prompts per generation (default: 8)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("rewrite", help="closed-form key/value edit of the localized sites, saved as a weight file",
                       description="Rewrite the key/value projections of the chosen sites so the source's "
                       "conditioning produces the target's keys/values (UCE / TIME / LocoEdit). A one-word "
                       "SOURCE/TARGET/--preserve item is placed into each template; an item with spaces is "
                       "a prompt, used as is.")
    model_options(p)
    p.add_argument("--edit", action="append", required=True, metavar="'SRC => TGT'",
                   help="an edit, repeatable; to erase a concept, edit it to a neutral word ('r2d2 => robot')")
    p.add_argument("--preserve", action="append", metavar="P",
                   help="a word or prompt whose keys/values must stay; repeatable")
    p.add_argument("--sites", help=SITES_HELP + "; or ENCODER:LAYER (text_encoder:0): Diff-QuickFix of that text-"
                   "encoder layer's self-attention output projection, at the subject's last token")
    p.add_argument("--concept", help="which of the model's published site sets to edit (e.g. toy-colour)")
    p.add_argument("--lam", type=float, default=0.01,
                   help="pull towards the old weights, relative to the inputs' mean energy per dimension; "
                   "near 0: match the edits exactly (default: 0.01)")
    p.add_argument("--templates", nargs="+", metavar="T",
                   help="templates holding a word's place as {} (default: the modality's built-in set, "
                   "e.g. '{}' 'a photo of {}' 'a painting of {}' 'an image of {}')")
    seed_options(p)
    p.add_argument("--save", required=True, metavar="FILE.safetensors", help="the weight file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rewrite)
    p = sub.add_parser("steer", help="activation-steering vectors (CAA) of a concept at chosen sites; "
                       "optionally an alpha sweep")
    model_options(p)
    p.add_argument("--concept", required=True, help="concept name or YAML: its pairs should all move the same way "
                   "(one donor concept, bases of another), see README 'Steering'")
    p.add_argument("--sites", help=SITES_HELP)
    seed_options(p)
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8,
                   help="prompt pairs per generation (default: 8)")
    p.add_argument("--save", required=True, metavar="FILE", help="where the vectors go (.safetensors)")
    p.add_argument("--alphas", help="also sweep alpha: lo:hi:n (e.g. -4:4:9) or a comma list; for each alpha "
                   "score and preservation, steering the sites, all sites, and all but the sites")
    p.add_argument("--prompt", action="append", help="a prompt the sweep steers; repeatable (needs --alphas)")
    p.add_argument("--target", help="what the sweep scores for (default: the concept's one target)")
    p.add_argument("--out", help="the sweep's directory: sweep.json, sweep.png (needs --alphas)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_steer)
    # `--alphas -4:4:9` must read as a value, not as an unknown option: argparse takes only plain
    # negative numbers (-4, -0.5) for values; this parser has no option that starts with a digit.
    p._negative_number_matcher = re.compile(r"^-\.?\d")

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
    p.add_argument("--batch-size", metavar="B", type=_positive("--batch-size"), default=4,
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
                   steps=args.steps, lr=args.lr, seed=args.seed, batch_size=args.batch_size, out=args.out,
                   checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    print(f"wrote the LoRA to {out} (load it with: multiloc generate --model {args.model} --lora {out} ...)")
    return 0
