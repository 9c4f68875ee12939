"""The estimator interface behind ``influence --estimator``: rows of S from the last-layer problem.

An estimator is one module in :mod:`dpcli.influence.estimators` whose class subclasses
:class:`Estimator` with a ``name``; subclassing registers it.  It receives the frozen final
features, labels and head of the trained model (:class:`LastLayer`) and streams rows
``[start, stop)`` of ``S_i = (1/n) (H + damping I)^-1 grad L(z_i)`` (or its own definition of S,
e.g. SGD-Influence) to a sink, float32 chunk by chunk.  Everything around it (features, the sketch,
shards, the artifact, lineage) is done once in :func:`dpcli.stages.core.compute_influence`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from dpcli.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.config import InfluenceConfig

ESTIMATORS: Registry["Estimator"] = Registry("estimator", "dpcli.influence.estimators", option="--estimator")

Sink = Callable[[int, Any], None]
Progress = Callable[[int, int], None]


@dataclass
class LastLayer:
    """The problem every estimator solves: frozen features (n x D), labels and the head (C x D, C)."""

    features: "Tensor"
    labels: "Tensor"
    weight: "Tensor"
    bias: "Tensor"
    checkpoint: Path | None = None  # where SGD-Influence finds the recorded trajectory

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def d(self) -> int:
        return int(self.weight.shape[0] * (self.weight.shape[1] + 1))


class Estimator:
    """Computes rows of S.  Subclass with a ``name`` to register; override :meth:`solve`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    uses_damping: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            ESTIMATORS.add(cls)

    def __init__(self, cfg: "InfluenceConfig") -> None:
        self.cfg = cfg

    def check(self, checkpoint: Path) -> None:
        """Fail before any work when the checkpoint lacks what this estimator needs."""

    def solve(
        self,
        problem: LastLayer,
        *,
        damping: float,
        rows: tuple[int, int],
        sink: Sink,
        progress: Progress | None = None,
        info: Callable[[str], None] | None = None,
        chunk_size: int = 4096,
    ) -> dict[str, Any]:
        """Stream rows ``[start, stop)`` of S to ``sink(global_row_start, float32 rows)``.

        Returns attributes to record in ``influence.h5`` (at least ``solver``: what actually ran).
        """
        raise NotImplementedError
