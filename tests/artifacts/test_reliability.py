"""Safe in cron jobs and pipelines: locks, write failures, kill -9 and a full disk (issue #13).

The fault-injection tests run the real CLI in a subprocess and kill it with SIGKILL at
seeded random points of each stage, then rerun and compare with the uninterrupted result.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpcli.artifacts.h5 import atomic_h5, get_attr, open_artifact
from dpcli.artifacts.lock import artifact_lock, lock_path, no_wait, set_no_wait
from dpcli.config import InfluenceConfig
from dpcli.data.sources import load_dataset
from dpcli.errors import ArtifactBusy
from dpcli.stages import core as stages
from dpcli.stages import masks as mask_stage
from dpcli.train.checkpoint import EpochRecord, load_checkpoint, save_checkpoint
from dpcli.train.loop import make_model
from tests.conftest import TINY, run_cli, tiny_config

REPO = Path(__file__).resolve().parents[2]
CHAIN = ["prune", "--epsilon", "0.05", "digits", *TINY]


def _leftovers(root: Path) -> list[str]:
    """Temporaries and lock files anywhere under ``root``: a finished job must leave none."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith((".partial", ".lock")))


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dpcli: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _hold(path: Path, release: threading.Event, held: threading.Event, publish: bool = False) -> threading.Thread:
    """A thread that holds the artifact lock of ``path`` until ``release`` (publishing it first if asked)."""

    def run() -> None:
        with artifact_lock(path):
            held.set()
            release.wait(30)
            if publish:
                with atomic_h5(path, "mask", {"by": "holder"}) as f:
                    f.create_dataset("keep", data=np.ones(3, bool))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert held.wait(30)
    return t


# --------------------------------------------------------------------------- locks
def test_no_wait_exits_at_once_naming_the_holder(tmp_path):
    target = tmp_path / "mask.h5"
    release, held = threading.Event(), threading.Event()
    t = _hold(target, release, held)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ArtifactBusy) as info:
            with artifact_lock(target, wait=False):
                pass
        assert time.perf_counter() - t0 < 5
        assert info.value.exit_code == 75
        assert str(info.value).startswith(f"{target}: locked by pid {os.getpid()}")
        assert lock_path(target).read_text().strip() == str(os.getpid())
    finally:
        release.set()
        t.join()
    assert not lock_path(target).exists()  # released locks leave no file


def test_waiter_says_so_once_then_sees_what_was_published(tmp_path, capsys):
    target = tmp_path / "mask.h5"
    release, held = threading.Event(), threading.Event()
    t = _hold(target, release, held, publish=True)
    threading.Timer(0.3, release.set).start()
    with artifact_lock(target, wait=True) as state:
        assert state.waited and state.changed and state.reusable() and state.holder == os.getpid()
        with open_artifact(target, "mask") as f:
            assert get_attr(f, "by") == "holder"
    t.join()
    err = capsys.readouterr().err
    assert err.count("waiting for") == 1 and f"waiting for {target}, locked by pid {os.getpid()}" in err
    with artifact_lock(target) as state:  # uncontended: nothing to reuse
        assert not state.waited and not state.reusable()


def test_lock_is_reentrant_within_a_thread(tmp_path):
    target = tmp_path / "mask.h5"
    with artifact_lock(target, wait=False):
        with atomic_h5(target, "mask") as f:  # the writer takes the same lock again
            f.create_dataset("keep", data=np.ones(2, bool))
        assert lock_path(target).exists()
    assert not lock_path(target).exists()


def test_no_wait_from_environment_and_setting(monkeypatch):
    monkeypatch.delenv("DPCLI_NO_WAIT", raising=False)
    assert not no_wait()
    monkeypatch.setenv("DPCLI_NO_WAIT", "1")
    assert no_wait()
    set_no_wait(False)
    try:
        assert not no_wait()
    finally:
        set_no_wait(None)


