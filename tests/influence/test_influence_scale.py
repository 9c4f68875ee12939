"""Influence at scale: CG without the dense Hessian, the JL sketch, and shard/merge through the CLI."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from dpcli.artifacts.rows import mapped_rows
from dpcli.config import InfluenceConfig
from dpcli.errors import DpcliError
from dpcli.influence import kernels as infl
from dpcli.influence.base import ESTIMATORS, LastLayer
from dpcli.influence.cg import CGStats, cg_influence
from dpcli.influence.kernels import exact_influence
from dpcli.influence.sketch import Sketch, jl_failure_bound, parse_shard, shard_rows
from dpcli.stages.core import read_influence_info
from tests.cli.test_cli import _assert_user_error
from tests.conftest import TINY, run_cli, run_json

F64 = torch.float64


def _problem(n: int, dim: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=gen, dtype=F64).abs()  # post-ReLU-like features
    labels = torch.randint(0, classes, (n,), generator=gen)
    weight = torch.randn(classes, dim, generator=gen, dtype=F64)
    bias = 0.3 * torch.randn(classes, generator=gen, dtype=F64)
    return features, labels, weight, bias


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def _S(path):
    with h5py.File(path, "r") as f:
        return f["S"][()]


# ----------------------------------------------------------------------------- conjugate gradients
def test_cg_matches_dense_exact() -> None:
    args = _problem(240, 10, 6, seed=0)
    dense = exact_influence(*args, damping=1e-3).astype(np.float64)
    stats = CGStats()
    got = cg_influence(*args, damping=1e-3, chunk_size=50, stats=stats)  # default --cg-tol 1e-6
    assert got.dtype == np.float32 and got.shape == dense.shape
    assert stats.max_relative_residual <= 1e-6 and len(stats.iterations) == 5
    assert _rel(got, dense) < 3e-6
    per_row = np.linalg.norm(got - dense, axis=1) / np.linalg.norm(dense, axis=1)
    assert per_row.max() < 1e-5
    # a tight tolerance reaches float32 rounding of the dense answer
    tight = cg_influence(*args, damping=1e-3, tol=1e-10)
    np.testing.assert_allclose(tight, dense, rtol=1e-5, atol=1e-6 * np.abs(dense).max())


def test_kronecker_preconditioner_reduces_iterations() -> None:
    args = _problem(300, 12, 6, seed=1)
    with_p, without = CGStats(), CGStats()
    a = cg_influence(*args, damping=1e-3, tol=1e-8, stats=with_p)
    b = cg_influence(*args, damping=1e-3, tol=1e-8, stats=without, preconditioner="none")
    assert with_p.total_iterations < 0.6 * without.total_iterations, (with_p.iterations, without.iterations)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_cg_rows_streaming_and_chunk_independence() -> None:
    args = _problem(97, 5, 4, seed=2)
    whole = cg_influence(*args, damping=1e-2, tol=1e-9)
    got: list[tuple[int, np.ndarray]] = []
    ticks: list[tuple[int, int]] = []
    ret = cg_influence(
        *args,
        damping=1e-2,
        tol=1e-9,
        chunk_size=16,
        rows=(30, 80),
        sink=lambda s, r: got.append((s, r.copy())),
        progress=lambda d, t: ticks.append((d, t)),
    )
    assert ret is None
    assert [s for s, _ in got] == [30, 32, 48, 64] and ticks[-1] == (50, 50)  # the global 16-row grid
    np.testing.assert_allclose(np.concatenate([r for _, r in got]), whole[30:80], rtol=1e-6, atol=1e-9)
    # a row range solves whole grid chunks, so shards reproduce a single run bit for bit
    single = cg_influence(*args, damping=1e-2, chunk_size=16)
    parts = [cg_influence(*args, damping=1e-2, chunk_size=16, rows=r) for r in ((0, 40), (40, 97))]
    assert np.array_equal(np.concatenate(parts), single)
    for method in ("exact", "lissa"):
        cfg = InfluenceConfig(estimator=method, lissa_depth=10, lissa_batch_size=32)
        runs = []
        for r in ((0, 97), (0, 40), (40, 97)):
            rows: list[np.ndarray] = []
            solve_rows(method, *args, damping=0.1, cfg=cfg, rows=r, sink=lambda s, x: rows.append(x), chunk_size=16)  # noqa: B023
            runs.append(np.concatenate(rows))
        assert np.array_equal(runs[0], np.concatenate(runs[1:])), method


def solve_rows(method, features, labels, weight, bias, *, damping, cfg, rows, sink, info=None, chunk_size=4096):
    """Rows of S through the registered estimator, as compute_influence calls it; returns the solver used."""
    est = ESTIMATORS.get(method)(cfg)
    return est.solve(
        LastLayer(features, labels, weight, bias),
        damping=damping,
        rows=rows,
        sink=sink,
        info=info,
        chunk_size=chunk_size,
    )["solver"]


def test_cg_errors() -> None:
    args = _problem(40, 4, 3, seed=3)
    with pytest.raises(DpcliError, match="--cg-max-iter"):
        cg_influence(*args, damping=1e-4, tol=1e-12, max_iter=2, preconditioner="none")
    with pytest.raises(DpcliError, match="--cg-tol"):
        cg_influence(*args, damping=1e-3, tol=0.0)
    with pytest.raises(DpcliError, match="damping"):
        cg_influence(*args, damping=0.0)


def test_exact_falls_back_to_cg_above_dense_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _problem(150, 8, 5, seed=4)  # d = 45
    dense = exact_influence(*args, damping=1e-3).astype(np.float64)
    monkeypatch.setattr(infl, "max_dense_dim", lambda: 40)
    with pytest.raises(DpcliError):  # the dense routine itself still refuses
        exact_influence(*args, damping=1e-3)
    rows: list[np.ndarray] = []
    said: list[str] = []
    used = solve_rows(
        "exact",
        *args,
        damping=1e-3,
        cfg=InfluenceConfig(),
        rows=(0, 150),
        sink=lambda s, r: rows.append(r),
        info=said.append,
    )
    assert used == "cg" and "conjugate gradients" in said[0]
    assert _rel(np.concatenate(rows), dense) < 3e-6


def test_exact_fallback_through_cli_matches_dense(tiny_run, tmp_path, capsys, monkeypatch) -> None:
    dense = _S(tiny_run.influence)
    d = dense.shape[1]
    monkeypatch.setattr(infl, "max_dense_dim", lambda: d - 1)
    code, _, err = run_cli(["influence", tiny_run.checkpoint, "--out", tmp_path / "cg.h5", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "conjugate gradients" in err
    got = _S(tmp_path / "cg.h5")
    assert _rel(got, dense.astype(np.float64)) < 1e-5
    assert read_influence_info(tmp_path / "cg.h5").method == "exact"


# ----------------------------------------------------------------------------- JL sketch
def test_sketch_is_deterministic_and_blockwise() -> None:
    rows = np.random.default_rng(0).standard_normal((7, 1000)).astype(np.float32)
    a = Sketch(1000, 64, seed=5, block_rows=300)
    b = Sketch(1000, 64, seed=5, block_rows=300)
    b._cache = None  # regenerate every block on every call: same R
    np.testing.assert_array_equal(a.apply(rows), b.apply(rows))
    np.testing.assert_array_equal(a.apply(rows), b.apply(rows))
    R = a.matrix()
    assert R.shape == (1000, 64)
    np.testing.assert_allclose(a.apply(rows), (rows.astype(np.float64) @ R).astype(np.float32), rtol=1e-5, atol=1e-5)
    assert abs(R.var() * 64 - 1.0) < 0.02  # entries N(0, 1/k)
    assert not np.array_equal(Sketch(1000, 64, seed=6).apply(rows), a.apply(rows))


def test_sketch_preserves_subset_sum_norms_within_stated_bound(tiny_run) -> None:
    S = _S(tiny_run.influence).astype(np.float64)
    n, d = S.shape
    k, t = 2048, 0.15
    SR = Sketch(d, k, seed=0).apply(S.astype(np.float32)).astype(np.float64)
    rng = np.random.default_rng(0)
    trials, failures, ratios = 300, 0, []
    for _ in range(trials):
        subset = rng.random(n) < rng.uniform(0.05, 0.5)
        true = np.linalg.norm(S[subset].sum(0))
        ratio = np.linalg.norm(SR[subset].sum(0)) / true
        ratios.append(ratio)
        failures += abs(ratio - 1.0) > t
    bound = jl_failure_bound(k, t)  # 2 exp(-k t^2 / 8) ~ 0.0063
    assert failures <= trials * bound, (failures, trials * bound)
    assert abs(np.mean(np.square(ratios)) - 1.0) < 0.02  # unbiased in the squared norm


def test_sketch_through_cli_and_prune(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "sk.h5"
    res = run_json(
        ["influence", tiny_run.checkpoint, "--sketch", 96, "--sketch-seed", 3, "--out", out, "--device", "cpu"], capsys
    )
    S = _S(tiny_run.influence)
    with h5py.File(out, "r") as f:
        assert f["S"].shape == (S.shape[0], 96) and f["S"].dtype == np.float32
        assert f.attrs["sketch_k"] == 96 and f.attrs["sketch_seed"] == 3
    np.testing.assert_array_equal(_S(out), Sketch(S.shape[1], 96, seed=3).apply(S))
    assert res["fingerprint"] == read_influence_info(out).fingerprint
    mask = run_json(["prune", out, "--prune-ratio", 0.3, "--out", tmp_path / "m.h5"], capsys)
    with h5py.File(tmp_path / "m.h5", "r") as f:  # the mask says its norm is that of the sketch
        assert f.attrs["sketch_k"] == 96 and "96-column sketch" in f.attrs["certificate"]
    assert mask["n_pruned"] == round(0.3 * S.shape[0]) or mask["n_pruned"] == int(0.3 * S.shape[0])
    _assert_user_error(
        ["influence", tiny_run.checkpoint, "--sketch", 0, "--out", tmp_path / "x.h5"],
        capsys,
        "--sketch must be a positive integer",
    )
    from dpcli.stages.bound import predict

    with pytest.raises(DpcliError, match="sketched"):  # Theorem 1's check needs the real S
        predict(out, np.ones(S.shape[0], bool))


def test_auto_sketch_width_follows_the_budget(monkeypatch) -> None:
    from dpcli.influence.sketch import auto_sketch_k

    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "4G")
    assert auto_sketch_k(50_000, 2_570) is None  # CIFAR-10's dense S (0.5 GB) fits: nothing changes
    assert auto_sketch_k(200_000, 3_300) is None  # 2.6 GB fits the 4 GiB default
    k = auto_sketch_k(1_281_167, 1000 * 2049)  # ImageNet-1k, ResNet-50 head: 10.5 TB dense
    assert k == (2 << 30) // (4 * 1_281_167) // 64 * 64 == 384 and 1_281_167 * k * 4 <= 2 << 30
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "320M")
    assert auto_sketch_k(200_000, 3_300) == 256  # the floor: 160 MiB / 800 kB a column = 209 columns
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "64G")
    assert auto_sketch_k(1_281_167, 1000 * 2049) == 4096  # the ceiling
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "1K")
    assert auto_sketch_k(1000, 200) is None  # a sketch no narrower than S is no sketch


def test_dataset_mode_prune_sketches_an_S_over_the_budget(tiny_run, tmp_path, capsys, monkeypatch) -> None:
    """Without --sketch, dataset-mode prune stores S R once the dense S would pass DPCLI_SOLVE_BUDGET, says so,
    and the stored rows are the dense S times the seeded R (computed here independently by `influence`)."""
    args = [
        "prune",
        "digits",
        *TINY,
        "--prune-ratio",
        0.3,
        "--method",
        "optimization",
        "--device",
        "cpu",
        "--run-root",
        tmp_path / "runs",
        "--json",
    ]
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "200K")  # digits' dense S is 1,438 x d float32, several MB
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "above DPCLI_SOLVE_BUDGET; storing its Johnson-Lindenstrauss sketch S R (1,438 x 256)" in err
    doc = json.loads(out)
    with h5py.File(doc["influence"], "r") as f:
        sketched, k = f["S"][()], int(f.attrs["sketch_k"])
    with h5py.File(doc["mask"] if "mask" in doc else doc["out"], "r") as f:
        assert "256-column sketch" in f.attrs["certificate"]
    dense_path = tmp_path / "dense.h5"
    assert run_cli(["influence", doc["checkpoint"], "--out", dense_path, "--device", "cpu", "--quiet"], capsys)[0] == 0
    dense = _S(dense_path)
    assert k == 256 and sketched.shape == (dense.shape[0], 256) and dense.shape[1] > 256
    np.testing.assert_allclose(sketched, Sketch(dense.shape[1], 256, seed=0).apply(dense), rtol=1e-5, atol=1e-9)
    monkeypatch.delenv("DPCLI_SOLVE_BUDGET")  # under the default budget the same command keeps the dense S
    code, out, err = run_cli(args + ["--run-root", tmp_path / "runs2"], capsys)
    assert code == 0 and "Johnson-Lindenstrauss" not in err
    with h5py.File(json.loads(out)["influence"], "r") as f:
        assert f["S"].shape == dense.shape and "sketch_k" not in f.attrs


# ----------------------------------------------------------------------------- shards
def test_shard_rows_and_spec() -> None:
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    ranges = [shard_rows(10, (i, 3)) for i in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    for bad in ("3/2", "1/0", "a/b", "1"):
        with pytest.raises(DpcliError, match="--shard"):
            parse_shard(bad)


def test_shards_merge_to_the_unsharded_artifact(tiny_run, tmp_path, capsys) -> None:
    parts = [tmp_path / f"part-{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        res = run_json(
            ["influence", tiny_run.checkpoint, "--shard", f"{i}/2", "--out", part, "--device", "cpu"], capsys
        )
        assert res["shard"] == i and res["shards"] == 2
    full = read_influence_info(tiny_run.influence)
    n = full.n
    with h5py.File(parts[1], "r") as f:
        assert (f.attrs["row_start"], f.attrs["row_stop"], f.attrs["n_total"]) == (n // 2, n, n)
        assert f["S"].shape == (n - n // 2, full.d)
    # a part is not a usable S
    _assert_user_error(["prune", parts[0], "--epsilon", 1], capsys, "merge the shards first")
    merged = tmp_path / "merged.h5"
    res = run_json(["influence", tiny_run.checkpoint, "--merge", parts[1], parts[0], "--out", merged], capsys)
    assert np.array_equal(_S(merged), _S(tiny_run.influence))  # byte-identical S
    for path in (merged, parts[0]):  # stored contiguously: prune maps it
        with h5py.File(path, "r") as f:
            assert mapped_rows(f["S"]) is not None
    info = read_influence_info(merged)
    assert info.fingerprint == full.fingerprint == res["fingerprint"]
    assert (info.n, info.d, info.method, info.checkpoint_fingerprint) == (
        n,
        full.d,
        full.method,
        full.checkpoint_fingerprint,
    )
    with h5py.File(merged, "r") as f, h5py.File(tiny_run.influence, "r") as g:
        for name in ("loss", "grad_norm", "labels", "test_grad", "theta"):
            assert np.array_equal(f[name][()], g[name][()])
        assert "shards" not in f.attrs
    run_json(["prune", merged, "--prune-count", 5, "--out", tmp_path / "m.h5"], capsys)

    # error cases: one clear line each
    ck = tiny_run.checkpoint
    _assert_user_error(["influence", ck, "--merge", parts[0], "--out", tmp_path / "x.h5"], capsys, "are missing")
    _assert_user_error(
        ["influence", ck, "--merge", parts[0], parts[1], parts[1], "--out", tmp_path / "x.h5"],
        capsys,
        "overlaps another shard",
    )
    other = tmp_path / "other-part.h5"
    shutil.copy(parts[1], other)
    with h5py.File(other, "r+") as f:
        f.attrs["checkpoint_fingerprint"] = "0" * 16
    _assert_user_error(
        ["influence", ck, "--merge", parts[0], other, "--out", tmp_path / "x.h5"], capsys, "different checkpoint"
    )
    _assert_user_error(["influence", ck, "--merge", other, "--out", tmp_path / "x.h5"], capsys, "another checkpoint")
    _assert_user_error(
        ["influence", ck, "--merge", tiny_run.influence, "--out", tmp_path / "x.h5"], capsys, "is not a shard"
    )
    _assert_user_error(["influence", ck, "--merge", parts[0], parts[1]], capsys, "--merge needs --out")
    assert not (tmp_path / "x.h5").exists()


def test_bad_shard_specs(tiny_run, tmp_path, capsys) -> None:
    ck = tiny_run.checkpoint
    _assert_user_error(["influence", ck, "--shard", "3/2", "--out", tmp_path / "p.h5"], capsys, "--shard 3/2")
    _assert_user_error(["influence", ck, "--shard", "1/0", "--out", tmp_path / "p.h5"], capsys, "--shard 1/0")
    _assert_user_error(["influence", ck, "--shard", "x", "--out", tmp_path / "p.h5"], capsys, "--shard must look like")
    _assert_user_error(["influence", ck, "--shard", "0/2"], capsys, "--shard needs --out")
    _assert_user_error(["influence", ck, "--shard", "0/2", "--merge", "--out", tmp_path / "p.h5"], capsys, "not both")
    _assert_user_error(["influence", ck, ck], capsys, "unexpected extra arguments")


def test_row_solves_cap_their_chunks_by_bytes_and_keep_the_rows(monkeypatch):
    """A chunk of gradients is chunk x d float64: capped at 32 MiB, at least 64 rows; the rows do not change."""
    import torch

    from dpcli.influence import kernels

    rng = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 5, generator=rng), torch.randint(0, 3, (300,), generator=rng)
    w, b = torch.randn(3, 5, generator=rng), torch.randn(3, generator=rng)
    seen = []

    def solve(g):
        seen.append(g.shape[0])
        return g.clone()

    full = kernels.solve_in_chunks(feats, labels, w, b, solve, chunk_size=4096)
    assert seen == [300]
    seen.clear()
    monkeypatch.setattr(kernels, "_SOLVE_BYTES", 8 * 18 * 100)  # d = 3 x 6 = 18: 100 rows a chunk
    capped = kernels.solve_in_chunks(feats, labels, w, b, solve, chunk_size=4096)
    assert seen == [100, 100, 100]
    np.testing.assert_array_equal(capped, full)
    seen.clear()
    monkeypatch.setattr(kernels, "_SOLVE_BYTES", 8)  # the floor
    kernels.solve_in_chunks(feats, labels, w, b, solve, chunk_size=4096)
    assert seen == [64, 64, 64, 64, 44]
