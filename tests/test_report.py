"""The HTML report rendered in a real browser (headless Chromium) and `multiloc compare`, on known results."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multiloc.cli import main
from multiloc.compare import agreement, compare, spearman
from multiloc.html_report import block_of, render, write_report
from multiloc.media import save_output
from multiloc.results import Result, SiteEffect

from .conftest import require_chromium

NAMES = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2",
         "up_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.0.attentions.1.transformer_blocks.0.attn2"]


def known(effects=(0.05, 0.2, 0.9, 0.6), samples=True, modality="image", tmp: Path | None = None) -> Result:
    """A result whose answer is known: site 2 on top, sites 2 and 3 selected."""
    sites = [SiteEffect(i, n, e, [e - 0.05, e + 0.05]) for i, (n, e) in enumerate(zip(NAMES, effects))]
    r = Result("toy-known", "toy-colour", "patch", sites, [NAMES[2], NAMES[3]], 1.5, {"seeds": 1},
               {"selection_rule": "effect >= 0.5 x top", "versions": {"multiloc": "0.1.0"}})
    if samples and tmp is not None:
        files = []
        for label, value in (("base", 0.1), ("donor", 0.9), ("top-site02", 0.8)):
            out = np.full((8, 8, 3), value) if modality == "image" else np.sin(np.arange(800) * value) * 0.5
            files.append(str(save_output(tmp / "samples" / label, out, modality, 8000).relative_to(tmp)))
        r.extra["sample_files"] = files
    return r


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", *args, url],
                          capture_output=True, text=True, timeout=60)


def test_browser_renders_top_site_selected_set_and_samples(tmp_path):
    known(tmp=tmp_path).save(tmp_path)  # save() writes report.html
    page = tmp_path / "report.html"
    dom = chromium(page.as_uri(), "--dump-dom").stdout
    assert re.search(r'class="top">\s*' + re.escape(NAMES[2]), dom)
    assert dom.count('<tr class="sel">') == 2 and all(n in dom for n in NAMES)
    assert dom.count("cell sel") == 2
    assert dom.count('<img alt="') == 3 and "data:image/png;base64," in dom
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # opens offline
    shot = tmp_path / "shot.png"
    chromium(page.as_uri(), f"--screenshot={shot}", "--window-size=900,900")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # not blank


def test_audio_players_point_at_existing_files(tmp_path):
    known(tmp=tmp_path / "scan", modality="audio").save(tmp_path / "scan", plot=False)
    page = write_report([tmp_path / "scan"], tmp_path / "elsewhere" / "page.html")
    srcs = re.findall(r'<audio controls preload="none" src="([^"]+)"', page.read_text())
    assert len(srcs) == 3
    assert all((page.parent / s).resolve().is_file() for s in srcs)


def test_nan_effects_and_no_samples_render_with_a_note(tmp_path):
    known(effects=(math.nan, math.nan, math.nan, math.nan), samples=False).save(tmp_path, plot=False)
    html = render([tmp_path])
    assert "4 of 4 sites have no finite effect" in html and "no samples in this result" in html
    assert html.count("cell") >= 4 and "top site <b class=top>none" in html


def test_side_by_side_and_control_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    known().save(a, plot=False)
    b.mkdir()
    (b / "edit.json").write_text('{"summary": {"uce": {"ssim": 0.9, "removed": 0.1, "n": 2}}, "files": [], '
                                 '"notes": ["no scorer"]}')
    import torch
    from safetensors.torch import save

    (b / "edit.safetensors").write_bytes(save({"w": torch.zeros(1)}, metadata={
        "format": "multiloc.weights/1", "kind": "uce", "sites": f'["{NAMES[2]}"]', "original": "{}"}))
    html = render([a, b])
    assert "repeat(2," in html and "Edit (edit.json)" in html and "0.900" in html and "no scorer" in html
    assert "Weight file edit.safetensors" in html and "uce" in html


def test_block_of_lays_out_unets_and_dits():
    assert [block_of(n) for n in NAMES] == ["down_blocks.0", "mid_block", "up_blocks.0", "up_blocks.0"]
    assert block_of("transformer_blocks.7.attn2#h1") == "transformer_blocks.7"


def test_compare_identical_results_agree_fully(tmp_path):
    r = known()
    agree = agreement(r, r, k=3)
    assert agree["spearman"] == pytest.approx(1.0) and agree["top_k_overlap"] == 1.0 and agree["jaccard"] == 1.0
    reversed_ = known(effects=(0.9, 0.6, 0.05, 0.2))  # ranks exactly inverted
    assert spearman(list(r.effects.values()), list(reversed_.effects.values())) == pytest.approx(-1.0)
    assert compare([r, reversed_], ["a", "b"], k=2)["pairs"][0]["top_k_overlap"] == 0.0


def test_cli_compare_and_report_errors(tmp_path, capsys):
    known().save(tmp_path / "a", plot=False)
    known().save(tmp_path / "b", plot=False)
    assert main(["compare", str(tmp_path / "a" / "result.json"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    assert "1.000" in capsys.readouterr().out and (tmp_path / "c" / "compare.png").is_file()
    assert main(["compare", str(tmp_path / "a")]) == 2
    assert main(["report", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("multiloc ") for line in err)


def test_cli_methods_match_localize():
    from multiloc import cli
    from multiloc.encoders import COMPONENTS
    from multiloc.localize import METHODS

    assert cli.METHODS == METHODS and cli.COMPONENTS == COMPONENTS


def test_help_and_models_start_without_torch():
    import sys

    code = ("import sys, contextlib, io\nfrom multiloc.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['models'])\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
