"""The training loop without waste: host syncs, append-only checkpoints, speed options, float32 refinement, proxy.

CUDA-only checks are marked ``cuda`` and skipped without a GPU (benchmarks/gpu_smoke.sh runs them).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig
from dpcli.data.sources import load_dataset
from dpcli.errors import DpcliError
from dpcli.influence import kernels as infl
from dpcli.influence import precision
from dpcli.train import epochlog
from dpcli.train.checkpoint import load_checkpoint
from dpcli.train.dynamics import read_dynamics
from dpcli.train.loop import _deterministic_modules, train
from dpcli.train.trajectory import read_trajectory
from tests.conftest import interrupt_after, run_cli
from tests.conftest import tiny_config as _cfg

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_smoke.sh)")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --------------------------------------------------------------------------- host syncs

_READBACKS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_readbacks():
    """Count every call that moves a tensor's value to the host (on CUDA, each is a sync).

    ``.numpy()`` is not counted: it fails on a CUDA tensor, so device values can only reach the
    host through the methods counted here.
    """
    counts = {"n": 0}
    saved = {name: getattr(torch.Tensor, name) for name in _READBACKS}

    def wrap(name):
        orig = saved[name]

        def counted(self, *a, **k):
            counts["n"] += 1
            return orig(self, *a, **k)

        return counted

    for name in _READBACKS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield counts
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)


def test_host_readbacks_per_epoch_do_not_grow_with_steps(digits, tmp_path):
    """An epoch of 6 steps and one of 23 steps read back exactly as often: none of it is per step."""
    counts = []
    for bs in (256, 64):
        cfg = _cfg(epochs=1, batch_size=bs)
        with count_readbacks() as c:
            marks = []  # the count after every step: constant = no readback inside the step loop
            train(
                cfg,
                digits,
                tmp_path / f"b{bs}.h5",
                device=CPU,
                eval_every=10**9,
                on_batch=lambda *_: marks.append(c["n"]),  # noqa: B023
            )
        counts.append(c["n"])
        assert len(marks) == -(-len(digits.train.labels) // bs)
        assert len(set(marks)) == 1, marks
    assert counts[0] == counts[1], counts  # and the per-epoch ones (metrics, checkpoint) do not depend on steps


# --------------------------------------------------------------------------- append-only checkpoint


def _rows(path: Path) -> tuple:
    with h5py.File(path, "r") as f:
        return read_dynamics(f), read_trajectory(f)


def _assert_same_records(a: Path, b: Path) -> None:
    (da, ta), (db, tb) = _rows(a), _rows(b)
    np.testing.assert_array_equal(da.loss, db.loss)
    np.testing.assert_array_equal(da.correct, db.correct)
    for field in ("epochs", "lr", "weight", "bias", "momentum_weight", "momentum_bias", "has_momentum", "order"):
        np.testing.assert_array_equal(getattr(ta, field), getattr(tb, field), err_msg=field)


def test_epoch_rows_go_to_side_files_and_checkpoint_size_stays_flat(digits, tmp_path):
    cfg = _cfg(epochs=5, augment=True)
    path = tmp_path / "ck.h5"
    sizes, side, has_groups = [], [], []

    def watch(rec):
        sizes.append(path.stat().st_size)
        side.append(epochlog.epochs_on_disk(path))
        with h5py.File(path, "r") as f:
            has_groups.append("dynamics" in f or "trajectory" in f)

    train(cfg, digits, path, device=CPU, on_epoch=watch)
    assert side[:-1] == [list(range(k + 1)) for k in range(4)]  # one appended file per epoch
    assert has_groups == [False] * 4 + [True]  # consolidated once, at the end
    assert not epochlog.log_dir(path).exists()  # complete: self-contained file
    # rows for 1437 samples (~13 kB/epoch uncompressed) are not rewritten: the file does not grow
    assert max(sizes[:-1]) - min(sizes[:-1]) < 1024, sizes
    full = tmp_path / "ref.h5"
    train(cfg, digits, full, device=CPU)
    _assert_same_records(path, full)
    d, t = _rows(path)
    assert d.epochs == 5 and len(t) == 5


def test_resume_reads_appended_rows_and_rolls_back_a_torn_append(digits, tmp_path):
    cfg = _cfg(epochs=3, augment=True)
    full = tmp_path / "full.h5"
    train(cfg, digits, full, device=CPU)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, part, device=CPU, on_epoch=interrupt_after(2))
    assert load_checkpoint(part).epoch == 2 and epochlog.epochs_on_disk(part) == [0, 1]
    # a torn append: epoch 2's row reached the disk (wrong values), its checkpoint did not; plus a temp file
    rows = epochlog.read(part, 2)
    epochlog.append(part, 2, {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in rows[1].items()})
    (epochlog.log_dir(part) / ".junk.partial").write_bytes(b"x")
    assert epochlog.rollback(part, 2) == [2]
    assert epochlog.epochs_on_disk(part) == [0, 1]
    assert not list(epochlog.log_dir(part).glob("*.partial"))
    epochlog.append(part, 2, {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in rows[1].items()})
    resumed = train(cfg, digits, part, device=CPU)
    assert resumed.complete
    _assert_same_records(part, full)
    for key, value in load_checkpoint(full).state.items():
        assert torch.equal(value, resumed.state[key]), key


def test_stop_after_leaves_a_consolidated_resumable_checkpoint(digits, tmp_path):
    cfg = _cfg(epochs=4)
    path = tmp_path / "ck.h5"
    train(cfg, digits, path, device=CPU, stop_after=2)
    d, t = _rows(path)
    assert d.epochs == 2 and len(t) == 2  # readers of an incomplete checkpoint still see its rows
    train(cfg, digits, path, device=CPU)
    full = tmp_path / "full.h5"
    train(cfg, digits, full, device=CPU)
    _assert_same_records(path, full)


def test_checkpoint_without_side_log_resumes_twice(digits, tmp_path):
    """A checkpoint of an older dpcli (rows inside the file, no side log) survives two interruptions."""
    cfg = _cfg(epochs=3)
    path = tmp_path / "ck.h5"
    train(cfg, digits, path, device=CPU, stop_after=1)  # consolidated: rows inside checkpoint.h5
    epochlog.clear(path)  # = the old layout
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, path, device=CPU, on_epoch=interrupt_after(2))
    assert epochlog.epochs_on_disk(path) == [0, 1]  # epoch 0 copied over from the old file
    train(cfg, digits, path, device=CPU)
    full = tmp_path / "full.h5"
    train(cfg, digits, full, device=CPU)
    _assert_same_records(path, full)


def test_damaged_side_file_is_one_line_error(digits, tmp_path):
    cfg = _cfg(epochs=3)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, part, device=CPU, on_epoch=interrupt_after(2))
    (epochlog.log_dir(part) / "000001.npz").write_bytes(b"not a zip")
    with pytest.raises(DpcliError, match="damaged epoch record"):
        train(cfg, digits, part, device=CPU)


# --------------------------------------------------------------------------- speed options


def test_speed_options_are_in_the_run_key():
    base = TrainConfig(dataset="digits")
    assert {"channels_last": None, "compile": False, "deterministic": False}.items() <= base.to_dict().items()
    on = base.replace(channels_last=True)
    assert on.to_dict()["channels_last"] is True and TrainConfig.from_dict(on.to_dict()) == on
    off = base.replace(channels_last=False)  # off even on CUDA: a setting of its own, and it round-trips
    assert off.to_dict()["channels_last"] is False and TrainConfig.from_dict(off.to_dict()) == off
    assert TrainConfig.from_dict(base.to_dict()) == base


def test_channels_last_trains_the_same_model(digits, tmp_path):
    ref = train(_cfg(epochs=1), digits, tmp_path / "a.h5", device=CPU)
    nhwc = train(_cfg(epochs=1, channels_last=True), digits, tmp_path / "b.h5", device=CPU)
    for key, value in ref.state.items():
        torch.testing.assert_close(nhwc.state[key].contiguous(), value, rtol=1e-4, atol=1e-5)
    assert abs(ref.final.train_loss - nhwc.final.train_loss) < 1e-4


def test_a_compiler_failure_falls_back_to_the_eager_run(digits, tmp_path, monkeypatch, capsys):
    """torch.compile fails on some shapes (seen on an H200: 8x8 inputs + channels_last); the run goes on."""
    eager = train(_cfg(epochs=2), digits, tmp_path / "a.h5", device=CPU)

    class Broken(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            raise AssertionError("expected size 512==512, stride 9==1 at dim=1")

    monkeypatch.setattr(torch, "compile", lambda net, **kw: Broken(net))
    fell_back = train(_cfg(epochs=2, compile=True), digits, tmp_path / "b.h5", device=CPU)
    assert "--compile failed on this model (AssertionError" in capsys.readouterr().err
    for k, v in eager.state.items():
        assert torch.equal(v, fell_back.state[k]), k  # exactly the run without --compile


def test_deterministic_pooling_equals_adaptive_pooling():
    from dpcli.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=16, width=8, depth=2).eval()
    x = torch.randn(3, 3, 16, 16)
    before = model(x)
    _deterministic_modules(model)
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-6)


def test_deterministic_runs_are_bitwise_equal_on_cpu(digits, tmp_path):
    try:
        a = train(_cfg(epochs=1, deterministic=True), digits, tmp_path / "a.h5", device=CPU)
        b = train(_cfg(epochs=1, deterministic=True), digits, tmp_path / "b.h5", device=CPU)
    finally:
        torch.use_deterministic_algorithms(False)
    assert a.fingerprint == b.fingerprint


@pytest.mark.skipif(
    os.environ.get("DPCLI_TEST_COMPILE") != "1",
    reason="inductor compilation takes minutes on 2 shared cores; DPCLI_TEST_COMPILE=1 runs it",
)
def test_compile_trains_like_eager_on_cpu(digits, tmp_path):
    """torch.compile (inductor) must give the eager model's training."""
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    except Exception as exc:  # no C++ toolchain etc.
        pytest.skip(f"torch.compile does not work on this machine: {exc}")
    ref = train(_cfg(epochs=1, batch_size=256), digits, tmp_path / "a.h5", device=CPU)
    comp = train(_cfg(epochs=1, batch_size=256, compile=True), digits, tmp_path / "b.h5", device=CPU)
    assert abs(ref.final.train_loss - comp.final.train_loss) < 1e-3
    for key, value in ref.state.items():
        torch.testing.assert_close(comp.state[key], value, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- float32 + iterative refinement


def _problem(n=600, dim=24, classes=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    feats = (torch.randn(n, dim, generator=g) * torch.logspace(0, 1.5, dim)).to(device)  # anisotropic
    w = (torch.randn(classes, dim, generator=g) * 0.3).to(device)
    b = torch.randn(classes, generator=g).to(device) * 0.1
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    return feats, y, w, b


def test_float32_refined_matches_float64_to_the_stated_tolerance():
    f, y, w, b = _problem()
    damping, tol = 1e-3, 1e-6
    s64 = infl.exact_influence(f, y, w, b, damping=damping, chunk_size=128)
    s32 = precision.exact_influence_refined(f, y, w, b, damping=damping, chunk_size=128, tol=tol)
    rel = np.linalg.norm(s32 - s64, axis=1) / np.linalg.norm(s64, axis=1)
    assert rel.max() < 1e-5  # the rows are float32 in the artifact either way (2^-24 ~ 6e-8)
    # the refinement is what makes it so: one plain float32 solve is far off for this conditioning
    a = infl.last_layer_hessian(f, y, w, b) + damping * torch.eye(w.numel() + b.numel(), dtype=torch.float64)
    g = infl.per_sample_grads(f, y, w, b)
    plain = torch.cholesky_solve(g.T.float(), torch.linalg.cholesky(a.float())).T.double().numpy() / len(y)
    rel_plain = np.linalg.norm(plain - s64, axis=1) / np.linalg.norm(s64, axis=1)
    assert rel_plain.max() > 10 * rel.max()


def test_float32_refined_handles_saturated_samples():
    """Rows whose gradient is ~1e-20 (a sample fit with certainty) must not underflow in the float32 solve."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(600, 24, generator=g) * torch.logspace(0, 2.0, 24)  # large logits: some p_y == 1 - 1e-20
    w, b = torch.randn(5, 24, generator=g) * 0.3, torch.randn(5, generator=g) * 0.1
    y = torch.randint(0, 5, (600,), generator=g)
    s64 = infl.exact_influence(f, y, w, b, damping=1e-3)
    s32 = precision.exact_influence_refined(f, y, w, b, damping=1e-3, tol=1e-6)
    norms = np.linalg.norm(s64, axis=1)
    assert norms.min() < 1e-20 * norms.max()  # the problem does contain saturated samples
    big = norms > 1e-30
    rel = np.linalg.norm(s32 - s64, axis=1)[big] / norms[big]
    assert rel.max() < 1e-5
    assert np.abs(s32[~big]).max(initial=0.0) < 1e-20


def test_refinement_reports_an_unreachable_tolerance():
    f, y, w, b = _problem(n=100, dim=6, classes=3)
    with pytest.raises(DpcliError, match="--precision float64"):
        precision.exact_influence_refined(f, y, w, b, damping=1e-3, tol=1e-30)


def test_precision_option_and_auto():
    assert precision.resolve_precision("auto", CPU) == "float64"
    with pytest.raises(DpcliError, match="precision"):
        InfluenceConfig(precision="half").validate()
    assert InfluenceConfig().to_dict()["precision"] == "float64"
    assert InfluenceConfig(precision="float32-refined").to_dict()["precision"] == "float32-refined"


# --------------------------------------------------------------------------- selection via proxy


def test_proxy_mask_equals_the_proxy_pipeline_run_by_hand(digits, tmp_path):
    from dpcli.stages import core, masks
    from dpcli.stages.proxy import ProxySpec, select_via_proxy

    target = _cfg(epochs=4, width=16)
    spec = ProxySpec.parse("convnet:2")
    pcfg = PruneConfig(ratio=0.3)
    sel = select_via_proxy(digits, target, spec, pcfg, device=CPU, run_root=tmp_path / "runs")
    assert sel.proxy.epochs == 2 and sel.proxy.width == 16 and sel.proxy.arch == "convnet"
    assert set(sel.seconds) == {"train", "influence", "prune"}
    # by hand: train the proxy config, compute S, prune
    ck = tmp_path / "hand" / "ck.h5"
    train(target.replace(epochs=2), digits, ck, device=CPU)
    core.compute_influence(ck, tmp_path / "hand" / "s.h5", InfluenceConfig(), device=CPU, ds=digits)
    hand = masks.prune(tmp_path / "hand" / "s.h5", tmp_path / "hand" / "m.h5", pcfg, device=CPU, ds=digits)
    np.testing.assert_array_equal(sel.mask.keep, hand.keep)
    assert sel.mask.n_pruned == round(0.3 * len(digits.train.labels))


@pytest.mark.parametrize("text", ["", ":3", "convnet:0", "convnet:x"])
def test_proxy_spec_errors_are_one_line(text):
    from dpcli.stages.proxy import ProxySpec

    with pytest.raises(DpcliError, match="--proxy"):
        ProxySpec.parse(text)


def test_cli_prune_proxy(tmp_path, capsys):
    import json

    code, out, err = run_cli(
        [
            "prune",
            "digits",
            "--proxy",
            "convnet:1",
            "--prune-ratio",
            "0.2",
            "--epochs",
            "3",
            "--width",
            "8",
            "--depth",
            "2",
            "--device",
            "cpu",
            "--run-root",
            tmp_path,
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["proxy"]["epochs"] == 1 and doc["target"]["epochs"] == 3
    code, out, err = run_cli(
        ["prune", "digits", "--proxy", "convnet:zero", "--prune-ratio", "0.2", "--run-root", tmp_path], capsys
    )
    assert code != 0 and err.strip().startswith("dpcli: error:") and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the GPU smoke script


def test_gpu_smoke_script_parses_and_dry_runs(tmp_path):
    script = ROOT / "benchmarks" / "gpu_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    res = subprocess.run(
        ["bash", str(script), "--dry-run", str(tmp_path / "cifar10-jpg.tar.gz")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    for stage in (
        "pip install -q --no-deps",
        "pytest",
        "train",
        "influence",
        "prune",
        "retrain",
        "--proxy",
        "train_throughput.py",
    ):
        assert stage in res.stdout + res.stderr, stage
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode == 2 and "usage" in missing.stderr.lower()


# --------------------------------------------------------------------------- CUDA only


@cuda
def test_cuda_step_loop_does_not_synchronize_per_step(digits, tmp_path):
    counts = []
    for bs in (256, 64):
        with count_readbacks() as c:
            train(
                _cfg(epochs=1, batch_size=bs),
                digits,
                tmp_path / f"{bs}.h5",
                device=torch.device("cuda"),
                eval_every=10**9,
            )
        counts.append(c["n"])
    assert counts[0] == counts[1], counts


@cuda
def test_cuda_deterministic_resnet_runs_are_bitwise_equal(digits, tmp_path):
    cfg = _cfg(arch="resnet18", width=8, epochs=1, batch_size=128, deterministic=True)
    try:
        a = train(cfg, digits, tmp_path / "a.h5", device=torch.device("cuda"))
        b = train(cfg, digits, tmp_path / "b.h5", device=torch.device("cuda"))
    finally:
        torch.use_deterministic_algorithms(False)
    assert a.fingerprint == b.fingerprint


@cuda
def test_cuda_refined_influence_matches_cpu_float64():
    f, y, w, b = _problem()
    ref = infl.exact_influence(f, y, w, b, damping=1e-3)
    got = precision.exact_influence_refined(*_problem(device="cuda"), damping=1e-3, tol=1e-6)
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() < 1e-5


@cuda
def test_cuda_channels_last_bf16_compile_train(digits, tmp_path, capsys):
    """CIFAR-shaped data (3 x 32 x 32): the compiled channels_last bf16 step, no eager fallback."""
    import dataclasses

    from dpcli.data.base import Split

    up = lambda s: Split(np.repeat(np.repeat(np.repeat(s.images, 4, 1), 4, 2), 3, 3), s.labels)  # noqa: E731
    cifarish = dataclasses.replace(
        digits, train=up(digits.train), test=up(digits.test), mean=(0.3,) * 3, std=(0.37,) * 3
    )
    ck = train(
        _cfg(arch="resnet18", epochs=2, channels_last=True, compile=True),
        cifarish,
        tmp_path / "c.h5",
        device=torch.device("cuda"),
    )
    assert "--compile failed" not in capsys.readouterr().err
    assert np.isfinite(ck.final.train_loss) and ck.final.test_acc > 50
