"""`multiloc finetune` and `generate --lora`: LoRA on exactly the chosen sites, both file formats,
resume == uninterrupted, exact unloading, the shared training objectives, and bad input."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import multiloc
from multiloc.cli import main
from multiloc.control.lora import lora_applied, wrapped
from multiloc.media import to_pil
from multiloc.objectives import objective_for
from multiloc.toy import shapes, tones
from multiloc.toy.train import torch_threads

FT = importlib.import_module("multiloc.control.finetune")  # the module (multiloc.control.finetune is the function)
COLOUR_SITE = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"  # toy-shapes' published toy-colour site
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _write(folder: Path, files: dict[str, str], meta: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = meta if meta is not None else [{"file_name": f, "text": t} for f, t in files.items()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def shape_data(tmp_path_factory) -> Path:
    """Magenta shapes captioned "cyan" (a new association), drawn at 32 px (resized to the model's 16)."""
    folder = tmp_path_factory.mktemp("data")
    files = {}
    for i, (shape, size) in enumerate((s, z) for s in shapes.SHAPES for z in shapes.SIZES):
        to_pil(shapes.render("magenta", shape, size, px=32)).save(folder / f"{i}.png")
        files[f"{i}.png"] = shapes.prompt("cyan", shape, size)
    return _write(folder, files)


@pytest.fixture(scope="module")
def toy() -> multiloc.Model:
    return multiloc.load("toy-shapes")


@pytest.fixture(scope="module")
def toy_lora(toy, shape_data, tmp_path_factory) -> Path:
    with torch_threads(1):  # restored after: later test modules run with the default thread count
        return FT.finetune(toy, shape_data, sites=COLOUR_SITE, steps=8, batch_size=4, lr=3e-3,
                           out=tmp_path_factory.mktemp("lora"), checkpoint_every=0, progress=False)


def _state(model: multiloc.Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.denoiser.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_only_on_the_chosen_sites_and_the_model_restored(toy, toy_lora, one_thread):
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    info = json.loads((toy_lora / "finetune.json").read_text())
    expected = sorted(f"{COLOUR_SITE}.{t}" for t in TARGETS)
    assert info["lora_format"] == "diffusers" and info["sites"] == [COLOUR_SITE] and info["modules"] == expected
    assert info["trainable_params"] == sum(4 * (m.in_features + m.out_features) for m in
                                           (toy.denoiser.get_submodule(n) for n in expected))
    keys = load_file(str(toy_lora / "pytorch_lora_weights.safetensors")).keys()
    assert {k.removeprefix("unet.").rsplit(".lora", 1)[0] for k in keys} == set(expected)
    # the model was left as found: plain modules, same weights, same requires_grad
    assert not any(isinstance(m, LoraLayer) for m in toy.denoiser.modules())
    assert all(p.requires_grad for p in toy.denoiser.parameters())
    before = _state(toy)
    base = toy.generate(["a large cyan square"], seed=0, steps=3)[0]
    with lora_applied(toy, toy_lora):
        assert wrapped(toy) == expected
        tuned = toy.generate(["a large cyan square"], seed=0, steps=3)[0]
    assert abs(tuned - base).max() > 1e-3  # the LoRA changes the output
    assert _same(before, _state(toy))  # unloading leaves the base weights bit-identical
    assert np.array_equal(toy.generate(["a large cyan square"], seed=0, steps=3)[0], base)


def test_stock_load_lora_weights_gives_the_same_outputs(toy, toy_lora, one_thread):
    stock = multiloc.load("toy-shapes")
    stock.pipe.load_lora_weights(str(toy_lora))  # diffusers' own loader, no multiloc code
    prompts = ["a large cyan square", "a small red circle"]
    theirs = stock.generate(prompts, seed=1, steps=3)
    with lora_applied(toy, toy_lora):
        ours = toy.generate(prompts, seed=1, steps=3)
    assert max(float(abs(a - b).max()) for a, b in zip(ours, theirs)) < 1e-6


@pytest.mark.parametrize("name, objective", [("tiny-sd", "epsilon"), ("tiny-sdxl", "epsilon"),
                                             ("tiny-sd3", "flow_matching"), ("tiny-flux", "flow_matching"),
                                             ("tiny-sana", "flow_matching")])
def test_families_through_their_vae_and_stock_loading(name, objective, shape_data, tmp_path, one_thread):
    """Each family's own denoiser call and loss (SDXL's size conditioning, SD3's pooled text, FLUX's packed
    latents and guidance, SANA's DC-AE); stock ``load_lora_weights`` gives multiloc's outputs."""
    model = multiloc.load(name)
    out = FT.finetune(model, shape_data, sites="0", steps=2, batch_size=2, lr=1e-2, out=tmp_path / "lora",
                      checkpoint_every=0, progress=False)
    assert json.loads((out / "finetune.json").read_text())["objective"] == objective
    stock = multiloc.load(name)
    stock.pipe.load_lora_weights(str(out))
    with lora_applied(model, out):
        ours = model.generate(["a red cube"], seed=0, steps=2)[0]
    assert float(abs(ours - stock.generate(["a red cube"], seed=0, steps=2)[0]).max()) < 1e-6
    assert float(abs(ours - model.generate(["a red cube"], seed=0, steps=2)[0]).max()) > 1e-5  # not a no-op


def test_resume_after_an_interruption_equals_an_uninterrupted_run(toy, shape_data, tmp_path, monkeypatch, one_thread):
    from safetensors.torch import load_file

    kw = dict(sites=COLOUR_SITE, steps=6, batch_size=2, lr=3e-3, checkpoint_every=2, progress=False)
    whole = FT.finetune(toy, shape_data, out=tmp_path / "whole", **kw)
    assert not (whole / "checkpoint.pt").exists()  # removed once the LoRA is written
    before = _state(toy)
    real, calls = FT.save_checkpoint, []

    def save_then_die(*args, **kwargs):  # the process is killed right after the step-4 checkpoint
        real(*args, **kwargs)
        calls.append(args[5])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(FT, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        FT.finetune(toy, shape_data, out=tmp_path / "cut", **kw)
    assert calls == [2, 4] and (tmp_path / "cut" / "checkpoint.pt").exists()
    assert _same(before, _state(toy))  # restored on the way out
    monkeypatch.setattr(FT, "save_checkpoint", real)
    with pytest.raises(multiloc.UserError, match="checkpoint of another run .*lr"):
        FT.finetune(toy, shape_data, out=tmp_path / "cut", **{**kw, "lr": 1e-3})
    resumed = FT.finetune(toy, shape_data, out=tmp_path / "cut", **kw)
    a = load_file(str(whole / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pixart_lora_is_in_peft_format_and_peft_loads_it(shape_data, tmp_path, one_thread):
    from peft import PeftModel

    dit = multiloc.load("toy-shapes-dit")
    site = dit.sites[0].name
    out = FT.finetune(dit, shape_data, sites=site, targets=["to_k", "to_v"], steps=4, batch_size=2, lr=1e-2,
                      out=tmp_path / "lora", checkpoint_every=0, progress=False)
    assert json.loads((out / "finetune.json").read_text())["lora_format"] == "peft"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    cond = dit.adapter.train_conditioning(dit.pipe, ["a large cyan square"], dit.device, dit.settings)
    with torch.no_grad(), lora_applied(dit, out):
        ours = dit.adapter.denoise(dit.pipe, x, t, cond)
    peft_model = PeftModel.from_pretrained(multiloc.load("toy-shapes-dit").denoiser, str(out))
    pipe = type("P", (), {"transformer": peft_model.base_model.model, "vae_scale_factor": 2})()
    with torch.no_grad():
        theirs = dit.adapter.denoise(pipe, x, t, cond)
        base = dit.adapter.denoise(dit.pipe, x, t, cond)
    assert float((ours - theirs).abs().max()) < 1e-6 and float((ours - base).abs().max()) > 1e-6


def test_stable_audio_finetunes_from_wav_files_with_edm(tmp_path, one_thread):
    import soundfile

    files, data = {}, tmp_path / "data"
    data.mkdir()
    for i, combo in enumerate(tones.combos("train")[:3]):
        soundfile.write(data / f"{i}.wav", np.repeat(tones.render(*combo), 2), 8000)  # resampled to 4 kHz
        files[f"{i}.wav"] = tones.prompt(*combo)
    _write(data, files)
    model = multiloc.load("toy-tones")
    samples, _ = importlib.import_module("multiloc.control.data").load_folder(model, data)
    assert samples.shape == (3, 1, 4096)
    before = _state(model)
    out = FT.finetune(model, data, sites=model.sites[0].name, steps=3, batch_size=2, out=tmp_path / "lora",
                      checkpoint_every=0, progress=False)
    info = json.loads((out / "finetune.json").read_text())
    assert info["objective"] == "edm" and info["lora_format"] == "peft" and np.isfinite(info["final_loss"])
    assert _same(before, _state(model))


def test_objectives_known_answers():
    """Each objective's loss is 0 exactly at its analytic target (the noise re-drawn from the seed)."""
    x0 = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(7))
    toy_sched = multiloc.load("toy-shapes").pipe.scheduler
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    for kind in ("epsilon", "sample", "v_prediction"):
        sched = DDIMScheduler.from_config(toy_sched.config, prediction_type=kind)
        noised = objective_for(sched).noise(x0, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        noise, t = torch.randn(x0.shape, generator=g), torch.randint(1000, (3,), generator=g)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        assert torch.equal(noised.t, t) and torch.allclose(noised.x, a.sqrt() * x0 + (1 - a).sqrt() * noise)
        target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[kind]
        assert float(noised.loss(target)) == 0.0 and float(noised.loss(target + 1)) == pytest.approx(1.0)
    flow = objective_for(FlowMatchEulerDiscreteScheduler())
    noised = flow.noise(x0, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise, s = torch.randn(x0.shape, generator=g), torch.rand(3, generator=g)
    assert flow.name == "flow_matching" and torch.allclose(noised.t, s * 1000)
    assert float(noised.loss(noise - x0)) == 0.0


def _run(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("empty", "has no metadata.jsonl"),
    ("nolines", "lists no files"),
    ("notjson", "line 1 is not JSON"),
    ("nocaption", "has no caption"),
    ("nofile", "which is not in"),
    ("unreadable", "cannot read"),
])
def test_bad_data_one_line_exit_2(case, message, tmp_path, capsys):
    folder = tmp_path / "d"
    if case != "missing":
        folder.mkdir()
    if case == "nolines":
        (folder / "metadata.jsonl").write_text("\n")
    if case == "notjson":
        (folder / "metadata.jsonl").write_text("{file_name: 1}\n")
    if case == "nocaption":
        to_pil(shapes.render("red", "circle", "small")).save(folder / "a.png")
        _write(folder, {}, [{"file_name": "a.png", "text": ""}])
    if case == "nofile":
        _write(folder, {"gone.png": "a red circle"})
    if case == "unreadable":
        (folder / "a.png").write_bytes(b"not a png")
        _write(folder, {"a.png": "a red circle"})
    code = _run("finetune", "--model", "toy-shapes", "--data", str(folder), "--sites", COLOUR_SITE,
                "--out", str(tmp_path / "o"), "--quiet")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_bad_lora_and_unsupported_family_one_line_exit_2(toy_lora, shape_data, tmp_path, capsys):
    assert _run("generate", "--model", "tiny-sd", "--prompt", "a cube", "--lora", str(toy_lora),
                "--out", str(tmp_path / "g"), "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made for toy-shapes" in err
    assert _run("generate", "--model", "toy-shapes", "--prompt", "a cube", "--lora", str(tmp_path),
                "--out", str(tmp_path / "g"), "--quiet") == 2
    assert "not a multiloc LoRA folder" in capsys.readouterr().err
    assert _run("finetune", "--model", "tiny-audioldm2", "--data", str(shape_data), "--sites", "0",
                "--out", str(tmp_path / "o"), "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not supported yet for the audioldm2 family" in err, err
    assert _run("finetune", "--model", "toy-shapes", "--data", str(shape_data), "--sites", COLOUR_SITE,
                "--targets", "to_q,to_x", "--out", str(tmp_path / "o"), "--quiet") == 2
    assert "no linear projection 'to_x'" in capsys.readouterr().err


def test_cli_finetune_then_generate_with_lora(toy, shape_data, tmp_path, one_thread):
    out = tmp_path / "lora"
    assert _run("finetune", "--model", "toy-shapes", "--data", str(shape_data), "--concept", "toy-colour",
                "--steps", "2", "--batch-size", "1", "--out", str(out), "--quiet") == 0
    assert json.loads((out / "finetune.json").read_text())["sites"] == [COLOUR_SITE]
    assert _run("generate", "--model", "toy-shapes", "--prompt", "a large cyan square", "--lora", str(out),
                "--out", str(tmp_path / "g"), "--quiet") == 0
    record = json.loads((tmp_path / "g" / "generate.json").read_text())
    assert record["modifiers"] == [{"lora": str(out)}]
