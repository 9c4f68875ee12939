"""The epsilon certificate: strict, computed from S itself, the only way to a mask file, sketch-aware."""

from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest

from dpcli.artifacts.h5 import seal
from dpcli.config import PruneConfig
from dpcli.errors import DpcliError
from dpcli.select import linalg
from dpcli.select.certificate import Certificate, certify
from dpcli.stages.core import load_S, read_influence_info
from dpcli.stages.masks import prune, read_mask, write_mask
from tests.conftest import run_cli


def _plain_norm(S: np.ndarray, pruned: np.ndarray) -> float:
    total = np.zeros(S.shape[1])
    for i in np.flatnonzero(pruned):
        total += S[i].astype(np.float64)
    return float(np.sqrt((total**2).sum()))


def test_certificate_norm_is_recomputed_from_S():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(200, 7)).astype(np.float32)
    pruned = rng.random(200) < 0.3
    cert = certify(S, pruned)
    assert cert.norm == pytest.approx(_plain_norm(S, pruned), rel=1e-12)
    assert cert.n == 200 and cert.n_pruned == int(pruned.sum())
    assert np.array_equal(cert.keep, ~pruned)


def test_tolerance_is_strict():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(50, 4))
    pruned = np.zeros(50, bool)
    pruned[:5] = True
    norm = _plain_norm(S, pruned)
    assert certify(S, pruned, norm * (1 + 1e-12)).norm <= norm * (1 + 1e-12)
    with pytest.raises(DpcliError, match="exceeds epsilon"):
        certify(S, pruned, norm * (1 - 1e-12))  # the old slack eps (1 + 1e-9) + 1e-12 let this pass
    with pytest.raises(DpcliError, match="exceeds epsilon"):
        certify(S, pruned, 0.0)  # eps = 0 admits only a zero sum
    assert certify(S, np.zeros(50, bool), 0.0).norm == 0.0


def test_a_certificate_cannot_be_forged_and_a_mask_needs_one(tmp_path, tiny_run):
    with pytest.raises(TypeError, match="certify"):
        Certificate(np.zeros(3, bool), 0.0, None)
    info = read_influence_info(tiny_run.influence)
    with pytest.raises(TypeError, match="Certificate"):
        write_mask(
            tmp_path / "m.h5",
            np.ones(info.n, bool),
            mode="cardinality",
            target=0.0,
            solver="x",
            info=info,
            config={},
            seconds=0.0,
        )
    assert not (tmp_path / "m.h5").exists()


