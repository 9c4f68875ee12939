"""Per-sample scores that need a model or a checkpoint: EL2N, GraNd, forgetting, TDDS, difficulty.

EL2N and GraNd are scored on early-training snapshots and averaged over seeds (Paul et
al., 2021).  Seed 0 is the full-data run itself (its snapshot); seed s > 0 trains the same
configuration with ``seed=s`` only up to the scoring epoch, as a resumable checkpoint in
``<checkpoint dir>/score-runs/seed-<s>/`` that is reused by every later prune.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from dpcli.artifacts.h5 import open_artifact
from dpcli.data.sources import Dataset, inference_batch, iterate_batches
from dpcli.errors import DpcliError
from dpcli.train.checkpoint import Checkpoint
from dpcli.train.dynamics import Dynamics, read_dynamics
from dpcli.train.loop import make_model, train


def el2n(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Error L2 norm ||softmax - onehot|| (Paul et al., 2021)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return np.linalg.norm(probs - onehot, axis=1)


def snapshot_scores(method: str, cfg, ctx) -> np.ndarray:
    """EL2N or GraNd averaged over ``cfg.score_seeds`` training seeds at ``cfg.score_epoch``."""
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.dynamics import default_snapshot_epochs

    ck = load_checkpoint(ctx._require_checkpoint("weight snapshots"), weights=False)
    ds = ctx.dataset()
    epoch = cfg.score_epoch if cfg.score_epoch is not None else default_snapshot_epochs(ck.config.epochs)[1]
    if method == "grand" and cfg.score_epoch is None:
        epoch = 0  # GraNd is defined at initialization (Paul et al., 2021)
    if epoch > ck.config.epochs:
        raise DpcliError(f"--score-epoch {epoch} exceeds the {ck.config.epochs} training epochs")
    states = snapshot_states(ck, ds, epoch, cfg.score_seeds, ctx.device)
    if method == "el2n":
        return el2n_scores(ck, ds, states, ctx.device)
    return grand_scores(ck, ds, states, ctx.device)


def load_dynamics(path: Path, *, snapshots: bool = True) -> Dynamics:
    """The checkpoint's training dynamics; ``snapshots=False`` skips reading the weight snapshots."""
    with open_artifact(path, "checkpoint") as f:
        dyn = read_dynamics(f, snapshots=snapshots)
    if dyn is None:
        raise DpcliError(
            f"{path}: has no training dynamics (trained by an older dpcli or under torchrun); "
            f"retrain it with `dpcli train --force`"
        )
    return dyn


def difficulty(dyn: Dynamics) -> np.ndarray:
    """Mean training loss over all recorded epochs (area under the loss curve): hard = large."""
    with np.errstate(invalid="ignore"):
        d = np.nanmean(dyn.loss, axis=0)
    if np.isnan(d).any():
        raise DpcliError("the training dynamics miss some samples; train on the full dataset")
    return d


def snapshot_states(
    ck: Checkpoint, ds: Dataset, epoch: int, seeds: int, device: torch.device, progress=None
) -> list[dict[str, torch.Tensor]]:
    """Model states after ``epoch`` epochs for seeds 0..seeds-1 (training the extra seeds' prefixes)."""
    states = []
    dyn = load_dynamics(ck.path)
    for s in range(seeds):
        if s == 0 and epoch in dyn.snapshots:
            states.append(dyn.snapshots[epoch])
            continue
        out = Path(ck.path).parent / "score-runs" / f"seed-{s}" / "checkpoint.h5"
        cfg = ck.config.replace(seed=ck.config.seed + s) if s else ck.config
        if epoch == 0:  # make_model seeds the initialization
            states.append(make_model(cfg, ds).state_dict())
            continue
        run = train(
            cfg, ds, out, device=device, stop_after=epoch, eval_every=10**9, snapshot_epochs=(), on_batch=progress
        )
        if run.epoch != epoch:
            raise DpcliError(f"{out}: holds epoch {run.epoch}, not {epoch}; delete it to rescore")
        states.append(run.state)
    return states


def _model(ck: Checkpoint, ds: Dataset, state: dict, device: torch.device):
    model = make_model(ck.config, ds)
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def el2n_scores(ck: Checkpoint, ds: Dataset, states: list[dict], device: torch.device) -> np.ndarray:
    total = np.zeros(len(ds.train.labels))
    for state in states:
        model = _model(ck, ds, state, device)
        scores = []  # scored batch by batch: n x C probabilities would be 5 GB for ImageNet
        for x, y, _ in iterate_batches(
            ds.train,
            inference_batch(ds.train, device),
            mean=ds.mean,
            std=ds.std,
            device=device,
            shuffle=False,
            augment=False,
        ):
            scores.append(el2n(torch.softmax(model(x).float(), 1).cpu().numpy(), y.cpu().numpy()))
        total += np.concatenate(scores)
    return total / len(states)


def grand_scores(
    ck: Checkpoint, ds: Dataset, states: list[dict], device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Expected norm of the per-sample gradient of all parameters (vectorized with torch.func)."""
    total = np.zeros(len(ds.train.labels))
    for state in states:
        model = _model(ck, ds, state, device)
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        def loss_one(p, x, y):
            logits = functional_call(model, (p, buffers), (x[None],))  # noqa: B023
            return torch.nn.functional.cross_entropy(logits, y[None])

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
        norms = []
        for x, y, _ in iterate_batches(
            ds.train, batch_size, mean=ds.mean, std=ds.std, device=device, shuffle=False, augment=False
        ):
            g = per_sample(params, x, y)
            norms.append(torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values())).cpu().numpy())
        total += np.concatenate(norms)
    return total / len(states)
