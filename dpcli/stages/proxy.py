"""Selection via a proxy (Coleman et al., ICLR 2020): select with a small, fast model, retrain the target.

The expensive part of pruning is the full training run that S (and the training dynamics)
come from.  A proxy run -- a smaller network and/or fewer epochs, same data, same seed --
produces S much sooner; the keep mask it yields is a set of dataset indices, so it applies
unchanged to the user's target network, which is then trained on the kept set only
(:func:`dpcli.stages.masks.retrain`).  Every artifact lands in the ordinary run directory of
the proxy's configuration, so it is cached and reused like any other run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dpcli.artifacts import runs
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig
from dpcli.errors import DpcliError

DEFAULT_EPOCH_SHARE = 0.25  # of the target's epochs when ARCH[:EPOCHS] gives no EPOCHS


@dataclass(frozen=True)
class ProxySpec:
    """``--proxy ARCH[:EPOCHS]``."""

    arch: str
    epochs: int | None = None

    @classmethod
    def parse(cls, text: str) -> "ProxySpec":
        arch, _, epochs = text.strip().partition(":")
        if not arch:
            raise DpcliError(f"--proxy needs ARCH[:EPOCHS], got {text!r}")
        if not epochs:
            return cls(arch.lower())
        try:
            value = int(epochs)
        except ValueError:
            raise DpcliError(f"--proxy {text!r}: EPOCHS must be a positive integer") from None
        if value < 1:
            raise DpcliError(f"--proxy {text!r}: EPOCHS must be a positive integer")
        return cls(arch.lower(), value)

    def config(self, target: TrainConfig) -> TrainConfig:
        """The proxy's training configuration: the target's, with this architecture and schedule."""
        epochs = self.epochs or max(1, round(DEFAULT_EPOCH_SHARE * target.epochs))
        return target.replace(arch=self.arch, epochs=epochs, subset=None).validate()


@dataclass
class ProxySelection:
    """The mask selected on the proxy, the proxy's configuration and what each stage cost (seconds)."""

    mask: "object"  # dpcli.stages.masks.MaskInfo
    proxy: TrainConfig
    checkpoint: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def selection_seconds(self) -> float:
        return float(sum(self.seconds.values()))


def select_via_proxy(
    ds,
    target: TrainConfig,
    spec: ProxySpec,
    prune_cfg: PruneConfig,
    *,
    device,
    run_root: Path,
    influence_cfg: InfluenceConfig | None = None,
    force: bool = False,
    out: Path | None = None,
    outputs=None,
) -> ProxySelection:
    """Train the proxy (cached), compute its S, select; returns the keep mask for retraining ``target``.

    ``seconds`` holds wall times of this call's ``train``, ``influence`` and ``prune``; a
    cached stage costs only its check.  The mask is valid for any model on the same dataset.
    """
    from dpcli.stages import core, masks
    from dpcli.train.loop import train

    proxy = spec.config(target)
    icfg = (influence_cfg or InfluenceConfig()).validate()
    prune_cfg.validate()
    ck_path = runs.checkpoint_path(run_root, proxy)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ck = train(proxy, ds, ck_path, device=device, force=force)
    seconds["train"] = time.perf_counter() - t0
    infl_path = runs.influence_path(ck_path, icfg)
    t0 = time.perf_counter()
    if force or not _influence_current(infl_path, ck.fingerprint, icfg):
        core.compute_influence(ck_path, infl_path, icfg, device=device, ds=ds)
    seconds["influence"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = masks.prune(
        infl_path, out or runs.mask_path(infl_path, prune_cfg), prune_cfg, device=device, ds=ds, outputs=outputs
    )
    seconds["prune"] = time.perf_counter() - t0
    return ProxySelection(mask=mask, proxy=proxy, checkpoint=ck_path, seconds=seconds)


def _influence_current(path: Path, checkpoint_fingerprint: str, icfg: InfluenceConfig) -> bool:
    from dpcli.stages import core

    if not path.exists():
        return False
    info = core.read_influence_info(path)
    return info.checkpoint_fingerprint == checkpoint_fingerprint and core.influence_config_of(path) == icfg.to_dict()


__all__ = ["ProxySpec", "ProxySelection", "select_via_proxy", "DEFAULT_EPOCH_SHARE"]
