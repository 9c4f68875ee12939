"""docs/reference-cli.md's option tables are generated from the parser: stale tables fail here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dpcli.cli import reference
from tests.conftest import run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference-cli.md"


def test_the_committed_tables_are_what_the_parser_generates():
    text = DOC.read_text()
    assert reference.BEGIN in text and reference.END in text
    committed = reference.BEGIN + text.split(reference.BEGIN, 1)[1].split(reference.END, 1)[0] + reference.END + "\n"
    assert committed == reference.generate(), "run: python -m dpcli.cli.reference --write docs/reference-cli.md"


@pytest.mark.parametrize("command", reference.COMMANDS)
def test_every_option_row_of_the_help_screen_is_in_the_command_table(command, capsys):
    """Independent of the generator's walk: the option rows of Click's own help screen (a row starts with
    its flags), panel by panel, against the generated section's rows."""
    code, out, err = run_cli([command, "--help-all"], capsys)
    assert code == 0, err
    rows = re.findall(r"^\│ (--[a-z][a-z0-9-]+)", out, flags=re.M)
    shown = set(rows) - {"--help"}
    section = reference.generate().split(f"### `dpcli {command}`", 1)[1].split("### `dpcli ", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z][a-z0-9-]+)`", section, flags=re.M))
    assert len(shown) >= 5 and shown == documented


def test_replace_block_keeps_the_hand_written_text():
    doc = "# Title\n\nprose\n"
    once = reference.replace_block(doc, "BLOCK\n")
    assert once == "# Title\n\nprose\n\nBLOCK\n"
    block = f"{reference.BEGIN}\nnew\n{reference.END}\n"
    text = f"# T\n\n{reference.BEGIN}\nold\n{reference.END}\n\nafter\n"
    assert reference.replace_block(text, block) == f"# T\n\n{block}after\n"