def test_cli_no_wait_is_one_line_and_exit_75(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mask.h5"
    release, held = threading.Event(), threading.Event()
    t = _hold(out, release, held)
    monkeypatch.setenv("DPCLI_NO_WAIT", "1")
    try:
        code, _, err = run_cli(["prune", tiny_run.influence, "--epsilon", "0.05", "--out", out], capsys)
    finally:
        release.set()
        t.join()
    assert code == 75
    assert _one_error_line(err).startswith(f"dpcli: error: {out}: locked by pid {os.getpid()}")
    assert not out.exists()


def test_concurrent_influence_is_computed_once(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "influence.h5"
    calls: list[int] = []
    real = stages._compute_influence

    def counted(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # long enough that the other thread is surely waiting on the lock
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "_compute_influence", counted)
    results: list[stages.InfluenceInfo] = []

    def job() -> None:
        results.append(
            stages.compute_influence(tiny_run.checkpoint, out, InfluenceConfig().validate(), device=torch.device("cpu"))
        )

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert (
        results[0].fingerprint == results[1].fingerprint == stages.read_influence_info(tiny_run.influence).fingerprint
    )
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_never_goes_back_to_an_older_epoch(tmp_path):
    ds = load_dataset("digits")
    cfg = tiny_config(epochs=2)
    model = make_model(cfg, ds)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    history = [
        EpochRecord(
            epoch=e, train_loss=1.0, train_acc=50.0, test_loss=1.0, test_acc=50.0, seconds=0.1, steps=23, lr=cfg.lr
        )
        for e in (1, 2)
    ]
    ck = tmp_path / "ck.h5"

    def save(epochs: int, **kw):
        return save_checkpoint(
            ck,
            model,
            opt,
            sched,
            cfg,
            ds,
            history[:epochs],
            complete=epochs == 2,
            keep_indices=None,
            lineage=None,
            **kw,
        )

    newer = save(2)
    with pytest.raises(ArtifactBusy, match="holds epoch 2, newer than this job's epoch 1"):
        save(1)
    again = load_checkpoint(ck, weights=False)
    assert again.epoch == 2 and again.complete and again.fingerprint == newer.fingerprint
    assert _leftovers(tmp_path) == []
    save(1, replace_newer=True)  # what --force does
    assert load_checkpoint(ck, weights=False).epoch == 1
    save(2)  # forwards is always fine
    assert load_checkpoint(ck, weights=False).epoch == 2


# --------------------------------------------------------------------------- write failures
def test_unwritable_outputs_fail_before_the_solve_in_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    solved: list[int] = []
    real = mask_stage._prune
    monkeypatch.setattr(mask_stage, "_prune", lambda *a, **k: solved.append(1) or real(*a, **k))
    cases = [["--out", tmp_path]]  # an existing directory
    if os.path.isdir("/proc/self"):
        cases += [["--out", "/proc/m.h5"], ["--out", tmp_path / "m.h5", "--indices-out", "/proc/x/kept.txt"]]
    for extra in cases:
        code, _, err = run_cli(["prune", tiny_run.influence, "--epsilon", "0.05", *extra], capsys)
        line = _one_error_line(err)
        assert code == 74, err
        assert "cannot write" in line and str(extra[-1]) in line
    assert solved == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mask published without its index file


def test_any_io_error_with_a_path_is_one_line_exit_74(tiny_run, capsys, monkeypatch):
    """The CLI's safety net: an OSError that no stage converted still ends in one line, not a traceback."""

    def failing(*_a, **_k):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/influence.h5")

    monkeypatch.setattr(stages, "read_influence_info", failing)
    code, _, err = run_cli(["prune", tiny_run.influence, "--epsilon", "0.05"], capsys)
    assert code == 74
    assert _one_error_line(err) == f"dpcli: error: /data/influence.h5: {os.strerror(errno.EIO)}"


def _namespace_available() -> bool:
    if not shutil.which("unshare"):
        return False
    return (
        subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || mount -t tmpfs none /tmp"],
            capture_output=True,
        ).returncode
        == 0
    )


FULL_DISK_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from dpcli.cli import main
    ck, ro, full = sys.argv[1:4]
    cases = {
        "out_read_only": ["prune", sys.argv[4], "--epsilon", "0.05", "--out", ro + "/m.h5"],
        "indices_read_only": ["prune", sys.argv[4], "--epsilon", "0.05", "--out", full + "/m.h5",
                              "--indices-out", ro + "/kept.txt"],
        "run_root_read_only": ["train", "digits", "--epochs", "3", "--width", "8", "--depth", "2",
                               "--device", "cpu", "--run-root", ro + "/runs"],
        "influence_disk_full": ["influence", ck, "--out", full + "/influence.h5", "--device", "cpu"],
        "train_disk_full": ["train", "digits", "--epochs", "3", "--width", "8", "--depth", "2",
                            "--device", "cpu", "--out", full + "/checkpoint.h5"],
    }
    report = {}
    for name, args in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main([*args, "--quiet"])
        report[name] = [code, err.getvalue()]
    print(json.dumps(report))
""")


@pytest.mark.skipif(not _namespace_available(), reason="needs unshare -rm to mount a read-only and a tiny tmpfs")
def test_read_only_and_full_disk_end_in_one_line_without_leftovers(tiny_run, tmp_path):
    """Real ENOSPC and EROFS: a 64 KiB tmpfs (S needs ~2 MB) and a read-only one, in a private mount namespace."""
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    script = tmp_path / "cases.py"
    script.write_text(FULL_DISK_SCRIPT)
    shell = (
        f"mount -t tmpfs -o size=1m,ro none {ro} && mount -t tmpfs -o size=64k none {full} && "
        f"{sys.executable} {script} {tiny_run.checkpoint} {ro} {full} {tiny_run.influence}; "
        f"rc=$?; ls -A {ro} {full} >&2; exit $rc"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # no SIGSEGV (139) from h5py after ENOSPC
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "out_read_only": f"{ro}/m.h5",
        "indices_read_only": f"{ro}/kept.txt",
        "run_root_read_only": f"{ro}/runs",
        "influence_disk_full": f"{full}/influence.h5",
        "train_disk_full": f"{full}/checkpoint.h5",
    }  # a 112 kB checkpoint: h5py fails mid-block
    for name, where in expected.items():
        code, err = report[name]
        line = _one_error_line(err)
        assert code == 74, (name, err)
        assert where in line, (name, line)
    assert "No space left on device" in report["influence_disk_full"][1]
    assert "No space left on device" in report["train_disk_full"][1]
    assert "Read-only file system" in report["out_read_only"][1]
    listing = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.endswith(":")]
    assert listing == [], proc.stderr  # both file systems are empty afterwards: nothing half-written


@pytest.mark.parametrize("mode", ["checkpoint", "features"])
def test_an_S_larger_than_the_free_space_is_refused_before_it_is_computed(
    tiny_run, tmp_path, monkeypatch, capsys, mode
):
    """The space S needs (n x d float32) against what the file system reports free: exit 74, one line, no file."""
    import collections

    import dpcli.artifacts.h5 as h5

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(h5.shutil, "disk_usage", lambda p: usage(10**9, 0, 4 * 1000))  # room for 1000 floats
    out = tmp_path / "out" / "influence.h5"
    if mode == "checkpoint":
        args = ["influence", tiny_run.checkpoint, "--out", out, "--device", "cpu"]
    else:
        x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", np.arange(60) % 3)
        args = ["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", out]
    code, _, err = run_cli(args, capsys)
    line = _one_error_line(err)
    assert code == 74 and str(out) in line and "No space left on device: S (" in line, err
    assert re.search(r"needs \d+\.\d (KiB|MiB), 3\.9 KiB free", line), line  # sizes a person reads, not 0.00 GiB
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- kill -9
def _run_paths(root: Path) -> dict[str, Path]:
    found = {"checkpoint": next(root.glob("digits/train-*"), None)}
    if found["checkpoint"] is not None:
        found["influence"] = next(found["checkpoint"].glob("influence-*"), None)
        if found["influence"] is not None:
            found["prune"] = next(found["influence"].glob("prune-*"), None)
    return {k: v for k, v in found.items() if v is not None}


def _stage_started(root: Path, stage: str) -> bool:
    """The stage holds its artifact's lock: it is computing (or writing) it now."""
    d = _run_paths(root).get(stage)
    name = {"checkpoint": "checkpoint.h5", "influence": "influence.h5", "prune": "mask.h5"}[stage]
    return d is not None and lock_path(d / name).exists()


def _kill_during(root: Path, stage: str, delay: float) -> bool:
    """Start the README chain, SIGKILL it ``delay`` s after ``stage`` starts; True if it died by the kill."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpcli", *CHAIN, "--run-root", str(root), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while proc.poll() is None and not _stage_started(root, stage) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return proc.returncode == -signal.SIGKILL


def test_kill_9_in_every_stage_then_rerun_gives_the_uninterrupted_result(tiny_run, tmp_path, capsys):
    """Three SIGKILLs at seeded random points (train, influence, prune), one rerun: same weights and mask."""
    reference = tmp_path / "reference.h5"
    code, _, err = run_cli(["prune", tiny_run.influence, "--epsilon", "0.05", "--out", reference, "--quiet"], capsys)
    assert code == 0, err
    rng = random.Random(13)
    root = tmp_path / "runs"
    killed = [
        _kill_during(root, stage, rng.uniform(0.0, limit))
        for stage, limit in (("checkpoint", 1.0), ("influence", 0.3), ("prune", 0.3))
    ]
    assert killed[0], "the first kill must land (training takes seconds)"
    code, out, err = run_cli([*CHAIN, "--run-root", root, "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert _leftovers(root) == []  # stale temporaries of the killed writers are gone, no lock file remains
    ref, got = mask_stage.read_mask(reference), mask_stage.read_mask(summary["mask"])
    assert np.array_equal(ref.keep, got.keep) and ref.norm == got.norm
    with open_artifact(tiny_run.checkpoint, "checkpoint") as a, open_artifact(summary["checkpoint"], "checkpoint") as b:
        for name in a["model"]:
            assert np.array_equal(a["model"][name][()], b["model"][name][()]), name
    with open_artifact(tiny_run.influence, "influence") as a, open_artifact(summary["influence"], "influence") as b:
        assert np.array_equal(a["S"][()], b["S"][()])


def test_two_identical_jobs_compute_once_and_agree(tmp_path, capsys):
    """A cron job started while an identical one runs waits for it, reuses its artifacts, gets the same mask."""
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "dpcli", *CHAIN, "--run-root", str(root), "--json", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while first.poll() is None and not _stage_started(root, "checkpoint") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, "the first job ended before the second could start"
    code, out, err = run_cli([*CHAIN, "--run-root", root, "--json"], capsys)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0 and code == 0, (first_err, err)
    assert f"locked by pid {first.pid}" in err
    assert f"complete, written by pid {first.pid} while this job waited" in err  # train reused, not rerun
    a, b = json.loads(first_out), json.loads(out)
    assert a["checkpoint"] == b["checkpoint"] and a["influence"] == b["influence"]
    assert np.array_equal(mask_stage.read_mask(a["mask"]).keep, mask_stage.read_mask(b["mask"]).keep)
    assert load_checkpoint(a["checkpoint"], weights=False).epoch == 3
    assert _leftovers(root) == []
