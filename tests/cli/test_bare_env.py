"""The documented exit code under a bare environment (`env -i`, as cron and a clean CI run start dpcli) when
stderr cannot take its last bytes: without PYTHONUNBUFFERED, Python's final flush of a full or reader-less
stderr would turn any exit code into 120 (the entry point's ``_settle_stderr`` prevents it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpcli.stages.masks import read_mask

ROOT = Path(__file__).resolve().parents[2]


def _bare_run(args: list[str], stream: str, home: Path) -> int:
    """``python -m dpcli ARGS`` with only PATH, HOME and the import path set, stderr full or its reader gone."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT)}
    if stream == "full":
        with open("/dev/full", "w") as full:
            return subprocess.run(
                [sys.executable, "-m", "dpcli", *args],
                stdout=subprocess.DEVNULL,
                stderr=full,
                env=env,
                cwd=home,
                timeout=120,
                check=False,
            ).returncode
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpcli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=home
    )
    assert proc.stderr is not None
    proc.stderr.close()  # the reader goes away before dpcli writes its first byte
    return proc.wait(timeout=120)


@pytest.mark.parametrize("stream", ["full", "reader gone"])
def test_a_broken_stderr_keeps_the_documented_exit_code_in_a_bare_environment(tmp_path, stream):
    S = np.random.default_rng(0).normal(size=(40, 6))
    np.save(tmp_path / "S.npy", S)
    mask = tmp_path / "m.h5"
    # a finished prune: its progress and summary lines are lost, its exit code (0) and mask are not
    assert (
        _bare_run(["prune", str(tmp_path / "S.npy"), "--prune-count", "5", "--out", str(mask)], stream, tmp_path) == 0
    )
    m = read_mask(mask)
    assert m.n == 40 and m.n_pruned == 5 and int((~m.keep).sum()) == 5  # the whole mask, recounted
    # a usage error: its one line is lost, its exit code (2) is not
    assert _bare_run(["prune", "x.h5", "--epsilom", "1"], stream, tmp_path) == 2
