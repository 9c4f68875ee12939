"""Every shared option reaches the field of its value object (Job, Training, Estimation, Solve) that its flag
names, in every command that lists it: the command line sets each to a value of its own, and the objects the
command body builds are read back before any work (the flag text, not the Python parameter, says the field)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer

from dpcli.cli import application
from dpcli.cli import estimation as est
from dpcli.cli import options as o

GROUPS = (o.Training, est.Estimation, est.Solve, o.Job)
ARGUMENT = {"train": "digits", "influence": "ck.h5", "prune": "x.h5", "retrain": "digits", "verify-bound": "digits"}
GATHERS = {
    "train": {o.Training, o.Job},
    "influence": {est.Estimation, est.Solve, o.Job},
    "prune": set(GROUPS),
    "retrain": {o.Training, o.Job},
    "verify-bound": {o.Training, o.Job},
}  # (train's --damping is its own)


class Gathered(Exception):
    """Raised when the command has built its Job (the last object each body gathers), before any work."""


def _command_line(name: str) -> tuple[list[str], dict[str, Any]]:
    """The command with every option that names a field of what it gathers set to a value of its own; field ->
    the value."""
    fields = {f.name for cls in GATHERS[name] for f in dataclasses.fields(cls)}
    command = typer.main.get_group(application.app).commands[name]
    args, want = [name, ARGUMENT[name]], {}
    for i, p in enumerate(command.params):
        flag = next((s for s in p.opts if s.startswith("--")), "")
        field = flag[2:].replace("-", "_")
        if getattr(p, "param_type_name", "") != "option" or field not in fields:
            continue
        if p.is_flag:
            args.append(flag)
            want[field] = True
            continue
        kind = str(p.display_type(None)).lower()  # as the help screens name it
        value = {"<int>": 100 + i, "<float>": 0.25 + i, "<path>": Path(f"p{i}"), "<str>": f"t{i}"}[kind]
        args += [flag, str(value)]
        want[field] = value
    return args, want


@pytest.mark.parametrize("name", list(ARGUMENT))
def test_every_shared_option_is_gathered_into_its_own_field(name, monkeypatch):
    built: list[Any] = []

    def recording(cls: type) -> type:
        last = cls is o.Job

        class Recorded(cls):
            def __init__(self, **values: Any) -> None:
                super().__init__(**values)
                built.append(self)
                if last:
                    raise Gathered

        return Recorded

    for cls in GROUPS:
        monkeypatch.setattr(est if cls in (est.Estimation, est.Solve) else o, cls.__name__, recording(cls))
    args, want = _command_line(name)
    with pytest.raises(Gathered):
        application.main(args)
    assert sorted(type(b).__mro__[1].__name__ for b in built) == sorted(cls.__name__ for cls in GATHERS[name])
    for obj in built:
        for f in dataclasses.fields(obj):
            if f.name in want:
                assert getattr(obj, f.name) == want[f.name], (name, f.name)
            else:  # an option this command does not have (influence writes beside its input: no --run-root)
                assert (name, f.name) == ("influence", "run_root") and getattr(obj, f.name) is None
