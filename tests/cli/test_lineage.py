"""A cached mask is reused only when it descends from the influence.h5 in hand (issue #10, item 1)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np

from dpcli.artifacts.h5 import seal
from dpcli.config import PruneConfig
from dpcli.stages import core, masks, pipeline
from tests.conftest import TINY, run_json


def _make_stale(mask_path, keep: np.ndarray) -> None:
    """Turn a cached mask into one made from another S: other samples pruned, another lineage."""
    with h5py.File(mask_path, "r+") as f:
        f["keep"][...] = keep
        for name, rows in (("keep_indices", np.flatnonzero(keep)), ("pruned_indices", np.flatnonzero(~keep))):
            del f[name]
            f[name] = rows
        f.attrs["influence_fingerprint"] = "0" * 16
        f.attrs["fingerprint"] = "f" * 16
        seal(f, force=True)


def test_retrain_recomputes_a_mask_that_descends_from_another_influence(tmp_path, capsys):
    args = ["retrain", "digits", "--prune-count", 20, *TINY, "--epochs", 1, "--run-root", tmp_path / "runs"]
    first = run_json(args, capsys)
    mask_file = first["mask"]
    original = masks.read_mask(mask_file)
    stale = np.ones(original.n, bool)
    stale[:20] = False
    assert not np.array_equal(stale, original.keep)
    _make_stale(mask_file, stale)

    second = run_json(args, capsys)
    assert second["mask"] == mask_file
    used = masks.read_mask(mask_file)
    # the mask the command used is the one prune computes from this S, independently, right now
    info = core.read_influence_info(original.influence)
    reference = run_json(["prune", info.path, "--prune-count", 20, "--out", tmp_path / "ref.h5"], capsys)
    assert np.array_equal(used.keep, masks.read_mask(reference["mask"]).keep)
    assert used.influence_fingerprint == info.fingerprint
    assert second["n_kept"] == original.n - 20


def test_cached_masks_are_checked_against_the_influence_fingerprint(tiny_run, tmp_path):
    influence = tmp_path / "influence.h5"
    shutil.copy(tiny_run.influence, influence)
    info = core.read_influence_info(influence)
    cfg = PruneConfig(count=30)
    made = pipeline.ensure_mask(info, cfg, force=False)
    again = pipeline.ensure_mask(info, cfg, force=False)
    assert again.fingerprint == made.fingerprint and again.path == made.path  # reused as is

    rnd = pipeline.ensure_random_mask(info, 30, seed=7, force=False)
    for m in (made, rnd):
        keep = ~m.keep  # any other selection
        _make_stale(m.path, keep)
    fresh = pipeline.ensure_mask(info, cfg, force=False)
    fresh_rnd = pipeline.ensure_random_mask(info, 30, seed=7, force=False)
    assert np.array_equal(fresh.keep, made.keep) and fresh.influence_fingerprint == info.fingerprint
    assert np.array_equal(fresh_rnd.keep, rnd.keep) and fresh_rnd.influence_fingerprint == info.fingerprint
    with h5py.File(influence, "r") as f:
        S = f["S"][()].astype(np.float64)
    assert np.isclose(fresh.norm, np.linalg.norm(S[~fresh.keep].sum(0)), rtol=1e-9)
