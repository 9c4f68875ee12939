"""SIGTERM is handled like Ctrl-C (exit 143, one line, completed artifacts kept) and a rerun resumes; a stop
Python swallowed in a finalizer still stops training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from dpcli.cli.application import HungUp, Terminated, _guard
from dpcli.data.sources import load_dataset
from dpcli.stages import pipeline
from dpcli.train.checkpoint import load_checkpoint
from dpcli.train.loop import train
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "signum, code, line",
    [
        (signal.SIGTERM, 143, "dpcli: terminated (SIGTERM)"),
        (signal.SIGHUP, 129, "dpcli: hung up (SIGHUP)"),  # an ssh session or terminal closed: stopped the same way
    ],
    ids=["sigterm", "sighup"],
)
def test_sigterm_exits_143_with_one_line_and_keeps_the_checkpoint(tmp_path, signum, code, line):
    out = tmp_path / "ck.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpcli",
            "train",
            "digits",
            "--epochs",
            "400",
            "--width",
            "4",
            "--depth",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr == f"{line}; completed artifacts are kept, rerun the same command to resume\n" and stdout == ""
    ck = load_checkpoint(out, weights=False)
    assert 1 <= ck.epoch < 400 and not ck.complete
    # the checkpoint and its per-epoch side log (what a resume reads), and no partial file anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) in (["ck.h5"], ["ck.h5", "ck.h5.epochs"])
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]


def test_rerun_says_where_it_resumes(tmp_path, capsys):
    ds = load_dataset("digits")
    overrides = {"epochs": 3, "width": 8, "depth": 2}
    cfg = pipeline.train_config(ds, overrides)
    out = tmp_path / "ck.h5"
    import torch

    train(cfg, ds, out, device=torch.device("cpu"), stop_after=2)  # an interrupted run, two epochs done
    capsys.readouterr()
    code, _, err = run_cli(
        ["train", "digits", "--epochs", 3, "--width", 8, "--depth", 2, "--device", "cpu", "--out", out], capsys
    )
    assert code == 0, err
    assert "resuming from epoch 2 of 3" in err
    assert load_checkpoint(out, weights=False).complete


@pytest.fixture
def sigint_default():
    """Python's own Ctrl-C handler, even where the test runner was started with SIGINT ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_lost_in_a_weakref_callback_still_stops_training_silently(tmp_path, monkeypatch, sigint_default, signum):
    """Python only prints an exception raised in a weakref callback; the recorded signal stops the next batch."""
    import weakref

    import torch

    from dpcli.cli.application import Terminated, _stops_as_interrupts

    class Owner:
        pass

    ds = load_dataset("digits")
    cfg = pipeline.train_config(ds, {"epochs": 3, "width": 4, "depth": 1})
    out = tmp_path / "ck.h5"
    printed: list = []  # what Python's "Exception ignored" hook would have printed
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    with _stops_as_interrupts():
        owner = Owner()
        ref = weakref.ref(owner, lambda _: (os.kill(os.getpid(), signum), time.sleep(0.5)))
        del owner  # the callback runs, the handler raises inside it, and Python swallows that raise
        assert ref() is None
        with pytest.raises(KeyboardInterrupt) as stopped:  # the lost stop ends training at its first batch
            train(cfg, ds, out, device=torch.device("cpu"))
    assert stopped.type is (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)
    assert not out.exists() or not load_checkpoint(out, weights=False).complete
    assert printed == []


def test_an_ignored_sigint_stays_ignored(sigint_default):
    """A background job of a non-interactive shell inherits SIGINT ignored: dpcli must not re-enable it."""
    from dpcli.cli.application import _stops_as_interrupts

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _stops_as_interrupts():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing is raised or recorded
        time.sleep(0.1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with _stops_as_interrupts():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored on exit


def _cli(args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dpcli", *map(str, args)], env=env, text=True, **kw)


def _mask_is_whole(path) -> None:
    from dpcli.stages.masks import read_mask

    assert read_mask(path).n_pruned == 5  # published, consistent and checksummed: the work was not lost


@pytest.mark.parametrize("redirect, code", [(">&-", 74), (">/dev/full", 74)], ids=["closed", "full"])
def test_a_closed_or_full_stdout_keeps_the_mask_and_says_so_in_one_line(tiny_run, tmp_path, redirect, code):
    """The --json report is the last step: its loss is exit 74 and one line, never a traceback or a lost mask."""
    out = tmp_path / "m.h5"
    cmd = (
        f"exec {sys.executable} -m dpcli prune {tiny_run.influence} --prune-count 5 --out {out} --json --quiet "
        f"{redirect}"
    )
    proc = subprocess.run(
        ["sh", "-c", cmd],
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == code, proc.stderr
    assert (
        proc.stderr.startswith("dpcli: error: stdout: cannot write the --json report (")
        and proc.stderr.count("\n") == 1
    ), proc.stderr
    _mask_is_whole(out)


def test_a_reader_gone_from_stdout_exits_141_quietly_like_git(tiny_run, tmp_path):
    """`dpcli ... --json | head -0`: the pipe's reader is gone before the report; SIGPIPE's exit code, no words."""
    out = tmp_path / "m.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpcli",
            "prune",
            tiny_run.influence,
            "--prune-count",
            "5",
            "--out",
            out,
            "--json",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader goes away at once
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == "", stderr
    _mask_is_whole(out)


def test_a_full_stderr_decides_nothing(tiny_run, tmp_path):
    """Progress and messages to a full disk (2>/dev/full) are dropped; the job finishes and exits 0."""
    out = tmp_path / "m.h5"
    with open("/dev/full", "w") as full:
        proc = _cli(
            ["prune", tiny_run.influence, "--prune-count", 5, "--out", out], stdout=subprocess.PIPE, stderr=full
        )
    assert proc.returncode == 0 and proc.stdout == ""
    _mask_is_whole(out)


@pytest.mark.parametrize(
    "stop, code, line",
    [
        (HungUp, 129, "dpcli: hung up (SIGHUP)"),
        (Terminated, 143, "dpcli: terminated (SIGTERM)"),
        (KeyboardInterrupt, 130, "dpcli: interrupted"),
    ],
)
def test_a_stop_wrapped_by_a_c_callback_still_exits_with_its_code(stop, code, line, capsys):
    """A signal landing inside h5py's visit callback comes back as a SystemError caused by the stop (seen in CI):
    the job still ends with the stop's exit code and one line, not a traceback and exit 1."""

    def in_a_visit() -> None:
        try:
            raise stop()
        except KeyboardInterrupt as exc:
            raise SystemError("<cyfunction FastRLock.__exit__> returned a result with an exception set") from exc

    with pytest.raises(typer.Exit) as raised:
        _guard(in_a_visit)()
    assert raised.value.exit_code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line)


def test_an_error_not_caused_by_a_stop_is_not_taken_for_one():
    def broken() -> None:
        raise SystemError("a real bug")

    with pytest.raises(SystemError):
        _guard(broken)()
