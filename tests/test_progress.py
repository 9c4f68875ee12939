"""Progress where people and pipelines look: plain lines off a terminal while the job runs, bars that move
inside an epoch on a terminal, the API's logger and callback, and stderr that cannot stop a job."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpcli import console
from dpcli.console import ProgressEvent
from dpcli.data.sources import load_dataset
from dpcli.train.checkpoint import load_checkpoint
from tests.conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64  # digits' batch size (config.PROFILES)
LINE = re.compile(
    r"^train: (\d+)/(\d+) \(([\d.]+)%\), (\S+) elapsed(?:, ([\d.e+]+)/s)?(?:, ETA (\S+))?"
    r"(?: \| epoch (\d+)/(\d+))?"
)


def _seconds(text: str) -> int:
    """'45s', '3m05s', '1h02m' back to seconds."""
    h, m, s = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text).groups()
    return 3600 * int(h or 0) + 60 * int(m or 0) + int(s or 0)


def _env(**more: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **more}


def _train_args(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dpcli",
        "train",
        "digits",
        "--epochs",
        str(epochs),
        "--width",
        "4",
        "--depth",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_a_train_logging_to_a_file_writes_progress_lines_while_it_runs(tmp_path):
    """`dpcli train ... 2> log` (cron, nohup): lines with done/total appear in the file during training, and
    their numbers are the loop's: samples over all epochs, whole batches inside the epoch the line names."""
    n = len(load_dataset("digits").train.labels)
    epochs = 400  # far longer than the test waits: it reads the log while training runs, then stops the job
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            _train_args(tmp_path / "ck.h5", epochs),
            stdout=subprocess.PIPE,
            stderr=fh,
            env=_env(DPCLI_PROGRESS_INTERVAL="0.25"),
            text=True,
        )
    try:
        deadline = time.monotonic() + 120
        seen: list[re.Match] = []
        while proc.poll() is None and time.monotonic() < deadline and len(seen) < 4:
            time.sleep(0.1)
            seen = [m for m in map(LINE.match, log.read_text().splitlines()) if m and m.group(7)]
        running = proc.poll() is None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert running and len(seen) >= 4, log.read_text()
    assert out == ""  # progress is stderr's; stdout stays clean
    done = [int(m.group(1)) for m in seen]
    assert done == sorted(done)
    for m in seen:
        d, total, epoch, of = int(m.group(1)), int(m.group(2)), int(m.group(7)), int(m.group(8))
        assert total == epochs * n and of == epochs
        assert float(m.group(3)) == pytest.approx(100 * d / total, abs=0.0501)  # printed to 0.1
        assert (epoch - 1) * n <= d <= epoch * n  # inside the epoch it names
        assert d % n == 0 or (d % n) % BATCH == 0  # whole batches of this epoch
        if m.group(6) is not None:  # ETA = what is left at the printed rate, to the printed second
            assert _seconds(m.group(6)) == pytest.approx((total - d) / float(m.group(5)), rel=1e-3, abs=1)


def test_off_a_terminal_a_stage_says_when_it_starts_and_ends(tmp_path, capsys):
    code, out, err = run_cli(["train", "digits", *TINY, "--out", tmp_path / "ck.h5", "--json"], capsys)
    assert code == 0, err
    n = len(load_dataset("digits").train.labels)
    lines = err.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("train: started, "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("train: done in "))
    assert start < end < len(lines) - 1 and lines[-1].startswith("checkpoint: ")
    first = re.match(r"train: started, (\d+)/(\d+)", lines[start])
    assert int(first.group(2)) == 3 * n and 0 < int(first.group(1)) <= BATCH  # after the first batch
    assert "epoch 3/3" in lines[end]
    import json

    assert json.loads(out)["epochs"] == 3  # --json: stdout holds the document alone


def test_quiet_silences_progress(tmp_path, capsys):
    code, _, err = run_cli(["train", "digits", *TINY, "--out", tmp_path / "ck.h5", "--quiet"], capsys)
    assert code == 0 and err == ""


