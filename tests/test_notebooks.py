"""The example notebooks run, offline, on the built-in models, and still find what they say they find.

Each notebook in examples/ is executed with nbclient in a fresh python3 kernel (the venv's Python:
jupyter_client runs a kernel spec's ``python`` as the interpreter running the tests), in a temporary
working directory; a notebook passes when no cell fails and its printed output contains the known
answers below. A new notebook without expectations fails, so none goes unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbclient
import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Regular expressions each notebook's text output must match (known answers, not just "it ran").
EXPECT: dict[str, list[str]] = {
    # The toy model's colour lives in the last attn2 of the 8-px decoder block; it alone moves it all.
    "image_unet.ipynb": [
        r"top site: up_blocks\.1\.attentions\.1\.",
        r"set of 1: joint effect 1\.00, necessity 1\.00",
        r"random sets of 1: mean 0\.[0-2]",
        r"contribution",
    ],
    # The toy DiT's colour lives in the attn2 of blocks 0 and 1; the pair moves it all, random pairs
    # next to nothing. A planted site (in tiny-pixart) ranks first with effect 1; a planted head likewise.
    "image_dit.ipynb": [
        r"model: toy-shapes-dit, 8 sites, adapter 'pixart'",
        r"greedy set \['transformer_blocks\.0\.attn2', 'transformer_blocks\.1\.attn2'\]: joint effect 1\.00, "
        r"necessity 1\.00",
        r"10 random sets of 2: mean 0\.0",
        r"planted site found: transformer_blocks\.1\.attn2 effect 1\.000",
        r"planted head found: transformer_blocks\.1\.attn2#h1 effect 1\.000",
    ],
    # toy-tones: the instrument lives in the first cross-attentions of its 16 blocks; the donor's
    # clip is read as the donor's instrument; a planted t5 site of tiny AudioLDM2 is found.
    "audio.ipynb": [
        r"model: toy-tones, 16 sites, sample rate 4000 Hz",
        r"top site: transformer_blocks\.[0-2]\.attn2",
        r"set of [1-3]: joint effect (0\.9\d|1\.00), necessity (0\.9\d|1\.00)",
        r"donor +heard as saw ",
        r"planted site found: up_blocks\.0\.attentions\.2\.transformer_blocks\.0\.attn2 effect 1\.000",
    ],
    # The notebook's own adapter loads an AuraFlow pipeline and its planted site is found.
    "custom_adapter.ipynb": [
        r"adapter: auraflow, 3 sites",
        r"planted site found: joint_transformer_blocks\.1\.attn effect 1\.000",
        r'auraflow = "multiloc_auraflow:AuraFlowAdapter"',
    ],
}


def _text(nb) -> str:
    """All stream and text/plain outputs of the executed notebook, concatenated."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))


def test_every_notebook_has_expectations() -> None:
    assert NOTEBOOKS, "no notebooks in examples/"
    assert set(NOTEBOOKS) == set(EXPECT), "every example notebook needs known answers in EXPECT"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    # Stored without outputs: a notebook in the repository stays small and diffable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} has stored outputs"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: no notebook reaches for the hub
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    text = _text(nb)
    for pattern in EXPECT[name]:
        assert re.search(pattern, text), f"{name}: no output matches {pattern!r}; output:\n{text[-3000:]}"
