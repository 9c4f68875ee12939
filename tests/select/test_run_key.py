"""The mask's run key holds every option of every selector, enumerated from the registry: a mask made with
any other value of any option lives elsewhere and is never reused for it."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from dpcli.artifacts.runs import mask_path
from dpcli.config import PruneConfig
from dpcli.select.registry import SELECTORS

INFLUENCE = Path("runs/digits/train-x/influence-y/influence.h5")
FIELDS = {f.name for f in dataclasses.fields(PruneConfig)}
OTHER = {  # a second valid value of each option (the config's own field list must all be here)
    "epsilon": 0.5,
    "ratio": 0.3,
    "count": 7,
    "solver": "anneal",
    "time_budget": 2.0,
    "seed": 5,
    "buckets": 3,
    "workers": 2,
    "balance": True,
    "strata": 4,
    "cutoff": 0.2,
    "cutoff_ratio": 0.5,
    "match_features": True,
    "score_epoch": 2,
    "score_seeds": 5,
    "method": None,
}


def _base(name: str) -> PruneConfig:
    return PruneConfig(ratio=0.5, method=name)


def _changed(cfg: PruneConfig, option: str) -> PruneConfig:
    if option in ("epsilon", "ratio", "count"):  # another target: exactly one of them is given
        return dataclasses.replace(cfg, **{**dict.fromkeys(("epsilon", "ratio", "count")), option: OTHER[option]})
    if option == "cutoff_ratio":
        return dataclasses.replace(cfg, cutoff=0.0, cutoff_ratio=OTHER[option])
    if option == "method":
        return dataclasses.replace(cfg, method=next(n for n in SELECTORS.names() if n != cfg.method))
    return dataclasses.replace(cfg, **{option: OTHER[option]})


def test_every_field_has_a_second_value():
    assert set(OTHER) == FIELDS


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_option_of_every_selector_moves_the_mask(name):
    cls = SELECTORS.get(name)
    options = cls.options()
    assert set(options) <= FIELDS and "workers" not in options and len(set(options)) == len(options)
    base = mask_path(INFLUENCE, _base(name))
    for option in options:
        assert mask_path(INFLUENCE, _changed(_base(name), option)) != base, (name, option)
    # what the selector does not read keeps its mask (workers: the result does not depend on it)
    for option in FIELDS - set(options):
        assert mask_path(INFLUENCE, _changed(_base(name), option)) == base, (name, option)


def _fields_read(cls: type) -> set[str]:
    """PruneConfig fields the selector's own module reads as ``cfg.X`` / ``self.cfg.X``."""
    tree = ast.parse(inspect.getsource(importlib.import_module(cls.__module__)))
    return {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr in FIELDS
        and (
            (isinstance(n.value, ast.Name) and n.value.id == "cfg")
            or (isinstance(n.value, ast.Attribute) and n.value.attr == "cfg")
        )
    }


@pytest.mark.parametrize("name", SELECTORS.names())
def test_a_selector_declares_every_option_its_module_reads(name):
    cls = SELECTORS.get(name)
    assert _fields_read(cls) - {"workers"} <= set(cls.options()), name
