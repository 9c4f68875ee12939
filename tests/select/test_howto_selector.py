"""The how-to's example selector, taken from docs/howto-add-a-selector.md, works as one new file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import dpcli.select.methods as methods_pkg
from dpcli.config import PruneConfig
from dpcli.select.base import SELECTORS
from dpcli.select.signals import load_dynamics
from dpcli.stages.masks import prune

DOC = Path(__file__).resolve().parents[2] / "docs" / "howto-add-a-selector.md"


def test_the_documented_selector_is_one_new_file(tmp_path, monkeypatch, tiny_run):
    code = re.search(r"```python\n# dpcli/select/methods/loss_drop.py\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "loss_drop.py").write_text(code)
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(tmp_path)])
    assert "loss-drop" in SELECTORS.names()
    m = prune(tiny_run.influence, tmp_path / "m.h5", PruneConfig(ratio=0.25, method="loss-drop"))
    loss = load_dynamics(tiny_run.checkpoint, snapshots=False).loss
    drop = loss[0] - loss[-1]
    expected = np.lexsort((np.arange(len(drop)), drop))[: m.n_pruned]  # lowest scores pruned, ties by index
    assert m.n_pruned == round(0.25 * len(drop))
    assert set(np.flatnonzero(~m.keep)) == set(expected.tolist())
    SELECTORS._items.pop("loss-drop", None)
