"""The command line: contracts and the error paths a user can hit (one line, exit code 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from multiloc.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits on bad options
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_registry(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    for name in ("sd15", "sd21", "sdxl", "deepfloyd-if", "tiny-sd"):
        assert name in out


def test_sites_json_contract(capsys):
    code, out, _ = run(["sites", "--model", "sdxl", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "sdxl" and data["total_params"] == 2_567_463_684
    assert len(data["sites"]) == 70
    site = data["sites"][55]
    assert site["index"] == 55 and site["name"] == "up_blocks.0.attentions.2.transformer_blocks.1.attn2"
    assert site["kind"] == "cross_attn" and site["stream"] == "text"
    assert set(site["params"]) == {"kv", "qkvo"} and 0 < site["fraction"]["kv"] < 1


def test_sites_table(capsys):
    code, out, _ = run(["sites", "--model", "sd15"], capsys)
    assert code == 0 and "16 sites" in out and "mid_block.attentions.0.transformer_blocks.0.attn2" in out


def test_scan_end_to_end(tmp_path, capsys):
    code, out, err = run(["scan", "--model", "tiny-sd", "--concept", "colour", "--steps", "2", "--seeds", "1",
                          "--batch-size", "4", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["config"]["batch_size"] == 4
    assert data["ranking"][0] in out.splitlines()[1]  # the table's first row is the top site
    assert (tmp_path / "result.csv").exists() and (tmp_path / "effects.png").exists()
    assert "multiloc scan" in (tmp_path / "report.html").read_text()  # the command, in the report's Run section


@pytest.mark.parametrize("argv, message", [
    (["scan", "--model", "nope", "--concept", "colour"], "unknown model 'nope'; known:"),
    (["scan", "--model", "tiny-sd", "--concept", "nope"], "unknown concept 'nope'; known:"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--steps", "0"], "--steps must be at least 1"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--method", "magic"], "invalid choice: 'magic'"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--device", "tpu9"], "unknown device 'tpu9'"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--device", "cuda:7"], "not available"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--step-window", "9:3"], "empty"),
    (["scan", "--model", "tiny-sd", "--concept", "colour", "--sites", "nothing.*"], "no site matches"),
    (["sites", "--model", "nope"], "unknown model 'nope'"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_malformed_concept_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npairs:\n  - [a, b\n")
    code, _, err = run(["scan", "--model", "tiny-sd", "--concept", str(bad)], capsys)
    assert code == 2 and f"{bad}:" in err and len(err.strip().splitlines()) == 1


def test_console_script_hub_id_offline_fails_fast(tmp_path):
    """The real process: no traceback, exit 2, one line, in seconds, without a network."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "multiloc", "scan", "--model", "someone/missing-model",
                           "--concept", "colour", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "cannot fetch 'someone/missing-model'" in err[0], proc.stderr
