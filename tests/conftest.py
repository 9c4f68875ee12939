"""Shared fixtures: one tiny, real pipeline run on the offline digits data, reused by many tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dpcli.cli import main

torch.set_num_threads(2)

# Small enough to train in seconds on 2 CPU cores, big enough to be a real model (~90 % test accuracy).
TINY = ["--epochs", "3", "--width", "8", "--depth", "2", "--device", "cpu"]


@dataclass(frozen=True)
class TinyRun:
    root: Path
    checkpoint: Path
    influence: Path


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
