"""Shared fixtures: one tiny, real pipeline run on the offline digits data, reused by many tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dpcli.cli import main
from dpcli.config import TrainConfig

torch.set_num_threads(2)

# Small enough to train in seconds on 2 CPU cores, big enough to be a real model (~90 % test accuracy).
TINY = ["--epochs", "3", "--width", "8", "--depth", "2", "--device", "cpu"]


def tiny_config(**overrides) -> TrainConfig:
    """The tiny digits training configuration of the library-level tests (overrides per test)."""
    base = dict(
        dataset="digits", arch="convnet", width=8, depth=2, epochs=3, lr=0.05, batch_size=64, augment=False, seed=1
    )
    base.update(overrides)
    return TrainConfig(**base)


def interrupt_after(epoch: int):
    """An on_epoch hook that interrupts training (like Ctrl-C) once ``epoch`` is checkpointed."""

    def hook(rec) -> None:
        if rec.epoch == epoch:
            raise KeyboardInterrupt

    return hook


@dataclass(frozen=True)
class TinyRun:
    root: Path
    checkpoint: Path
    influence: Path


@pytest.fixture(autouse=True)
def _console_not_quiet():
    """Every test starts with messages on: a `--quiet` command before it must not silence the next one."""
    from dpcli import console

    console.set_quiet(False)
    yield


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run_cli([*args, "--json", "--quiet"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("runs")
    ck = root / "explicit" / "checkpoint.h5"
    inf = root / "explicit" / "influence.h5"
    assert main(["train", "digits", *TINY, "--out", str(ck), "--quiet"]) == 0
    assert main(["influence", str(ck), "--out", str(inf), "--device", "cpu", "--quiet"]) == 0
    return TinyRun(root=root, checkpoint=ck, influence=inf)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module, for tests of its pure logic (benchmarks is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
