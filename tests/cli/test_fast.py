"""The fast front door (dpcli.cli.fast): what it replays is exactly what Typer prints, it never goes
stale, and it answers at Python's own start-up speed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpcli import __version__
from dpcli.cli import fast, main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "influence", "prune", "retrain", "verify-bound")
HEAVY = ("typer", "rich", "click", "pydantic", "numpy", "torch")

HELP = [[], ["--help"], ["--help-all"], *([c, "--help"] for c in COMMANDS), ["prune", "--help-all"],
        ["prune", "x.h5", "--epsilon", "1", "--help"], ["--version", "--help"], ["prune", "-q", "--help"],
        ["--help", "prune"]]
ERRORS = [
    ["prune", "x.h5", "--epsilom", "1"],  # several suggestions
    ["prune", "x.h5", "--buckts", "2"],  # one
    ["prune", "--zzzz"],  # none
    ["prune", "x.h5", "--epsilon"],  # a value missing at the end
    ["prune", "x.h5", "--json=yes"],  # a flag given a value
    ["prune", "x.h5", "--epsilon=1", "--qiet"],  # after an explicit value
    ["prune", "-qx"], ["prune", "-x"], ["prune", "-epsilon", "1"],  # short options and clusters
    ["prune", "--help", "--epsilom"],  # a parse error comes before help
    ["prnue", "x.h5"], ["verify"], ["frobnicate"],  # commands
    ["--bogus"], ["--versoin"], ["--version", "prnue"],
    ["train", "digits", "--lr"], ["influence", "--sketch"], ["retrain", "digits", "--mask"],
    ["verify-bound", "digits", "--epsilons"], ["train", "digits", "--no-augmnet"],
]
TYPER_DECIDES = [  # the fast path hands these on; the output must still be Typer's
    ["prune", "x.h5", "--out", "--help"],  # --help is the value of --out: no help, a missing-file error
    ["prune", "x.h5", "--epsilon", "abc"],  # a bad value
    ["prune"],  # a missing argument
    ["--", "--help"], ["prune", "--a:b:"],
]


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    folder = tmp_path / "cli-cache"

    def use(on: bool) -> None:
        monkeypatch.setenv("DPCLI_CLI_CACHE", str(folder) if on else "off")

    return use


def _id(args: list[str]) -> str:
    return "_".join(args) or "(none)"


@pytest.mark.parametrize("args", HELP + ERRORS, ids=_id)
def test_replayed_output_is_typers_and_needs_no_typer(records, capsys, args):
    records(False)
    expected = _run(capsys, args)
    records(True)
    _run(capsys, args)  # records the option table and, for help, the screen
    assert fast.answer(list(args), __version__) is not None, "the fast path did not answer"
    capsys.readouterr()
    assert _run(capsys, args) == expected


@pytest.mark.parametrize("args", TYPER_DECIDES, ids=_id)
def test_what_the_fast_path_is_unsure_of_goes_to_typer(records, capsys, args):
    records(False)
    expected = _run(capsys, args)
    assert expected[0] != 0 or expected[1].lstrip().startswith("Usage:")  # errors or help: nothing runs
    records(True)
    _run(capsys, args)
    assert fast.answer(list(args), __version__) is None
    assert _run(capsys, args) == expected


def test_version(records, capsys):
    records(True)
    _run(capsys, ["--help"])
    assert _run(capsys, ["--version"]) == (0, f"dpcli {__version__}\n", "")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERMINAL_WIDTH")}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "PYTHONWARNINGS": "ignore",
            "DPCLI_CLI_CACHE": str(cache), **extra}


_PROBE = ("import sys; from dpcli.cli import main; code = main(sys.argv[1:]); sys.stdout.flush(); "
          "print('\\n@loaded', ','.join(m for m in %r if m in sys.modules), file=sys.stderr); "
          "sys.exit(code)" % (HEAVY,))


def _cli(env: dict[str, str], *args: str, cwd: Path = ROOT) -> tuple[int, str, str, str]:
    """(exit code, stdout, stderr, the heavy modules the process loaded)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, cwd=cwd)
    err, _, loaded = proc.stderr.rpartition("\n@loaded ")
    return proc.returncode, proc.stdout, err, loaded.strip()


def test_terminal_width_and_colour_are_part_of_the_key(tmp_path):
    cache = tmp_path / "cache"
    for extra in ({"COLUMNS": "100"}, {"COLUMNS": "60", "FORCE_COLOR": "1"}):  # one folder for both
        expected = _cli(_env(Path("off"), **extra), "prune", "--help")[:3]
        first = _cli(_env(cache, **extra), "prune", "--help")
        replayed = _cli(_env(cache, **extra), "prune", "--help")
        assert first[:3] == expected and replayed[:3] == expected, extra
        assert replayed[3] == "", f"replaying help loaded {replayed[3]}"
    assert "\x1b[" in expected[1]  # the last one was in colour


def test_a_changed_source_is_never_replayed_stale(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "dpcli", copy / "dpcli", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**_env(tmp_path / "cache"), "PYTHONPATH": str(copy)}
    before = _cli(env, "prune", "--help", cwd=copy)
    assert _cli(env, "prune", "--help", cwd=copy)[3] == ""  # replayed
    options = copy / "dpcli" / "cli" / "options.py"
    options.write_text(options.read_text().replace("Prune as many samples as possible", "Drop all you can"))
    after = _cli(env, "prune", "--help", cwd=copy)
    assert "Drop all you can" in after[1] and "Drop all you can" not in before[1]
    assert after[:3] == _cli({**env, "DPCLI_CLI_CACHE": "off"}, "prune", "--help", cwd=copy)[:3]


def test_start_up_budget(tmp_path):
    """Help and option errors cost about Python's own start-up, where Typer's path costs ~4x it.

    Minimum of interleaved runs (load only ever adds time), as a ratio to `python3 -c pass` measured
    in the same loop, so a loaded CI machine slows both sides alike."""
    env = _env(tmp_path / "cache")
    help_cmd = [sys.executable, "-m", "dpcli", "prune", "--help"]
    error_cmd = [sys.executable, "-m", "dpcli", "prune", "x.h5", "--epsilom", "1"]
    for cmd in (help_cmd, error_cmd):  # record
        subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    times: dict[str, list[float]] = {"pass": [], "help": [], "error": []}
    for _ in range(7):
        for name, cmd in (("pass", [sys.executable, "-c", "pass"]), ("help", help_cmd), ("error", error_cmd)):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
            times[name].append(time.perf_counter() - t0)
    base = min(times["pass"])
    # a ratio on a slow interpreter start (pyenv shims: ~0.3 s), a fixed 0.15 s on a fast one (a venv: ~0.04 s,
    # where reading the replay files alone is a sizeable ratio); Typer's path costs 0.5-2 s either way
    for name in ("help", "error"):
        assert min(times[name]) < max(1.6 * base, base + 0.15), (name, min(times[name]), base)
