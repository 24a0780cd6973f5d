"""The one place that touches torch hooks. Every hook is removed on exit, also on exceptions.

Example::

    with intervene(unet, sites, plan, n_rows=4):
        pipe(...)                     # patched
    pipe(...)                         # the model exactly as it was

    with capture(unet, sites) as store:
        pipe(...)
    store[("up_blocks.0.attentions.2.transformer_blocks.1.attn2", "to_k")]  # list of per-step outputs

    with capture_inputs(unet, ["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"], n_rows=2) as ins:
        pipe(...)                     # the projection's inputs (the conditional copies), per step

    with capture_outputs(unet, sites, reduce=lambda x: x.mean(1)) as store:
        pipe(...)
    store["up_blocks.0.attentions.2.transformer_blocks.1.attn2"]  # per call: the output, reduced
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .interventions import OUTPUT, Patch, apply_patch, check_plan
from .sites import Site, Tap


class StepCounter:
    """Counts denoiser calls; ``step`` is the current denoising step (0-based)."""

    def __init__(self, calls_per_step: int = 1) -> None:
        self.calls = 0
        self.calls_per_step = calls_per_step

    @property
    def step(self) -> int:
        return max(self.calls - 1, 0) // self.calls_per_step

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1


@contextmanager
def hooks(forward: Sequence[tuple[nn.Module, Callable]] = (),
          pre: Sequence[tuple[nn.Module, Callable]] = (),
          pre_kw: Sequence[tuple[nn.Module, Callable]] = (),
          forward_kwargs: Sequence[tuple[nn.Module, Callable]] = (),
          forward_first: Sequence[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Register forward hooks and forward pre-hooks; remove all of them on exit, whatever happens.

    ``forward_first`` hooks run before the module's other forward hooks (a replaced output then reaches
    hooks that others registered, e.g. transformers' ``hidden_states`` recorders).

    ``pre_kw`` pre-hooks see and may replace the keyword arguments: ``fn(module, args, kwargs)``;
    ``forward_kwargs`` hooks also see the call's keyword arguments: ``fn(module, args, kwargs, out)``.

    >>> with hooks(forward=[(unet.mid_block, lambda m, a, o: print(o.shape))]):
    ...     unet(x, t, ehs)
    """
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in pre_kw:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in forward:
            handles.append(module.register_forward_hook(fn))
        for module, fn in forward_kwargs:
            handles.append(module.register_forward_hook(fn, with_kwargs=True))
        for module, fn in forward_first:
            handles.append(module.register_forward_hook(fn, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def intervene(denoiser: nn.Module, sites: Sequence[Site], plan: Sequence[Patch], n_rows: int,
              calls_per_step: int = 1) -> Iterator[StepCounter]:
    """Apply an intervention plan to every denoiser call inside the block.

    ``n_rows`` is the number of logical rows (prompts) of each generation; the counter yielded tells
    the current step, which the patches' step windows are checked against.
    """
    by_name = {s.name: s for s in sites}
    check_plan(plan, {s.name: s.heads for s in sites}, n_rows)
    counter = StepCounter(calls_per_step)
    per_tap: dict[tuple[str, str], list[Patch]] = defaultdict(list)
    per_output: dict[str, list[Patch]] = defaultdict(list)
    for p in plan:
        if p.on == OUTPUT:
            per_output[p.site].append(p)
            continue
        for tap in by_name[p.site].taps:
            per_tap[(p.site, _key(tap))].append(p)

    def run(patches: list[Patch], key: str, out: torch.Tensor, tokens: tuple[int, int | None] | None,
            heads: int | None, mask: bool = False) -> torch.Tensor:
        step = counter.step
        for p in patches:
            if step in p.window:
                out = apply_patch(p, key, out, n_rows, tokens, heads, mask)
        return out

    def make_hook(site: Site, tap: Tap, patches: list[Patch]) -> Callable:
        def patched(out: torch.Tensor) -> torch.Tensor:
            return run(patches, tap.path, out, tap.tokens, site.heads, tap.mask)

        if tap.kwarg is None:
            return lambda module, args, out: patched(out)

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if kwargs.get(tap.kwarg) is not None:
                kwargs = {**kwargs, tap.kwarg: patched(kwargs[tap.kwarg])}
            return args, kwargs

        return pre_hook

    def output_hook(site: Site, patches: list[Patch]) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> object:
            image, put = image_side(site, out)
            return put(run(patches, OUTPUT, image, None, site.heads))
        return hook

    forward, pre_kw = [], []
    for (site_name, tap_key), patches in per_tap.items():
        site = by_name[site_name]
        tap = next(t for t in site.taps if _key(t) == tap_key)
        module = denoiser.get_submodule(site_name)
        if tap.kwarg is None:
            forward.append((module.get_submodule(tap.path), make_hook(site, tap, patches)))
        else:
            pre_kw.append((module, make_hook(site, tap, patches)))
    forward += [(denoiser.get_submodule(name), output_hook(by_name[name], patches))
                for name, patches in per_output.items()]
    with hooks(forward=forward, pre=[(denoiser, counter)], pre_kw=pre_kw):
        yield counter


def image_side(site: Site, out: object) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """The image-token side of a site module's output as (batch, positions, channels), and ``put(new)``
    rebuilding the module's output with ``new`` in its place.

    Joint attention returns ``(image, text)``: the image stream is the first. A FLUX single-stream
    attention returns text and image positions in one sequence, the text first (the site's token range):
    the image side is what follows it. An attention that returns a feature map (IF's added-KV attention:
    (batch, channels, height, width)) is read channels last.
    """
    first = _first(out)
    text = next((t.tokens for t in site.taps if t.tokens), None)
    cut = text[1] if text else None
    image = first if cut is None else first[:, cut:]
    if image.dim() == 4:
        image = image.flatten(2).transpose(1, 2).contiguous()

    def put(new: torch.Tensor) -> object:
        if first.dim() == 4:
            new = new.transpose(1, 2).reshape(first.shape)
        full = new if cut is None else torch.cat([first[:, :cut], new], dim=1)
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return image, put


def _key(tap: Tap) -> str:
    return tap.path if tap.kwarg is None else f"{tap.path}({tap.kwarg})"


@contextmanager
def capture(denoiser: nn.Module, sites: Sequence[Site]) -> Iterator[dict[tuple[str, str], list[torch.Tensor]]]:
    """Record every tap output of ``sites`` at every denoiser call (detached, on the same device).

    The store maps ``(site name, tap path)`` to a list with one tensor per call; a keyword-input tap
    (an attention mask) is keyed ``(site name, "(kwarg)")`` and records that input.
    """
    store: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)

    def make_hook(key: tuple[str, str]) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            store[key].append(out.detach().clone())
        return hook

    def make_pre_hook(key: tuple[str, str], kwarg: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if kwargs.get(kwarg) is not None:
                store[key].append(kwargs[kwarg].detach().clone())
        return hook

    forward = [(denoiser.get_submodule(s.name).get_submodule(t.path), make_hook((s.name, t.path)))
               for s in sites for t in s.taps if t.kwarg is None]
    pre_kw = [(denoiser.get_submodule(s.name), make_pre_hook((s.name, _key(t)), t.kwarg))
              for s in sites for t in s.taps if t.kwarg is not None]
    with hooks(forward=forward, pre_kw=pre_kw):
        yield store


@contextmanager
def capture_inputs(denoiser: nn.Module, modules: Sequence[str], n_rows: int, copy: int = -1,
                   ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the input of each named submodule (e.g. a site's ``to_k``) at every denoiser call: the
    conditional copy of each of the ``n_rows`` logical rows, detached, on the CPU. Under classifier-free
    guidance a call holds copies of the rows, one after the other; ``copy`` is the conditional one's
    index among them (the adapter's ``conditional_copy``: most pipelines put it last).

    A call whose input equals the previous one recorded for that module is not stored again, so a
    U-Net, whose projections read the same text embeddings at every step, yields one tensor per module,
    and a joint-attention DiT, whose text stream changes from step to step, one per step.

    >>> with capture_inputs(unet, [f"{site.name}.to_k"], n_rows=2) as store:
    ...     pipe(...)
    >>> store[f"{site.name}.to_k"][0].shape        # (rows, tokens, features)
    """
    store: dict[str, list[torch.Tensor]] = defaultdict(list)

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(x.shape[0] // n_rows, n_rows, *x.shape[1:])[copy].to("cpu")
            seen = store[name]
            if not (seen and seen[-1].shape == x.shape and torch.equal(seen[-1], x)):
                seen.append(x.clone())
        return hook

    with hooks(pre=[(denoiser.get_submodule(m), make_hook(m)) for m in modules]):
        yield store


@contextmanager
def capture_outputs(denoiser: nn.Module, sites: Sequence[Site],
                    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each site module's output, image-token side (:func:`image_side`), at every denoiser call.

    ``reduce`` maps the output, (batch, positions, channels) (a pooled-embedding site: (batch,
    channels)), to what is kept (e.g. the mean over positions), so long runs need not hold full
    activation maps; kept tensors are detached.

    >>> with capture_outputs(unet, sites, reduce=lambda x: x.mean(1)) as store:
    ...     pipe(...)
    >>> store[sites[0].name][0].shape       # first call: (batch, channels)
    """
    store: dict[str, list[torch.Tensor]] = defaultdict(list)

    def make_hook(site: Site) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            image = image_side(site, out)[0].detach()
            store[site.name].append(reduce(image) if reduce else image.clone())
        return hook

    with hooks(forward=[(denoiser.get_submodule(s.name), make_hook(s)) for s in sites]):
        yield store


def _first(out: object) -> torch.Tensor:
    """The image-token output of an attention call (joint attention returns (image, text))."""
    return out[0] if isinstance(out, tuple) else out


def _token_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean over positions of the per-position vector norm: (B, N, D) or (B, C, H, W) -> (B,)."""
    x = x.float()
    return x.norm(dim=-1).mean(dim=-1) if x.dim() == 3 else x.norm(dim=1).flatten(1).mean(dim=1)


@contextmanager
def contributions(denoiser: nn.Module, sites: Sequence[Site], masks: torch.Tensor, copy: int = -1,
                  ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Per site and denoiser call, the size of the attention output that flows from masked tokens.

    ``masks`` is (rows, tokens): True at each row's concept tokens. At every site call the attention
    runs twice more: once with every value zeroed but the concept tokens' (``site.values``, and the
    image values ``site.image_values`` silenced), once with all values zeroed. Their difference is
    exactly W_O · Σ_{j ∈ concept} A[i, j] V[j] (bias and residual cancel), computed by the model's
    own attention code, so masks, norms and concatenated keys are handled as the model handles them;
    no attention map is stored. The store maps a site to one (rows,) tensor per call: the mean over
    output positions of its norm, for the conditional copy of each row: CFG copy ``copy`` (the
    adapter's ``conditional_copy``; most pipelines put it last).
    """
    n_rows = masks.shape[0]
    store: dict[str, list[torch.Tensor]] = defaultdict(list)
    mode: dict[str, str | None] = {"site": None, "what": None}

    def value_hook(site: Site, tokens: tuple[int, int | None] | None, image: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if mode["site"] != site.name:
                return None
            if image or mode["what"] == "zero":
                return torch.zeros_like(out)
            copies = out.shape[0] // n_rows
            keep = torch.zeros(out.shape[:2], dtype=out.dtype, device=out.device)
            start = tokens[0] if tokens else 0
            width = min(masks.shape[1], out.shape[1] - start)
            keep[:, start:start + width] = masks[:, :width].to(out.device, out.dtype).repeat(copies, 1)
            return out * keep.unsqueeze(-1)
        return hook

    def site_hook(site: Site) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            if mode["site"] is not None:
                return
            try:
                mode["site"], mode["what"] = site.name, "concept"
                with torch.no_grad():
                    concept = module(*args, **kwargs)
                    mode["what"] = "zero"
                    zero = module(*args, **kwargs)
            finally:
                mode["site"] = mode["what"] = None
            diff = _first(concept) - _first(zero)
            norms = _token_norm(diff)
            store[site.name].append(norms.view(-1, n_rows)[copy].cpu())
        return hook

    forward = []
    for site in sites:
        mod = denoiser.get_submodule(site.name)
        forward += [(mod.get_submodule(t.path), value_hook(site, t.tokens, False)) for t in site.values]
        forward += [(mod.get_submodule(p), value_hook(site, None, True)) for p in site.image_values]
    with hooks(forward=forward, forward_kwargs=[(denoiser.get_submodule(s.name), site_hook(s)) for s in sites]):
        yield store


def _latent(args: tuple, kwargs: dict) -> tuple[str | int, torch.Tensor]:
    """Where a denoiser call's latent input is: its first positional argument, or ``hidden_states`` /
    ``sample`` (diffusers' U-Nets and transformers all take it so)."""
    if args and isinstance(args[0], torch.Tensor):
        return 0, args[0]
    for key in ("hidden_states", "sample"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return key, kwargs[key]
    raise RuntimeError("cannot find the latent input of the denoiser call")


@contextmanager
def guide_prediction(denoiser: nn.Module, n_rows: int, latent_from: dict[int, int],
                     fn: Callable[[torch.Tensor, int], torch.Tensor], calls_per_step: int = 1,
                     ) -> Iterator[StepCounter]:
    """Rewrite the denoiser's prediction at every call, for guidance terms a pipeline does not have.

    Before each call, the latent of every row ``r`` in ``latent_from`` is replaced by that of row
    ``latent_from[r]`` (every CFG copy), so an extra in-batch row predicts on another row's latent (with
    its own prompt). After the call, ``fn(pred, step)`` gets the prediction viewed as ``(copies,
    n_rows, ...)`` (copy 0 unconditional, the last conditional, under CFG) and returns the new one.
    Safe Latent Diffusion runs this way (:mod:`multiloc.control.edit`).

    >>> with guide_prediction(unet, 3, {2: 1}, lambda pred, step: pred):
    ...     pipe(...)
    """
    counter = StepCounter(calls_per_step)

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        counter(module, args)
        where, x = _latent(args, kwargs)
        if x.shape[0] % n_rows:
            raise RuntimeError(f"denoiser batch of {x.shape[0]} is not a multiple of the {n_rows} rows")
        x = x.clone()
        view = x.view(x.shape[0] // n_rows, n_rows, *x.shape[1:])
        for row, source in latent_from.items():
            view[:, row] = view[:, source]
        if where == 0:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, where: x}

    def post(module: nn.Module, args: tuple, kwargs: dict, out: object) -> object:
        pred = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        new = fn(pred.view(pred.shape[0] // n_rows, n_rows, *pred.shape[1:]), counter.step).reshape(pred.shape)
        if isinstance(out, tuple):
            return (new, *out[1:])
        if hasattr(out, "sample"):
            out.sample = new
            return out
        return new

    with hooks(pre_kw=[(denoiser, pre)], forward_kwargs=[(denoiser, post)]):
        yield counter


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a transformers layer is called with (positionally or as ``hidden_states``)."""
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})


def _with_first(out: object, x: torch.Tensor) -> object:
    return (x, *out[1:]) if isinstance(out, tuple) else x


@contextmanager
def capture_encoder(first_layer: nn.Module, parts: Sequence[nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record, from the FIRST call only, a text encoder's embedding output (its first layer's input,
    ``store["embed"]``) and each of ``parts``' outputs (``store[i]``, the first element of a tuple).

    >>> with capture_encoder(enc.layers[0], [enc.part(i, "block") for i in range(2)]) as store:
    ...     run_encoders(model, ["a blue circle"])
    >>> store["embed"].shape, store[1].shape       # (1, tokens, width) each
    """
    store: dict = {}

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        store.setdefault("embed", _hidden_in(args, kwargs).detach().clone())

    def make_hook(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            store.setdefault(i, _first(out).detach().clone())
        return hook

    with hooks(pre_kw=[(first_layer, pre)], forward=[(m, make_hook(i)) for i, m in enumerate(parts)]):
        yield store


@contextmanager
def corrupt_restore(first_layer: nn.Module, parts: Sequence[nn.Module], clean: dict, rows: Sequence[object],
                    noise: torch.Tensor, positions: Sequence[int]) -> Iterator[None]:
    """Causal tracing inside a text encoder, one behaviour per row of each call that encodes the prompt.

    The prompt's calls are recognised by their rows whose embedding output equals ``clean["embed"]``
    (the prompt's, from :func:`capture_encoder`); the k-th such row, over all calls, follows ``rows[k]``: ``None`` keeps
    it clean; ``(layer, restore)`` adds ``noise`` at ``positions`` of the embedding output, then puts
    the clean state (``clean[layer]``, the output of ``parts[layer]``; ``layer`` -1: the embedding output)
    back at the positions ``restore``. Calls with no such row (negative prompts) are left alone. The
    restoring hooks run before any other forward hook (transformers records ``hidden_states`` with
    hooks of its own, which must see the restored states).
    """
    ref = clean["embed"][0]
    active: list[object] = []  # the current call's behaviour per batch row (None: not ours)
    count = [0]  # prompt rows seen so far, over calls
    pos = list(positions)

    def put(x: torch.Tensor, layer: int) -> torch.Tensor:
        todo = [(b, r[1]) for b, r in enumerate(active) if r is not None and r[0] == layer and r[1]]
        if not todo:
            return x
        x = x.clone()
        for b, restore in todo:
            keep = [p for p in restore if p < x.shape[1]]
            x[b, keep] = clean["embed" if layer == -1 else layer][0, keep].to(x.device, x.dtype)
        return x

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = _hidden_in(args, kwargs)
        ours = [b for b in range(x.shape[0]) if x.shape[1:] == ref.shape and _same(x[b], ref)]
        active[:] = [None] * x.shape[0]
        if not ours:
            return None
        for b in ours:  # the rows may come one call each (AudioLDM2 encodes prompt by prompt)
            active[b] = rows[count[0] % len(rows)]
            count[0] += 1
        x = x.clone()
        for b in ours:
            if active[b] is not None:
                x[b, pos] = x[b, pos] + noise.to(x.device, x.dtype)
        return _with_hidden(args, kwargs, put(x, -1))

    def make_hook(layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> object:
            return _with_first(out, put(_first(out), layer)) if any(r is not None for r in active) else None
        return hook

    with hooks(pre_kw=[(first_layer, pre)], forward_first=[(m, make_hook(i)) for i, m in enumerate(parts)]):
        yield


def _same(x: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether ``x`` is ``ref``'s prompt (an embedding output after a LayerNorm, as RoBERTa's, differs in
    the last bits with the batch size; another prompt differs by far more)."""
    return torch.allclose(x.float(), ref.to(x.device).float(), rtol=1e-4, atol=1e-5)


@contextmanager
def tap_gradients(denoiser: nn.Module, sites: Sequence[Site], n_rows: int,
                  mix: Callable[[torch.Tensor, int, Tap], torch.Tensor] | None = None, calls_per_step: int = 1,
                  ) -> Iterator[dict[tuple[str, str], list[tuple[int, torch.Tensor, torch.Tensor]]]]:
    """Make every tap output of ``sites`` differentiable inside a (no-grad) pipeline call, for
    attribution patching (:mod:`multiloc.localize.attribution`).

    Gradients are switched on at every denoiser call (pipelines run under ``torch.no_grad``; the
    pipeline's own context restores the mode when its call returns), so the denoising chain after the
    first call, and the decoding, build a graph. At every call each tap output ``out`` becomes
    ``mix(out, step, tap) + z``, with ``z`` a zero leaf tensor: after ``backward()``, ``z.grad`` is the
    gradient of the loss with respect to the tap's value at that call. ``mix`` (default: none) may move
    rows' values, e.g. towards the donor row's. Keyword-input taps (attention masks) are not
    differentiable and are left out. The store maps ``(site, tap path)`` to one
    ``(step, value before mix, z)`` per call.

    >>> with tap_gradients(unet, sites, n_rows=2) as store:
    ...     out = pipe(..., output_type="pt").images
    ...     (-(out[1] - out[0].detach()).pow(2).mean()).backward()
    >>> step, value, z = store[(sites[0].name, "to_k")][0]; z.grad.shape == value.shape
    True
    """
    counter = StepCounter(calls_per_step)
    store: dict[tuple[str, str], list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def start(module: nn.Module, args: tuple) -> None:
        counter(module, args)
        torch.set_grad_enabled(True)

    def make_hook(key: tuple[str, str], tap: Tap) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if out.shape[0] % n_rows:
                raise RuntimeError(f"tap output has {out.shape[0]} rows, not a multiple of {n_rows}")
            value = out.detach()
            new = out if mix is None else mix(out, counter.step, tap)
            z = torch.zeros_like(new, requires_grad=True)
            store[key].append((counter.step, value, z))
            return new + z
        return hook

    forward = [(denoiser.get_submodule(s.name).get_submodule(t.path), make_hook((s.name, t.path), t))
               for s in sites for t in s.taps if t.kwarg is None]
    with hooks(forward=forward, pre=[(denoiser, start)]):
        yield store