def test_on_a_terminal_the_bar_moves_inside_an_epoch(tmp_path, capsys, monkeypatch):
    """The bar is fed every batch, not once per epoch (rich redraws it at most 10 times a second)."""
    from rich.progress import Progress

    screen = io.StringIO()
    monkeypatch.setattr(console, "err", console._StderrConsole(file=screen, force_terminal=True, width=100))
    fed: list[float] = []
    update = Progress.update

    def spy(self, task_id, **kwargs):
        if "completed" in kwargs:
            fed.append(kwargs["completed"])
        return update(self, task_id, **kwargs)

    monkeypatch.setattr(Progress, "update", spy)
    code, _, err = run_cli(["train", "digits", *TINY, "--out", tmp_path / "ck.h5"], capsys)
    assert code == 0, err
    n = len(load_dataset("digits").train.labels)
    inside = [c for c in fed if c % n]
    assert len(inside) >= 3 * (n // BATCH)  # every batch of the 3 epochs ...
    assert {c % n for c in inside} == set(range(BATCH, n, BATCH))  # ... counted in samples, batch by batch
    assert fed == sorted(fed) and fed[-1] == 3 * n
    assert "train" in screen.getvalue()


@pytest.mark.parametrize("stream", ["full", "closed", "reader gone"])
def test_a_broken_stderr_does_not_stop_the_job(tmp_path, stream):
    """stderr on a full disk, closed (`2>&-`), or a pipe whose reader quit (`2>&1 | head -1`): progress is
    lost, the job is not: exit 0 and a complete checkpoint.  The default interval (no timed line in so short
    a run) makes the training's own thread meet the broken stream first."""
    out = tmp_path / "ck.h5"
    kwargs: dict = {"stdout": subprocess.DEVNULL}
    if stream == "full":
        kwargs["stderr"] = open("/dev/full", "w")
    elif stream == "closed":
        kwargs.update(stderr=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    else:
        kwargs["stderr"] = subprocess.PIPE
    proc = subprocess.Popen(_train_args(out, 2), env=_env(DPCLI_PROGRESS_INTERVAL="600"), **kwargs)
    if stream == "reader gone":
        proc.stderr.close()
    assert proc.wait(timeout=240) == 0
    ck = load_checkpoint(out, weights=False)
    assert ck.complete and ck.epoch == 2


def test_a_bad_progress_interval_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPCLI_PROGRESS_INTERVAL", "soon")
    code, _, err = run_cli(["train", "digits", *TINY, "--out", tmp_path / "ck.h5"], capsys)
    assert (
        code == 2 and err == "dpcli: error: DPCLI_PROGRESS_INTERVAL must be a positive number of seconds, got 'soon'\n"
    )
    assert not (tmp_path / "ck.h5").exists()


def test_progress_lines_state_rate_and_eta():
    e = ProgressEvent("influence (exact)", done=250, total=1000, elapsed=5.0, status="rows")
    assert e.rate == 50 and e.eta == 15
    assert e.line() == "influence (exact): 250/1000 (25.0%), 5s elapsed, 50/s, ETA 15s | rows"
    assert e.start_line() == "influence (exact): started, 250/1000 (25.0%)"
    assert (
        ProgressEvent("prune", done=0.25, total=1.0, elapsed=200.0).line() == "prune: 25.0%, 3m20s elapsed, ETA 10m00s"
    )
    assert ProgressEvent("load", done=0, total=None, elapsed=3.0).line() == "load: 3s elapsed"
    assert ProgressEvent("train", 10, 10, 61.0, "epoch 3/3", finished=True).line() == "train: done in 61.0s epoch 3/3"


def test_a_cached_stage_stays_quiet_and_a_one_step_stage_prints_its_end_only(capsys):
    with console.progress_bar("train", total=100):
        pass  # the checkpoint was found cached: no update
    with console.progress_bar("influence (exact)", total=50) as update:
        update(50)  # every row in one step: a start line would say 50/50
    with console.progress_bar("prune", total=1.0) as update:
        update(0.5)
        update(1.0)
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r"done in [\d.]+s", "done in Xs", ln) for ln in lines] == [
        "influence (exact): done in Xs",
        "prune: started, 50.0%",
        "prune: done in Xs",
    ]


# ------------------------------------------------------------------------------------------ the Python API
def _blobs(n: int = 90, c: int = 3, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return (rng.normal(size=(n, d)) + 2.0 * np.eye(c, d)[y]).astype(np.float32), y


def test_the_api_is_silent_by_default_and_reports_to_logging_and_a_callback(capfd, caplog, monkeypatch):
    import dpcli.api as dp

    x, y = _blobs()
    S, _ = dp.influence(x, y)
    dp.prune(S, prune_ratio=0.3, method="optimization")
    assert capfd.readouterr() == ("", "")  # nothing on stdout or stderr unless asked

    events: list[ProgressEvent] = []
    monkeypatch.setenv("DPCLI_PROGRESS_INTERVAL", "1000")
    with caplog.at_level(logging.INFO, logger="dpcli"):
        S2, _ = dp.influence(x, y, progress=events.append)
    assert np.array_equal(S, S2)
    stages = {e.stage for e in events}
    assert len(stages) == 1 and next(iter(stages)).startswith("influence")
    rows = [e for e in events if not e.finished]
    assert rows[0].done == 0 and events[-1].finished and events[-1].done == len(x) == events[-1].total
    assert [e.done for e in rows] == sorted(e.done for e in rows)
    records = [r.getMessage() for r in caplog.records if r.name == "dpcli"]
    assert records and all(r.startswith("influence") for r in records)
    assert " done in " in records[-1] and all("started" in r for r in records[:-1])
    assert capfd.readouterr().err == ""  # logging's records, not stderr

    events.clear()
    sel = dp.prune(S, prune_ratio=0.3, method="optimization", progress=events.append)
    assert events[0].done == 0 and events[-1].finished and events[-1].done == pytest.approx(1.0)
    assert sel.n_pruned == round(0.3 * len(x))


def test_a_callback_that_raises_stops_the_call():
    import dpcli.api as dp

    x, y = _blobs()

    class Stop(Exception):
        pass

    def cancel(event: ProgressEvent) -> None:
        raise Stop

    with pytest.raises(Stop):
        dp.influence(x, y, progress=cancel)
