"""The names of the selectors and solvers, without importing numpy (for ``--help`` and option checks).

Selector classes register themselves here by subclassing :class:`dpcli.select.base.Selector`, solver classes
by subclassing :class:`dpcli.select.solvers._common.Solver`.
"""

from __future__ import annotations

from dpcli.registry import Registry

SELECTORS: Registry = Registry("selector", "dpcli.select.methods", option="--method")
SOLVERS: Registry = Registry("solver", "dpcli.select.solvers", option="--solver")
