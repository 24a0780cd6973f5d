"""Scans across processes: torchrun with gloo on the CPU, two processes, against one process in this one.

Two launches (each ~10-20 s: two interpreters import torch and build tiny-sd): a CLI scan resuming a
one-process run's state under two processes, and a two-process scan whose second process dies, resumed
here under one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import multiloc
from multiloc.distributed import Processes
from multiloc.results import ScanState

from .conftest import Exploding

CONCEPT = {"name": "colour", "scorer": "reference",
           "pairs": [["a red cube", "a blue cube"], ["a green ball", "a yellow ball"]]}
SCAN = {"seeds": 1, "steps": 3, "batch_size": 3, "progress": False, "samples": False}


@pytest.fixture(scope="module")
def concept_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("concept") / "colour.yaml"
    path.write_text(json.dumps(CONCEPT))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def reference(concept_file: Path) -> multiloc.Result:
    """The one-process scan every multi-process run must reproduce (one thread, as they run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return multiloc.scan("tiny-sd", str(concept_file), **SCAN)
    finally:
        torch.set_num_threads(before)


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout)


def same(a: multiloc.Result, b: multiloc.Result) -> None:
    for name, effect in a.effects.items():
        assert b.effects[name] == pytest.approx(effect, abs=1e-6, nan_ok=True)
    assert a.ranking == b.ranking and a.selected == b.selected


def test_share_covers_the_work_once():
    parts = [Processes(r, 3).share(list(range(10))) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and parts[0] == [0, 3, 6, 9]
    costs = [5, 3, 3, 3, 2, 2, 2]  # by cost: the costliest first, each to the least loaded process
    parts = [Processes(r, 2).share(list(range(7)), cost=costs.__getitem__) for r in range(2)]
    assert sorted(sum(parts, [])) == list(range(7))
    assert [sum(costs[i] for i in p) for p in parts] == [10, 10]


def test_state_files_of_all_processes_merge(tmp_path):
    for rank in (0, 1):
        state = ScanState(tmp_path, {"k": 1}, rank, 2)
        state.get("0/0")[f"site{rank}"] = float(rank)
        state.get(f"1/{rank}")["base"] = 0.5
        state.flush()
    assert (tmp_path / ".scan-state.1.json").exists()
    one = ScanState(tmp_path, {"k": 1})  # read back under one process
    assert one.samples == {"0/0": {"site0": 0.0, "site1": 1.0}, "1/0": {"base": 0.5}, "1/1": {"base": 0.5}}
    assert ScanState(tmp_path, {"k": 2}).samples == {}  # another configuration's files are ignored
    one.clear()
    assert not list(tmp_path.glob(".scan-state*"))


def test_two_processes_resume_one_and_match_it(tmp_path, concept_file, reference, one_thread):
    """1 -> 2: a one-process run dies; the CLI under torchrun finishes it without redoing a row."""
    with pytest.raises(RuntimeError):
        multiloc.scan("tiny-sd", str(concept_file), out=tmp_path, scorer=Exploding(3), **SCAN)
    kept = sum(map(len, json.loads((tmp_path / ".scan-state.json").read_text())["samples"].values()))
    run = torchrun("-m", "multiloc", "scan", "--model", "tiny-sd", "--concept", str(concept_file), "--seeds", "1",
                   "--steps", "3", "--batch-size", "3", "--device", "cpu", "--quiet", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("selected (") == 1  # one process reports
    result = multiloc.Result.load(tmp_path)
    same(reference, result)
    rows = len(reference.sites) + 2  # every site, the base and the donor
    assert result.config["processes"] == 2 and result.extra["resumed_rows"] == kept > 0
    assert all(n > 0 for n in result.config["rows_per_process"])
    assert sum(result.config["rows_per_process"]) == rows * len(CONCEPT["pairs"]) - kept
    assert not list(tmp_path.glob(".scan-state*"))


def test_a_dead_process_stops_the_run_and_one_process_resumes(tmp_path, concept_file, reference, one_thread):
    """2 -> 1: process 1 dies mid-scan; torchrun stops the other; what finished is kept and resumed."""
    run = torchrun(str(Path(__file__).parent / "scan_worker.py"), str(concept_file), str(tmp_path), "die")
    assert run.returncode != 0 and not (tmp_path / "result.json").exists()
    assert "exitcode  : 3" in run.stderr  # torchrun names the process that died (the root cause)
    files = sorted(p.name for p in tmp_path.glob(".scan-state*"))
    assert ".scan-state.1.json" in files
    result = multiloc.scan("tiny-sd", str(concept_file), out=tmp_path, **SCAN)
    assert result.extra["resumed_rows"] > 0 and result.config["processes"] == 1
    same(reference, result)
    assert np.isfinite(list(result.effects.values())).any()
    assert not list(tmp_path.glob(".scan-state*"))


def test_out_of_memory_generations_split_and_lose_no_rows(tiny_sd, colour, monkeypatch, one_thread):
    """A fake device that fits 3 prompt rows: --batch-size auto (and 8) split until they fit; same effects."""
    full = multiloc.scan(tiny_sd, colour, **SCAN)
    real, sizes = tiny_sd.generate, []

    def small_device(prompts, *args, **kwargs):
        sizes.append(len(prompts))
        if len(prompts) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(prompts, *args, **kwargs)

    monkeypatch.setattr(tiny_sd, "generate", small_device)
    for batch_size in ("auto", 8):
        sizes.clear()
        result = multiloc.scan(tiny_sd, colour, **{**SCAN, "batch_size": batch_size})
        for name, effect in full.effects.items():
            assert result.effects[name] == pytest.approx(effect, abs=1e-5, nan_ok=True)
        assert result.config["rows_per_generation_fit"] <= 3 and max(sizes) > 3
        assert sizes.count(max(sizes)) == 1  # after the first, generations are split before they run
    assert result.config["peak_memory_mb"]["kind"] == "rss" and result.config["peak_memory_mb"]["per_process"][0] > 0

    monkeypatch.setattr(tiny_sd, "generate", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(multiloc.UserError, match="out of memory on cpu with one row and the donor"):
        multiloc.scan(tiny_sd, colour, **SCAN)


def test_max_pairs_is_a_seeded_subset(tiny_sd, one_thread):
    pairs = [(f"a red cube {i}", f"a blue cube {i}") for i in range(5)]
    concept = multiloc.Concept(name="colour", scorer="reference", pairs=pairs)
    kw = {**SCAN, "steps": 1, "sites": "0"}
    a = multiloc.scan(tiny_sd, concept, max_pairs=2, **kw)
    b = multiloc.scan(tiny_sd, concept, max_pairs=2, **kw)
    assert a.config["pairs"] == 2 and len(a.extra["samples"]["ids"]) == 2
    assert a.extra["samples"]["base"] == b.extra["samples"]["base"]  # the same subset every run
    every = multiloc.scan(tiny_sd, concept, **kw).extra["samples"]["base"]
    assert set(a.extra["samples"]["base"]) <= set(every) and len(set(every)) == 5
    with pytest.raises(multiloc.UserError, match="max pairs"):
        multiloc.scan(tiny_sd, concept, max_pairs=0, **kw)
