"""``prune S.npy``: an S computed by another tool, with no lineage, certified from S alone.

Its rows are the user's samples as that tool numbered them (integer indices only: there are no file names).
What dpcli cannot know about them (labels, training losses, features) is refused by name when an option needs it;
``--labels FILE`` supplies the classes, so that ``--balance`` and ``auto``'s class quotas work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from dpcli.errors import DpcliError

if TYPE_CHECKING:
    from dpcli.config import PruneConfig
    from dpcli.stages.masks import MaskInfo
    from dpcli.stages.outputs import MaskOutputs

NO_LINEAGE = "no lineage known: S was computed outside dpcli; the certificate is from S alone"


def check_options(cfg: "PruneConfig") -> None:
    """Refuse, before any work, an option that needs what an external S does not come with."""
    from dpcli.select.registry import SELECTORS

    needs = SELECTORS.get(cfg.method).needs
    if needs:
        raise DpcliError(
            f"--method {cfg.method} needs the {' and '.join(sorted(needs))} of a dpcli training run; "
            "an external S has none (use optimization, auto, random or influence-score)"
        )
    if cfg.strata > 1 or cfg.cutoff != 0.0 or cfg.cutoff_ratio is not None:
        raise DpcliError(
            "--strata and --hard-cutoff rank samples by their training loss, which an external S does "
            "not come with; use --balance (with --labels) or prune an influence.h5 from dpcli"
        )
    if cfg.match_features:
        raise DpcliError("--match-features needs the samples' features, which an external S does not come with")


def read_labels(path: Path, n: int) -> np.ndarray:
    """One class per row of S from ``path`` (.npy, .npz, .h5, or .txt with one label per line; names or integers)."""
    from dpcli.data.embeddings import check_labels, encode_labels, load_array

    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DpcliError(f"{path}: no such file (labels)")
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        y = np.asarray(lines)
        if all(t.lstrip("-").isdigit() for t in lines):
            y = y.astype(np.int64)
    else:
        y = load_array(path, "labels", ("labels", "y"))
    y, _ = encode_labels(y, None, str(path))
    return check_labels(y, n, None, str(path))


def _stored_labels(y: np.ndarray | None, n: int, path: Path) -> np.ndarray | None:
    from dpcli.data.embeddings import check_labels, encode_labels

    return None if y is None else check_labels(encode_labels(y, None, str(path))[0], n, None, str(path))


def prune_external(
    path: Path | str,
    out: Path,
    cfg: "PruneConfig",
    *,
    labels: Path | None = None,
    outputs: "MaskOutputs | None" = None,
    progress: Callable[[float], None] | None = None,
    info: Callable[[str], None] | None = None,
) -> "MaskInfo":
    """Select, certify from S and write mask.h5 (and ``outputs``) saying no lineage is known."""
    import torch

    from dpcli.artifacts.h5 import array_fingerprint
    from dpcli.data.embeddings import load_external_S
    from dpcli.data.samples import SampleSpace
    from dpcli.select.base import Context, prune_target, select
    from dpcli.stages.core import InfluenceInfo
    from dpcli.stages.masks import certify_selection, check_outputs, write_mask

    cfg.validate()
    check_options(cfg)
    # rows of S are plain indices: no file names, whatever n turns out to be
    outputs = check_outputs(
        out, outputs, SampleSpace.identity(0), str(path), {"the external S": Path(path), "--labels": labels}
    )
    S, stored = load_external_S(path)
    n = S.shape[0]
    if labels is not None and stored is not None:
        raise DpcliError(f"{path} has its own 'labels' dataset and --labels gives others; keep one of them")
    y = read_labels(labels, n) if labels is not None else _stored_labels(stored, n, Path(path))
    if cfg.balance and y is None:
        raise DpcliError(
            "--balance prunes every class by the same share, but this external S has no class labels: "
            "give --labels FILE (one label per row of S)"
        )
    cfg.check_against(n)
    if info is not None:
        info(f"{path}: {NO_LINEAGE}")
    t0 = time.perf_counter()
    ctx = Context(
        S=S,
        labels=y if y is not None else np.zeros(n, dtype=np.int64),
        checkpoint=None,
        device=torch.device("cpu"),
        progress=progress,
    )
    pruned, solver = select(cfg, ctx)
    cert = certify_selection(S, pruned, cfg, ctx)
    meta = InfluenceInfo(
        path=Path(path),
        method="external",
        damping=float("nan"),
        n=n,
        d=int(S.shape[1]),
        num_classes=0,
        feature_dim=0,
        fingerprint=array_fingerprint(S),
        checkpoint="",
        checkpoint_fingerprint="",
        dataset="",
        dataset_fingerprint="",
        seconds=0.0,
        space=SampleSpace.identity(n),
    )
    target = prune_target(cfg, n)
    extra = {"lineage": NO_LINEAGE, "labels_file": str(Path(labels).resolve()) if labels else "", **ctx.record}
    return write_mask(
        out,
        cert,
        mode=cfg.mode,
        target=target,
        solver=solver,
        info=meta,
        config=cfg.to_dict(),
        seconds=time.perf_counter() - t0,
        method=cfg.method,
        outputs=outputs,
        extra_attrs=extra,
    )
