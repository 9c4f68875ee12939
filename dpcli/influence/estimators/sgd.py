"""sgd: SGD-Influence, replaying the last-layer SGD trajectory recorded by ``train`` (damping unused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpcli.errors import DpcliError
from dpcli.influence.base import Estimator, LastLayer


class SGD(Estimator):
    name = "sgd"
    help = "SGD-Influence: replays the recorded last-layer SGD trajectory (see --sgd-epochs)"
    uses_damping = False

    def check(self, checkpoint: Path) -> None:
        from dpcli.train.trajectory import load_trajectory

        load_trajectory(checkpoint)

    def solve(
        self, problem: LastLayer, *, damping, rows, sink, progress=None, info=None, chunk_size: int = 4096
    ) -> dict[str, Any]:
        from dpcli.influence.sgd import sgd_influence
        from dpcli.train.trajectory import load_trajectory

        if problem.checkpoint is None:
            raise DpcliError("--estimator sgd needs a checkpoint with a recorded SGD trajectory")
        sgd_influence(
            problem.features,
            problem.labels,
            load_trajectory(problem.checkpoint),
            epochs=self.cfg.sgd_epochs,
            rows=rows,
            sink=sink,
            progress=progress,
        )
        return {"solver": "sgd"}
