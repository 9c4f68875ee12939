"""CI runs the README's test command word for word, not a variant of it that happens to pass."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up on a fresh machine.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its set-up block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim():
    install, test_command = _readme_commands()
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert steps[-1] == test_command
    assert "pip install" in install and '".[dev]"' in install
    assert any('-e ".[dev]"' in s and "pip install" in s for s in steps)  # the same extra CI installs


def test_the_checkers_the_command_runs_are_pinned_in_the_dev_extra():
    pyproject = (ROOT / "pyproject.toml").read_text()
    dev = re.search(r"^dev = \[(.*?)\]", pyproject, re.M)
    assert dev
    pinned = dict(re.findall(r'"([a-z]+)==([0-9.]+)"', dev.group(1)))
    _, test_command = _readme_commands()
    for tool in ("ruff", "mypy"):
        assert tool in test_command.split() and tool in pinned, tool
