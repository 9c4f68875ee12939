"""A prune that waited on another job's lock and reuses the mask it published still writes --indices-out."""

from __future__ import annotations

import threading
import time

import numpy as np

from dpcli.artifacts.lock import artifact_lock
from dpcli.config import PruneConfig
from dpcli.stages import masks
from tests.conftest import run_cli


def test_a_job_that_waited_and_reuses_the_mask_writes_its_indices(tiny_run, tmp_path, capsys):
    out, kept = tmp_path / "mask.h5", tmp_path / "kept.txt"
    cfg = PruneConfig(ratio=0.3, method="random", seed=4)
    holding, done = threading.Event(), threading.Event()

    def other_job() -> None:  # holds the mask's lock, then publishes the mask this job asks for
        with artifact_lock(out):
            holding.set()
            time.sleep(1.0)  # the main job is waiting on the lock by now
            masks.prune(tiny_run.influence, out, cfg)
        done.set()

    thread = threading.Thread(target=other_job)
    thread.start()
    assert holding.wait(30)
    code, _, err = run_cli(
        [
            "prune",
            tiny_run.influence,
            "--prune-ratio",
            "0.3",
            "--method",
            "random",
            "--solver-seed",
            "4",
            "--out",
            out,
            "--indices-out",
            kept,
        ],
        capsys,
    )
    thread.join(60)
    assert done.is_set() and code == 0, err
    assert "while this job waited" in err  # the reuse path, not a second selection
    mask = masks.read_mask(out)
    np.testing.assert_array_equal(np.loadtxt(kept, dtype=np.int64), np.flatnonzero(mask.keep))
    assert 0 < len(np.loadtxt(kept)) == mask.n_kept < len(mask.keep)
