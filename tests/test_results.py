"""Result files: JSON contract, CSV, plot, round trip, atomic writes."""

from __future__ import annotations

import json

import pytest

import multiloc
from multiloc.results import Result, write_atomic


def test_result_files_and_contract(tmp_path, tiny_sd, colour):
    result = multiloc.scan(tiny_sd, colour, seeds=2, steps=2, out=tmp_path, progress=False)
    data = json.loads((tmp_path / "result.json").read_text())
    assert {"model", "concept", "method", "sites", "ranking", "selected", "runtime_s", "config"} <= set(data)
    assert data["model"] == "tiny-sd" and data["method"] == "patch" and data["concept"] == "colour"
    assert len(data["sites"]) == len(tiny_sd.sites)
    assert all({"index", "name", "effect", "ci"} <= set(s) for s in data["sites"])
    assert data["ranking"] == result.ranking
    assert data["config"]["seeds"] == 2 and data["config"]["steps"] == 2
    effects = [s["effect"] for s in sorted(data["sites"], key=lambda s: data["ranking"].index(s["name"]))]
    assert effects == sorted(effects, reverse=True)
    csv_lines = (tmp_path / "result.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,index,name,effect") and len(csv_lines) == len(tiny_sd.sites) + 1
    assert (tmp_path / "effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert "base.png" in samples and "donor.png" in samples and any(s.startswith("top-site") for s in samples)
    loaded = Result.load(tmp_path)
    assert loaded.ranking == result.ranking and loaded.selected == result.selected
    assert loaded.effects == pytest.approx(result.effects)


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    write_atomic(path, "old")

    with pytest.raises(TypeError):
        write_atomic(path, object())  # type: ignore[arg-type]  # fails while writing
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_table_marks_selected(tiny_sd, colour):
    result = multiloc.scan(tiny_sd, colour, seeds=1, steps=2, progress=False)
    table = result.table()
    assert table.splitlines()[1].split()[2] == result.ranking[0]
    assert table.count(" *") == len(result.selected)
