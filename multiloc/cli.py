"""The ``multiloc`` command line: ``models``, ``sites``, ``scan``, ``trace``, ``report``, ``compare``, ``demo``, ``train-toy``, and the control
commands (``generate`` ...: :mod:`multiloc.control.commands`).

Errors a user can cause print one line on stderr and exit with code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import UserError

DTYPES = ("auto", "float32", "float16", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays behind ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value
    return parse


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.lstrip("-").isdigit():
        return "auto" if text == "auto" else _positive("--batch-size")(text)
    raise argparse.ArgumentTypeError(f"--batch-size must be a whole number or 'auto', got {text!r}")


def number(name: str):
    """An argparse type: a finite float, else a one-line error naming the option."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        return value
    return parse


def resolve_device(text: str | None) -> Any:
    """A torch device from the user's text; unknown or unavailable devices are a UserError."""
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise UserError(f"device {text!r} is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {text!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_dtype(text: str, device: Any) -> Any:
    import torch

    if text == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, text)


def _quiet_libraries() -> None:
    """Library chatter (missing optional backends, deprecations) would bury multiloc's own output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Not imported here (they load torch; `multiloc models` needs neither): both read these variables on
    # import, and the ones already imported are told directly.
    for name in ("transformers", "diffusers"):
        os.environ.setdefault(f"{name.upper()}_VERBOSITY", "error")
        if name in sys.modules:
            sys.modules[name].logging.set_verbosity_error()


# --- commands ---------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    rows = []
    for name in registry.model_names():
        spec = registry.model_spec(name)
        rows.append((name, spec["adapter"], spec.get("hub_id") or "built-in", spec.get("description", "")))
    if args.json:
        print(json.dumps([dict(zip(("name", "adapter", "source", "description"), r)) for r in rows], indent=2))
        return 0
    widths = [max(len(r[i]) for r in rows + [("model", "adapter", "source", "")]) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'adapter':<{widths[1]}}  {'source':<{widths[2]}}  description")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    from .offline import offline_sites

    name, sites, total = offline_sites(args.model, {"pooled_site": True} if args.pooled else None)
    _check_pooled(args, name, sites)
    if args.json:
        print(json.dumps({"model": name, "total_params": total,
                          "sites": [s.to_dict(total) for s in sites]}, indent=2))
        return 0
    width = max([len(s.name) for s in sites] + [4])
    print(f"{name}: {len(sites)} sites, denoiser {total:,} parameters")
    print(f"{'idx':>3}  {'site':<{width}}  {'kind':<10}  {'stream':<6}  {'kv params':>12}  {'kv %':>7}  {'qkvo %':>7}")
    for s in sites:
        print(f"{s.index:>3}  {s.name:<{width}}  {s.kind:<10}  {s.stream:<6}  {s.params['kv']:>12,}  "
              f"{100 * s.params['kv'] / total:>6.3f}%  {100 * s.params['qkvo'] / total:>6.3f}%")
    return 0


def _settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``["audio_length_in_s=4", "height=512"]`` -> ``{"audio_length_in_s": 4, "height": 512}``."""
    import yaml

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_scan(args: argparse.Namespace) -> int:
    from . import load, scan
    from .concepts import Concept
    from .distributed import processes
    from .interventions import StepWindow
    from .sites import select_sites

    try:
        StepWindow.parse(args.step_window)
    except ValueError as e:
        raise UserError(str(e)) from None
    concept = Concept.load(args.concept)  # before loading weights: a typo should fail in a second
    group = processes()  # under torchrun / accelerate launch: this process's place; else a group of one
    device = group.device(resolve_device(args.device))
    dtype = resolve_dtype(args.dtype, device)
    heads = _heads(args.heads)
    settings = {**_settings(args.set), **({"pooled_site": True} if args.pooled else {})}
    model = load(args.model, device=device, dtype=dtype, settings=settings or None)
    _check_pooled(args, model.name, model.sites)
    out = Path(args.out or Path("multiloc-out") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model.name)}-{concept.name}")
    chosen = select_sites(model.sites, args.sites)  # a bad --sites fails before any work
    say = print if group.main else lambda *a, **k: None  # one process reports
    say(f"scanning {len(chosen)} of {len(model.sites)} sites of {model.name} for '{concept.name}' "
        f"({min(len(concept.pairs), args.max_pairs or len(concept.pairs))} pairs x {args.seeds} seeds"
        f"{f', {group.world} processes' if group.world > 1 else ''}) -> {out}", file=sys.stderr)
    result = scan(model, concept, method=args.method, seeds=args.seeds, steps=args.steps,
                  guidance=args.guidance, batch_size=args.batch_size, sites=args.sites,
                  step_window=args.step_window, scorer=args.scorer, out=out, progress=not args.quiet,
                  heads=heads, adaptive=args.adaptive, search=args.search, window_size=args.window_size,
                  tau=args.tau, step_map=args.step_map or 0, control=args.control or 0, stream=args.stream,
                  scorer_options={"model": args.scorer_model} if args.scorer_model else None,
                  max_pairs=args.max_pairs, cached_donor=not args.in_batch_donor)
    if args.control and not args.search:
        say("warning: --control needs --search; no random sets were drawn", file=sys.stderr)
    if result.extra.get("resumed_rows"):
        say(f"resumed: {result.extra['resumed_rows']} rows came from an earlier interrupted run", file=sys.stderr)
    for w in result.extra.get("warnings", []):
        say(f"warning: {w}", file=sys.stderr)
    say(result.table())
    for line in _extras_summary(result):
        say(line)
    if group.main:
        result.extra["command"] = shlex.join(["multiloc", *args.argv])  # for the report's "Run" section
        result.save(out)
    say(f"wrote {out / 'result.json'}, result.csv, effects.png, report.html ({result.runtime_s:.1f} s)")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .concepts import Concept
    from .control.commands import load_model
    from .localize.encoder_trace import trace_encoder

    concept = Concept.load(args.concept)  # before loading weights: a typo should fail in a second
    model = load_model(args)
    out = Path(args.out or Path("multiloc-out") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model.name)}-{concept.name}-trace")
    tr = trace_encoder(model, concept, encoder=args.encoder, component=args.component, seeds=args.seeds,
                       steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, noise=args.noise,
                       scorer=args.scorer, out=out, progress=not args.quiet)
    width = max(len(t) for t in tr.tokens)
    print(f"{'token':<{width}}  " + "  ".join(f"{name:>8}" for name in tr.layers))
    for t, token in enumerate(tr.tokens):
        star = "*" if t in tr.concept_positions else " "
        print(f"{token:<{width}}{star} " + "  ".join(f"{row[t]:8.2f}" for row in tr.effect))
    print(f"wrote {out / 'trace.json'}, trace.png ({tr.runtime_s:.1f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = Path(args.out)
    print(f"localizing the toy models' concepts (offline) -> {out}", file=sys.stderr)
    summary = run_demo(out, seeds=args.seeds, device=resolve_device(args.device))
    print(f"wrote {out / 'demo.json'} and one folder per concept (result.json, effects.png, samples/) "
          f"({summary['runtime_s']:.0f} s)")
    return 0


def cmd_train_toy(args: argparse.Namespace) -> int:
    from .toy.train import TRAINERS

    if args.model not in TRAINERS:
        raise UserError(f"{args.model!r} is not a toy model multiloc can train; available: {', '.join(TRAINERS)}")
    TRAINERS[args.model](args.out, steps=args.steps)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_report

    path = write_report(args.dirs, args.out)
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, compare_table, load_results, plot_compare
    from .results import write_atomic

    labels, results = load_results(args.results)
    record = compare(results, labels, k=args.top)
    print(compare_table(record))
    if args.out:
        out = Path(args.out)
        write_atomic(out / "compare.json", json.dumps(record, indent=2, default=str).replace("NaN", "null") + "\n")
        write_atomic(out / "compare.png", plot_compare(record))
        print(f"wrote {out / 'compare.json'} and compare.png")
    return 0


def _extras_summary(result: Any) -> list[str]:
    """One line per extra analysis a scan ran (set search, adaptive sampling, step map)."""
    lines = []
    found = result.extra.get("set_search")
    if found:
        lines.append(f"{found['kind']} set: {', '.join(found['sites'])} — joint effect {found['joint_effect']:.3f}, "
                     f"necessity {found['necessity']:.3f}")
        control = found.get("random_sets")
        if control and control["effects"]:
            lines.append(f"random sets of {control['size']} sites ({len(control['effects'])} drawn): joint effect "
                         f"mean {control['mean']:.3f}, max {control['max']:.3f}")
    adaptive = result.extra.get("adaptive")
    if adaptive:
        lines.append(f"adaptive: scored {adaptive['rows_scored']} of {adaptive['rows_full_sweep']} rows "
                     f"({adaptive['rows_saved']} saved)")
    if result.extra.get("step_map"):
        lines.append("step map: see step_map.png and result.json")
    return lines


def _heads(text: str | None) -> str | list[int] | None:
    """``--heads``: None, ``each`` or a list of head indices ``0,3``."""
    if text is None or text == "each":
        return text
    try:
        heads = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise UserError(f"--heads must be 'each' or head indices like 0,3, got {text!r}") from None
    if not heads or min(heads) < 0:
        raise UserError(f"--heads must be 'each' or head indices like 0,3, got {text!r}")
    return heads


def _check_pooled(args: argparse.Namespace, name: str, sites: Sequence[Any]) -> None:
    if args.pooled and not any(s.kind == "pooled" for s in sites):
        raise UserError(f"--pooled: {name} has no pooled-embedding site (it exists for SD3 and FLUX)")


POOLED_HELP = ("also make the pooled text embedding a site of its own, kind 'pooled' (SD3, FLUX); "
               "by default it stays on the base prompt")


# multiloc.localize.METHODS (tests/test_report.py checks they agree), spelled out here because importing
# multiloc.localize loads torch, and `--help`, `models` and completion start without it.
METHODS = ("patch", "contribution", "trace", "attribution", "auto")
COMPONENTS = ("block", "attn", "mlp")  # multiloc.encoders.COMPONENTS (test_report checks), without torch


def build_parser() -> argparse.ArgumentParser:
    from .scorers import scorer_names

    parser = _Parser(prog="multiloc", description="Find the few layers of a generative model that "
                     "control a concept, and use them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sites", help="list a model's sites in execution order (offline, no weights)")
    p.add_argument("--model", required=True, help="registry name, local pipeline directory or hub id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--pooled", action="store_true", help=POOLED_HELP)
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser("scan", help="localize a concept: score every site, rank them, write results")
    p.add_argument("--model", required=True, help="registry name (see `multiloc models`), local directory or hub id")
    p.add_argument("--concept", required=True, help="built-in concept name or path to a concept YAML")
    p.add_argument("--method", default="patch", choices=METHODS,
                   help="patch: every site patched alone (batched sweep); trace: causal tracing, restore one "
                   "site in a corrupted run; contribution: one generation, attention flowing from the concept's "
                   "tokens; attribution: every site's patch effect to first order from one forward and backward "
                   "pass; auto: attribution, then patching on the sites it cannot rule out (default: patch)")
    p.add_argument("--steps", type=_positive("--steps"), help="denoising steps (default: the model's)")
    p.add_argument("--seeds", type=_positive("--seeds"), default=2, help="seeds per prompt pair (default: 2)")
    p.add_argument("--batch-size", type=_batch_size, default=8,
                   help="prompt rows per generation, at least 2; CFG doubles them; 'auto': the most that fit "
                   "in memory (a generation that runs out of memory is split and retried) (default: 8)")
    p.add_argument("--in-batch-donor", action="store_true",
                   help="keep the donor row in every generation also where its keys/values could be cached once "
                   "per sample (the default for U-Nets, PixArt/SANA, AudioLDM2, Stable Audio)")
    p.add_argument("--max-pairs", type=_positive("--max-pairs"), metavar="N",
                   help="a seeded subset of N of the concept's pairs (the same N pairs every run)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--sites", help="only these sites: indices '0-3,9' or name patterns 'up_blocks.0.*'")
    p.add_argument("--step-window", help="patch only at denoising steps a:b (default: every step)")
    p.add_argument("--heads", help="head-level patching: 'each' scans every head of the chosen sites as a "
                   "unit (SITE#hN); '0,3' patches only those heads of each site (default: whole sites)")
    p.add_argument("--pooled", action="store_true", help=POOLED_HELP)
    p.add_argument("--scorer", help=f"override the concept's scorer ({', '.join(scorer_names())})")
    p.add_argument("--adaptive", action="store_true",
                   help="successive halving: score all sites on few samples, spend the rest on the leaders")
    p.add_argument("--search", choices=("greedy", "window"),
                   help="after ranking, search the smallest set (greedy) or best window of sites, with necessity")
    p.add_argument("--window-size", type=_positive("--window-size"), default=3,
                   help="sites per window for --search window (default: 3)")
    p.add_argument("--tau", type=float, default=0.9,
                   help="joint effect the greedy set must reach, 1 = the donor (default: 0.9)")
    p.add_argument("--control", type=_positive("--control"), metavar="N",
                   help="with --search: also patch N random sets of the found set's size (specificity control)")
    p.add_argument("--step-map", type=_positive("--step-map"), metavar="N",
                   help="also map the leading sites' effect over N windows of denoising steps")
    p.add_argument("--scorer-model", metavar="ID_OR_DIR",
                   help="the scorer's checkpoint: a hub id or a local directory (e.g. a CLAP model for clap)")
    p.add_argument("--stream", help="only sites reading this conditioning stream (AudioLDM2: gpt2 or t5; "
                   "default: every site, each patched from the donor in its stream)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model setting, repeatable (e.g. audio_length_in_s=4, height=512)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (auto: fp16 on cuda, else fp32)")
    p.add_argument("--out", help="output directory (default: multiloc-out/MODEL-CONCEPT); rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_scan)

    from .control.commands import model_options

    p = sub.add_parser("trace", help="causal tracing in a text encoder: a layers x tokens map of where the "
                       "concept is recalled (ROME / Basu et al.)")
    model_options(p)
    p.add_argument("--concept", required=True, help="built-in concept name or path to a concept YAML")
    p.add_argument("--encoder", help="which text encoder, by its pipeline name (text_encoder_2 ...; default: the "
                   "model's first)")
    p.add_argument("--component", default="block", choices=COMPONENTS,
                   help="the state restored: a layer's output (block), its self-attention or its MLP (default: block)")
    p.add_argument("--seeds", type=_positive("--seeds"), default=1, help="seeds per prompt pair (default: 1)")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8,
                   help="rows per generation, at least 2; CFG doubles them (default: 8)")
    p.add_argument("--noise", type=float, default=3.0,
                   help="noise on the concept's tokens, in standard deviations of the embeddings (default: 3)")
    p.add_argument("--scorer", help=f"override the concept's scorer ({', '.join(scorer_names())})")
    p.add_argument("--out", help="output directory (default: multiloc-out/MODEL-CONCEPT-trace); rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("demo", help="localize the built-in toy models' concepts (image and audio): offline, under 2 minutes on a CPU")
    p.add_argument("--out", default="multiloc-out/demo", help="output directory (default: multiloc-out/demo)")
    p.add_argument("--seeds", type=_positive("--seeds"), default=1, help="seeds per prompt pair (default: 1)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-toy", help="retrain a built-in toy model's weights from its registry entry")
    p.add_argument("model", nargs="?", default="toy-shapes",
                   help="which toy model (default: toy-shapes); `multiloc models` lists them")
    p.add_argument("--out", default="multiloc-out/toy", help="where the weights and a report go "
                   "(default: multiloc-out/toy); copy them to configs/toy/ to ship them")
    p.add_argument("--steps", type=_positive("--steps"), help="training steps (default: the shipped recipe's)")
    p.set_defaults(func=cmd_train_toy)

    p = sub.add_parser("report", help="one self-contained HTML page of results folders (several: side by side)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="scan or control output folders")
    p.add_argument("--out", metavar="FILE.html", help="the page (default: DIR/report.html of the first DIR)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="agreement between scans: top-k overlap, Spearman rho, Jaccard of selected sets")
    p.add_argument("results", nargs="+", metavar="RESULT", help="result.json files (or their folders), at least two")
    p.add_argument("--top", type=_positive("--top"), default=5, help="k of the top-k overlap (default: 5)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/compare.json and DIR/compare.png")
    p.set_defaults(func=cmd_compare)

    from .control.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command in ("scan", "trace") and args.batch_size != "auto" and args.batch_size < 2:
        print(f"multiloc {args.command}: error: --batch-size must be at least 2 (the donor row and one patched row)",
              file=sys.stderr)
        return 2
    _quiet_libraries()
    try:
        return args.func(args)
    except UserError as e:
        print(f"multiloc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `multiloc sites ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
