"""docs/tutorial.md runs as written: its bash and python blocks, in order, in an empty directory, offline;
then what it promises is checked against the artifacts it made."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.M | re.S)
RUNNABLE = ("bash", "python")


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, the rest of the info string, code) of every fenced block, in order."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(text)]


def test_the_tutorials_blocks_are_all_runnable_or_marked():
    found = blocks(TUTORIAL.read_text())
    runnable = [b for b in found if b[0] in RUNNABLE and "not-run" not in b[1].split()]
    assert len(runnable) >= 5
    assert all(lang in (*RUNNABLE, "text") for lang, _, _ in found)  # nothing silently skipped
    assert not any("*" in code for lang, _, code in runnable if lang == "bash")  # results by name, not a glob


def _environment(tmp_path: Path) -> dict[str, str]:
    """`dpcli` and `python3` on PATH run this checkout's code with this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpcli").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dpcli "$@"\n')
    (bin_dir / "dpcli").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPCLI_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        PYTHONWARNINGS="ignore",
        DPCLI_DATA=str(tmp_path / "data"),
    )
    return env


def test_the_tutorial_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _environment(tmp_path)
    outputs = []
    for lang, info, code in blocks(TUTORIAL.read_text()):
        if lang not in RUNNABLE or "not-run" in info.split():
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (code, proc.stderr[-4000:])
        outputs.append(proc.stdout)
    help_text, _, python_out, _, accuracy_out = outputs
    assert all(stage in help_text for stage in ("train", "influence", "prune", "retrain", "verify-bound"))

    # step 2: kept.txt is the mask's keep set, and the mask is reached by its stable name
    kept = np.loadtxt(work / "kept.txt", dtype=np.int64)
    latest = work / "dpcli-runs" / "latest"
    with h5py.File(latest / "prune" / "mask.h5", "r") as f:
        keep = f["keep"][()]
    assert np.array_equal(kept, np.flatnonzero(keep)) and 0 < len(kept) < keep.size
    # step 3: the training script sees that many of the 1,438 digits (sklearn's 1,797 less the 20 % test split)
    from sklearn.datasets import load_digits

    y = load_digits().target
    n_train = len(y) - sum(int(np.sum(y == c) * 0.2 + 0.5) for c in range(10))
    assert python_out.strip() == f"training on {len(kept)} of {n_train} samples"
    # step 4 (read after it ran: verify-bound's random masks left latest/prune on step 2's mask, checked above)
    retrained = json.loads((latest / "retrain" / "metrics.json").read_text())
    assert retrained["n_kept"] == len(kept)
    assert json.loads((latest / "verify-bound" / "bound.json").read_text())["rows"]
    # step 5: the stage-by-stage chain gives the same kept indices, and the printed accuracy is retrain's
    assert np.array_equal(np.load(work / "kept.npy"), kept)
    (metrics,) = work.glob("retrain-*/metrics.json")
    assert float(accuracy_out) == pytest.approx(json.loads(metrics.read_text())["test_accuracy"])