def test_score_rule_epsilon_masks_are_certified_strictly(tmp_path, tiny_run):
    with h5py.File(tiny_run.influence) as f:
        S = f["S"][()]
    base = 2.0 * float(np.sort(np.linalg.norm(S.astype(np.float64), axis=1))[len(S) // 2])
    for eps in (base, 4 * base):
        m = prune(tiny_run.influence, tmp_path / f"m{eps}.h5", PruneConfig(epsilon=eps, method="forgetting"))
        assert m.n_pruned > 0
        assert _plain_norm(S, ~m.keep) <= eps
        assert m.norm == pytest.approx(_plain_norm(S, ~m.keep), rel=1e-9)


def test_sketched_certificate_is_recorded_and_said(tmp_path, tiny_run, capsys):
    sk = tmp_path / "sk.h5"
    assert run_cli(["influence", tiny_run.checkpoint, "--out", sk, "--sketch", "16", "--device", "cpu", "--quiet"]) == (
        0,
        "",
        "",
    )
    code, _, err = run_cli(
        ["prune", sk, "--prune-ratio", "0.3", "--method", "optimization", "--out", tmp_path / "m.h5"], capsys
    )
    assert code == 0, err
    assert "sketch" in err and "true norm is not certified" in err
    with h5py.File(tmp_path / "m.h5") as f:
        assert int(f.attrs["sketch_k"]) == 16
        assert "sketch" in str(f.attrs["certificate"])
    plain = prune(tiny_run.influence, tmp_path / "p.h5", PruneConfig(ratio=0.3, method="optimization"))
    with h5py.File(plain.path) as f:
        assert int(f.attrs["sketch_k"]) == 0 and "sketch" not in str(f.attrs["certificate"])
    assert read_mask(plain.path).n_pruned == read_mask(tmp_path / "m.h5").n_pruned


def test_certify_memory_is_chunked_by_bytes(monkeypatch):
    """A wide S is streamed in chunks of CHUNK_BYTES whatever d is: no full float64 copy."""
    monkeypatch.setattr(linalg, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(linalg.masked_sum, "__defaults__", (1 << 20,))
    monkeypatch.setattr(linalg.subset_norm, "__defaults__", (1 << 20,))
    rng = np.random.default_rng(2)
    S = rng.normal(size=(400, 5000)).astype(np.float32)  # 8 MB; a float64 copy would be 16 MB
    pruned = rng.random(400) < 0.5
    tracemalloc.start()
    cert = certify(S, pruned)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert cert.norm == pytest.approx(_plain_norm(S, pruned), rel=1e-9)
    assert peak < 4 << 20, peak


def _copy_artifact(src_path, dst_path, S, chunks=None) -> None:
    with h5py.File(src_path) as src, h5py.File(dst_path, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        for name in src:
            if name == "S":
                dst.create_dataset("S", data=S, chunks=chunks)
            else:
                dst.create_dataset(name, data=src[name][()])
        seal(dst, force=True)  # an artifact made by hand, with valid checksums: its content is what is tested


def test_prune_maps_S_instead_of_copying_it(tmp_path, tiny_run):
    """prune reads S through a read-only memory map (page cache, not heap) with the same values;
    an S stored in chunks (older artifacts, other tools) is copied into memory instead."""
    with h5py.File(tiny_run.influence) as f:
        dense = f["S"][()]
    big = np.tile(dense, (8, 1))  # 11,504 rows: 3.6 row chunks of the finiteness check
    path = tmp_path / "big.h5"
    _copy_artifact(tiny_run.influence, path, big)
    tracemalloc.start()
    S = load_S(path, mapped=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(S, big) and not S.flags.writeable
    assert peak < big.nbytes / 3, (peak, big.nbytes)  # the check's chunk temporaries, no copy of S
    chunked = tmp_path / "chunked.h5"
    _copy_artifact(tiny_run.influence, chunked, dense, chunks=(100, dense.shape[1]))
    S2 = load_S(chunked, mapped=True)
    assert np.array_equal(S2, dense) and S2.flags.writeable  # the fallback copy
    # the mapped S is refused on a non-finite row just like a copied one
    bad = dense.copy()
    bad[7, 3] = np.nan
    _copy_artifact(tiny_run.influence, tmp_path / "nan.h5", bad)
    with pytest.raises(DpcliError, match="1 rows with non-finite values"):
        load_S(tmp_path / "nan.h5", mapped=True)
    # and prune's result does not depend on how S was read
    a = prune(tiny_run.influence, tmp_path / "a.h5", PruneConfig(ratio=0.3, method="optimization"))
    b = prune(chunked, tmp_path / "b.h5", PruneConfig(ratio=0.3, method="optimization"))
    assert np.array_equal(read_mask(a.path).keep, read_mask(b.path).keep)


def test_load_S_refuses_rows_that_disagree_with_n(tmp_path, tiny_run):
    bad = tmp_path / "bad.h5"
    with h5py.File(tiny_run.influence) as f:
        _copy_artifact(tiny_run.influence, bad, f["S"][:1000])
    with pytest.raises(DpcliError, match="1000 rows but the artifact says n = 1438"):
        prune(bad, tmp_path / "m.h5", PruneConfig(ratio=0.3))
    assert not (tmp_path / "m.h5").exists()


def test_load_S_reads_a_copy_where_the_file_cannot_be_mapped(tmp_path, tiny_run, monkeypatch):
    """A file system without mmap (some network or FUSE mounts) gets the in-memory copy, not a traceback."""

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(np, "memmap", refuse)
    with h5py.File(tiny_run.influence) as f:
        dense = f["S"][()]
    S = load_S(tiny_run.influence, mapped=True)
    assert np.array_equal(S, dense) and S.flags.writeable
