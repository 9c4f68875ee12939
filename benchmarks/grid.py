"""Selection-quality grid across regimes: every `prune --method` x prune ratios x seeds, each mask retrained.

A benchmark, run by hand (not a test).  A *regime* is a named preset of data, network and training
(:data:`REGIMES`; docs/benchmarks.md states each in full).  Protocol (the paper's): train the
full-data model once (seed 0), compute exact S, then for each cell (method, ratio, seed) select,
retrain a fresh model on the kept samples with the same settings and training seed = cell seed,
and record the final test accuracy on the whole test set.  Full data is retrained with the same seeds.
The ``frozen-backbone`` regime differs only where a frozen backbone must: see :func:`frozen_setup`.

Cells are appended as JSON lines to ``<results>/cells-<regime>.jsonl`` the moment they finish, so
a run can be stopped at any time and resumed (finished cells are skipped).  A retrain is cached under
the full-data run, keyed on the kept set and the seed, so methods that keep the same samples share it.
Cells run in priority order: every regime's every method at seed 0, then seed 1, ...; a regime with
``lead`` methods (``paper``) runs first and whole, seed by seed: its lead methods at every ratio, its
epsilon cells, then its rivals (:func:`comparison_order`).  ``--deadline`` / ``--budget`` stop the run
cleanly (checked between cells and at every training epoch).  Cells finished in any ``--results`` folder
are skipped; new ones go to the first (and to ``--mirror``).  ``--report-only`` reads the JSON lines of one
or more ``--results`` folders and rewrites the generated sections of ``--docs``.

    python3 benchmarks/grid.py --regimes digits frozen-backbone --work /tmp/grid
    python3 benchmarks/grid.py --report-only --results benchmarks/results/grid
    bash benchmarks/gpu_grid.sh cifar10-jpg.tar.gz OUT        # paper, then cifar-scarce + cifar-rich, on one GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dpcli.artifacts import runs as pipeline  # noqa: E402
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig  # noqa: E402
from dpcli.errors import DpcliError  # noqa: E402
from dpcli.select.registry import SELECTORS  # noqa: E402
from dpcli.stages import core as stages  # noqa: E402
from dpcli.stages import masks as mask_stage  # noqa: E402

RATIOS = (0.9, 0.7, 0.5, 0.3)  # priority order: the high ratios, where selectors differ most, run first


# --------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict
    seeded: bool = False  # the selection itself depends on the seed (else one mask per ratio)
    # epsilon cells (Eq. 3): prune within this bound, or within the certified norm of ``calibrate``'s mask at
    # the cell's ratio and seed; each is retrained beside random pruning of the count it reached
    epsilon: float | None = None
    calibrate: str = ""
    ratios: tuple[float, ...] | None = None  # an epsilon cell's nominal ratios (its key; the reached share is recorded)

    @property
    def by_epsilon(self) -> bool:
        return self.epsilon is not None or bool(self.calibrate)


def _m(name: str, seeded: bool = False, **options) -> MethodSpec:
    return MethodSpec(name, {"method": name, **options}, seeded)


# Every method is named explicitly (never PruneConfig's default), so the grid means the same thing
# before and after the default changes.
METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _m("random", seeded=True),
        _m("herding"),
        _m("forgetting"),
        _m("grand"),
        _m("el2n"),
        _m("influence-score"),
        _m("ccs", seeded=True, cutoff=None),
        _m("ccs-loss", seeded=True, cutoff=None),
        _m("tdds"),
        _m("tdds-loss"),
        _m("dual"),
        _m("dual-beta", seeded=True),
        _m("d2", cutoff=None),
        _m("moderate"),
        _m("eva"),
        _m("optimization", seeded=True),  # the paper's objective alone
        MethodSpec(
            "opt+coverage+0.5x+features",  # the variant the README recommended after the first grid
            {"method": "optimization", "balance": True, "strata": 10, "cutoff_ratio": 0.5, "match_features": True},
        ),
        _m("auto", seeded=True),  # the regime-aware default, where this dpcli has it
        MethodSpec("opt+balance", {"method": "optimization", "balance": True}, seeded=True),  # class quotas only
        MethodSpec("opt+features", {"method": "optimization", "match_features": True}, seeded=True),
        # the paper's Eq. 3 at its headline 40 %: epsilon = the norm Eq. 4 reaches there, then the largest set within it
        MethodSpec(
            "optimization-eps", {"method": "optimization"}, seeded=True, calibrate="optimization", ratios=(0.4,)
        ),
        # the README's own command, `dpcli prune --epsilon 0.05 DATA` (the default method), on the regime's model
        MethodSpec("readme-eps0.05", {"method": "auto"}, epsilon=0.05, ratios=(0.0,)),
    )
}
DEFAULTS = ("auto", "optimization")  # whose margins over the baselines the report tabulates
OURS = ("auto", "optimization", "opt+coverage+0.5x+features", "opt+balance", "opt+features")
# The CIFAR regimes run the strongest baselines only, so that a GPU budget of minutes reaches several seeds.
SCARCE_METHODS = ("random", "herding", "ccs", "tdds", "dual", "d2", "moderate", "optimization", "auto", "eva")
# On the CPU, the rich regime runs the rivals that came closest to `auto` elsewhere, in this priority order.
RICH_CPU_METHODS = ("random", "auto", "dual-beta", "herding", "d2", "opt+balance", "optimization", "ccs", "eva")
RICH_METHODS = ("random", "herding", "el2n", "ccs", "tdds", "dual", "d2", "moderate", "optimization", "auto", "eva")
# The papers' setting: the default and random first (whole comparisons early), the paper's Eq. 3 at 40 % and the
# README's command, then the published rivals closest to `auto` (DUAL's Beta sampling, CCS) and EVA.
PAPER_LEAD = ("auto", "random")
PAPER_METHODS = (*PAPER_LEAD, "optimization-eps", "readme-eps0.05", "dual-beta", "ccs", "eva")
EPSILON_CELLS = tuple(m for m, spec in METHODS.items() if spec.by_epsilon)
SELECTORS_ONLY = tuple(m for m in METHODS if m not in EPSILON_CELLS)  # one mask per (ratio, seed) each


def has_selector(name: str) -> bool:
    return name in SELECTORS.names()


# --------------------------------------------------------------------------- regimes
@dataclass(frozen=True)
class Regime:
    """A named preset: the data, the network and its training; everything a cell's result depends on."""

    name: str
    title: str
    dataset: str  # "digits" or "cifar10" (the JPEG tarball, ImageFolder layout)
    per_class: int  # training images per class for the pruning pool (0: all)
    arch: str = "convnet"
    width: int = 16
    depth: int = 3
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 128
    augment: bool = True
    methods: tuple[str, ...] = SELECTORS_ONLY
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # frozen-backbone: the backbone is a ConvNet trained by dpcli on `backbone_per_class` images per
    # class, disjoint from the pool; the head is an L2 softmax regression fit to convergence
    backbone_per_class: int = 0
    probe_epochs: int = 30  # SGD epochs of the linear probe whose dynamics the score baselines read
    damping: float = 1e-3
    gpu: bool = False  # designed for a GPU (the CPU runs it only with --tiny)
    toy: bool = False  # --tiny: a dry run; its cells are marked and never reported as results
    ratios: tuple[float, ...] | None = None  # the regime's own prune ratios, in priority order [default: RATIOS]
    lead: tuple[str, ...] = ()  # run first and whole, seed by seed, in :func:`comparison_order` (else the passes)

    def train_config(self, dataset: str, device: torch.device, **changes) -> TrainConfig:
        cfg = TrainConfig(
            dataset=dataset,
            arch=self.arch,
            width=self.width,
            depth=self.depth,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            augment=self.augment,
            seed=0,
            channels_last=True if device.type == "cuda" else None,
        )  # a speed flag only (bf16 autocast is dpcli's CUDA default)
        return cfg.replace(**changes)

    def tiny(self) -> "Regime":
        """The same pipeline at toy size: a CPU dry run of every code path (numbers mean nothing).  A tiny
        subset (30 images per class, also for the all-data regimes), 3 epochs (EVA's and TDDS's least), a
        ConvNet of width 8 in place of a ResNet (whose width is fixed)."""
        return dataclasses.replace(
            self,
            per_class=min(self.per_class, 30) if self.per_class else 30,
            arch="convnet",
            width=8,
            epochs=3,
            batch_size=64,
            lr=min(self.lr, 0.05),
            seeds=(0, 1),
            probe_epochs=4,
            backbone_per_class=30 if self.backbone_per_class else 0,
            toy=True,
        )


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime(
            "cifar-scarce",
            "CIFAR-10, scarce (10,000 images, small ConvNet)",
            "cifar10",
            per_class=1000,
            width=16,
            depth=3,
            epochs=15,
            lr=0.05,
            batch_size=128,
            methods=SCARCE_METHODS,
        ),
        Regime(
            "cifar-rich",
            "CIFAR-10, rich (all 50,000 images, wider ConvNet, longer)",
            "cifar10",
            per_class=0,
            width=64,
            depth=4,
            epochs=20,
            lr=0.1,
            batch_size=512,
            gpu=True,
            methods=RICH_METHODS,
        ),
        # The field's anchor (DUAL, CCS, D2, TDDS publish 30/50/70/80/90 % pruned): ResNet-18 on all of CIFAR-10,
        # shortened from 200 epochs to 40 at batch 512 with CCS's lr per sample (0.1 at 256); width and depth are
        # the CLI's defaults (ignored by ResNet-18) so that `dpcli` with the same options shares its run directory.
        Regime(
            "paper",
            "CIFAR-10, the papers' setting (ResNet-18, all 50,000 images, 40 epochs)",
            "cifar10",
            per_class=0,
            arch="resnet18",
            width=32,
            depth=3,
            epochs=40,
            lr=0.2,
            batch_size=512,
            gpu=True,
            methods=PAPER_METHODS,
            seeds=(0, 1, 2),
            ratios=(0.9, 0.8, 0.7, 0.5, 0.3),
            lead=PAPER_LEAD,
        ),
        Regime(
            "cifar-rich-cpu",
            "CIFAR-10, richer on a CPU (all 50,000 images, small ConvNet, 3.3x the steps)",
            "cifar10",
            per_class=0,
            width=16,
            depth=3,
            epochs=10,
            lr=0.05,
            batch_size=128,
            seeds=(0, 1),
            methods=RICH_CPU_METHODS,
        ),
        Regime(
            "cifar-wide-cpu",
            "CIFAR-10, wider on a CPU (all 50,000 images, 2x wider ConvNet, 4x the steps)",
            "cifar10",
            per_class=0,
            width=32,
            depth=3,
            epochs=12,
            lr=0.05,
            batch_size=128,
            seeds=(0, 1, 2),
            methods=RICH_CPU_METHODS,
        ),
        Regime(
            "digits",
            "digits (scikit-learn, 1,438 training images)",
            "digits",
            per_class=0,
            width=32,
            depth=2,
            epochs=30,
            lr=0.05,
            batch_size=64,
            augment=False,
            methods=tuple(m for m in SELECTORS_ONLY if m not in ("grand", "influence-score", "ccs-loss", "tdds-loss")),
        ),
        Regime(
            "frozen-backbone",
            "frozen backbone (CIFAR-10 features, head fit to convergence)",
            "cifar10",
            per_class=1000,
            width=16,
            depth=4,
            epochs=12,
            lr=0.05,
            batch_size=128,
            backbone_per_class=1000,
            methods=tuple(m for m in SELECTORS_ONLY if m not in ("el2n", "grand")),
        ),
    )
}
NOT_APPLICABLE = {
    ("frozen-backbone", "el2n"): "scores the image network at its early snapshots; no image "
    "network is trained on the pool",
    ("frozen-backbone", "grand"): "same as el2n",
}


# --------------------------------------------------------------------------- helpers
class BudgetSpent(Exception):
    """The run's deadline passed: stop cleanly after the last finished cell."""


@dataclass
class Clock:
    deadline: float | None  # time.time() seconds, None = no limit

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BudgetSpent(what)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CellStore:
    """One JSON-lines file per regime; a line is written (and flushed) when its cell finishes.

    Cells finished in the ``also`` folders count as done too, so a resumed run skips them; ``mirror`` gets a
    copy of every new line (the folder that comes back from a lent GPU machine).  Toy (``--tiny``) cells and
    measured ones never mix: each run counts only its own kind as done, and a toy run refuses a file that
    holds measured cells."""

    def __init__(
        self, folder: Path, regime: str, toy: bool = False, also: tuple[str, ...] = (), mirror: Path | None = None
    ) -> None:
        self.path = Path(folder) / f"cells-{regime}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mirror = None if mirror is None else Path(mirror) / f"cells-{regime}.jsonl"
        own = read_cells(self.path)
        if toy and any(not c.get("toy") for c in own):
            raise SystemExit(f"{self.path}: holds measured cells, and --tiny writes toy ones; give another --results")
        cells = own + [c for folder in also for c in read_cells(Path(folder) / self.path.name)]
        self.done = {_key(c) for c in cells if bool(c.get("toy")) == toy}

    def has(self, method: str, ratio: float, seed: int) -> bool:
        return (method, round(ratio, 6), seed) in self.done

    def add(self, cell: dict) -> None:
        line = json.dumps(cell) + "\n"
        for path in (self.path, self.mirror):
            if path is not None:
                append_line(path, line)
        self.done.add(_key(cell))


def append_line(path: Path, line: str) -> None:
    """Append one line durably; a torn last line (a run killed mid-write) is first closed, not extended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
    with open(path, "a") as fh:
        fh.write(("\n" if torn else "") + line)
        fh.flush()
        os.fsync(fh.fileno())


def _key(c: dict) -> tuple:
    return c["method"], round(float(c["ratio"]), 6), int(c["seed"])


def read_cells(path: Path) -> list[dict]:
    """The cells of a JSON-lines file; a torn last line (a run killed mid-write) is ignored."""
    out = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def link_subset(
    src: Path, dst: Path, per_class: int, seed: int, exclude: dict[str, set[str]] | None = None, test: bool = True
) -> Path:
    """An ImageFolder of ``per_class`` training images per class (seeded; all if 0) and the whole test set,
    as symlinks; ``exclude`` removes files (per class) from the draw."""
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    rng = random.Random(seed)
    for split, per in (("train", per_class), ("test", None)):
        if split == "test" and not test:
            continue
        for c in sorted(os.listdir(src / split)):
            files = sorted(f for f in os.listdir(src / split / c) if f not in (exclude or {}).get(c, set()))
            if per and per < len(files):
                files = sorted(rng.sample(files, per))
            (tmp / split / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                os.symlink((src / split / c / f).resolve(), tmp / split / c / f)
    os.replace(tmp, dst)
    return dst


def extract_cifar(tarball: Path, work: Path) -> Path:
    full = work / "cifar10-jpg"
    if not (full / "train").exists():
        log(f"extracting {tarball}")
        tmp = work / "extract.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if shutil.which("tar"):  # GNU tar: several times faster than tarfile on 60,000 small files
            subprocess.run(["tar", "-xzf", str(tarball), "-C", str(tmp)], check=True)
        else:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        root = next(p.parent for p in tmp.rglob("train") if p.is_dir() and (p.parent / "test").is_dir())
        os.replace(root, full)
    return full


def count_pruned(n: int, ratio: float) -> int:
    from dpcli.select.linalg import count_from_ratio

    return count_from_ratio(n, ratio)


# --------------------------------------------------------------------------- one regime's state
@dataclass
class Setup:
    """What every cell of a regime shares: S, the selection context, and how to retrain a kept set."""

    regime: Regime
    info: stages.InfluenceInfo
    ctx: object  # dpcli.select.base.Context, shared so dynamics and features load once
    retrain: Callable[[np.ndarray, int, Path], dict]  # (keep mask, seed, mask path) -> result fields
    full: Callable[[int], dict]  # seed -> full-data result fields
    settings: str


def selection_context(S: np.ndarray, labels: np.ndarray, checkpoint: Path | None, device, ds=None):
    from dpcli.select.base import Context

    return Context(S=S, labels=labels, checkpoint=checkpoint, device=device, ds=ds)


@functools.lru_cache(maxsize=None)
def selection_code() -> str:
    """Hash of dpcli's selection code: cached masks (and the retrains beside them) are keyed on it, since a
    mask's path names only its options, and a selector that changed must not reuse an older run's mask."""
    import dpcli.select

    h = hashlib.sha256()
    root = Path(dpcli.select.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:8]


def spec_config(spec: MethodSpec, ratio: float, seed: int, epsilon: float | None = None) -> PruneConfig:
    """One cell's prune configuration: the spec's options at the cell's ratio, or within ``epsilon``."""
    size = {"ratio": ratio} if epsilon is None else {"epsilon": epsilon}
    return PruneConfig(**size, seed=seed if spec.seeded else 0, **spec.options).validate()


def make_mask(
    setup: Setup, spec: MethodSpec, ratio: float, seed: int, epsilon: float | None = None
) -> tuple[mask_stage.MaskInfo, dict]:
    return mask_for(setup, spec_config(spec, ratio, seed, epsilon))


def mask_for(setup: Setup, pcfg: PruneConfig) -> tuple[mask_stage.MaskInfo, dict]:
    """Select with ``pcfg`` on the shared context (what ``mask_stage.prune`` does, without re-reading S)."""
    from dpcli.select.base import prune_count, select
    from dpcli.select.certificate import certify

    path = pipeline.mask_path(setup.info.path, pcfg)
    path = path.parent.with_name(f"{path.parent.name}-code{selection_code()}") / path.name
    if not path.exists() and pcfg.method == "auto" and setup.info.checkpoint:
        # the default goes through `prune` itself, so the mask holds whatever it records about its choice
        mask_stage.prune(setup.info.path, path, pcfg, device=setup.ctx.device, ds=setup.ctx.ds)
    if not path.exists():
        t0 = time.perf_counter()
        pruned, rule = select(pcfg, setup.ctx)
        cert = certify(setup.ctx.S, pruned, pcfg.epsilon, sketch_k=setup.info.sketch_k)
        m = prune_count(pcfg, setup.info.n)
        mask_stage.write_mask(
            path,
            cert,
            mode=pcfg.mode,
            target=float(pcfg.epsilon if m is None else m),
            solver=rule,
            info=setup.info,
            config=pcfg.to_dict(),
            seconds=time.perf_counter() - t0,
            method=pcfg.method,
        )
    return mask_stage.read_mask(path), mask_record(path)


def mask_record(path: Path) -> dict:
    """The rule a selector reports (its label) and, for `auto`, whatever it records about its choice."""
    import h5py

    from dpcli.artifacts.h5 import get_attr

    with h5py.File(path, "r") as f:
        rec = {"rule": get_attr(f, "solver")}
        extra = {
            k: get_attr(f, k)
            for k in f.attrs
            if any(w in k.lower() for w in ("auto", "choice", "chose", "regime", "reason", "signal"))
        }
    if extra:
        rec["auto"] = extra
    return rec


def image_setup(regime: Regime, data: Path | str, work: Path, device: torch.device, clock: Clock) -> Setup:
    """cifar-scarce, cifar-rich, digits: dpcli's own train -> influence (exact) -> prune -> retrain."""
    from dpcli.data.sources import load_dataset
    from dpcli.train.loop import train

    dataset = str(data) if regime.dataset == "digits" else f"imagefolder:{Path(data).resolve()}"
    ds = load_dataset(dataset, work / "data")
    runs = work / "runs"
    base = regime.train_config(dataset, device)
    ck_path = pipeline.checkpoint_path(runs, base)
    log(f"{regime.name}: full-data model {ck_path}")
    hook = _epoch_hook(clock, f"{regime.name} full-data training")
    train(base, ds, ck_path, device=device, on_epoch=hook)
    icfg = InfluenceConfig().validate()
    inf_path = pipeline.influence_path(ck_path, icfg)
    if not inf_path.exists():
        clock.check(f"{regime.name} influence")
        log(f"{regime.name}: influence (exact)")
        stages.compute_influence(ck_path, inf_path, icfg, device=device, ds=ds)
    info = stages.read_influence_info(inf_path)
    S = stages.load_S(inf_path)
    ctx = selection_context(S, np.asarray(ds.train.labels), ck_path, device, ds)

    def retrain(keep: np.ndarray, seed: int, mask_path: Path) -> dict:
        mask = mask_stage.read_mask(mask_path)
        cfg = base.replace(seed=seed)
        # keyed on the kept set, not the method: auto's mask equals dual-beta's when it picks DUAL
        out = ck_path.parent / "retrains" / f"{mask.fingerprint[:16]}-s{seed}" / "checkpoint.h5"
        ck = mask_stage.retrain(
            ds,
            mask,
            out,
            base=cfg,
            overrides={},
            device=device,
            eval_every=cfg.epochs,
            snapshot_epochs=(),
            on_epoch=_epoch_hook(clock, "retraining"),
        ).checkpoint
        return {
            "test_accuracy": ck.final.test_acc,
            "test_loss": ck.final.test_loss,
            "train_seconds": ck.seconds,
            "steps": ck.steps,
        }

    def full(seed: int) -> dict:
        cfg = base.replace(seed=seed)
        path = ck_path if seed == 0 else pipeline.checkpoint_path(runs, cfg)
        ck = train(
            cfg,
            ds,
            path,
            device=device,
            eval_every=cfg.epochs,
            snapshot_epochs=(),
            on_epoch=_epoch_hook(clock, "full-data training"),
        )
        return {
            "test_accuracy": ck.final.test_acc,
            "test_loss": ck.final.test_loss,
            "train_seconds": ck.seconds,
            "train_accuracy": ck.final.train_acc,
            "model": ck.fingerprint[:12],
        }

    n = len(ds.train.labels)
    net = (
        f"ConvNet width {regime.width} depth {regime.depth}"
        if regime.arch == "convnet"
        else {"resnet18": "ResNet-18 (CIFAR stem)"}.get(regime.arch, regime.arch)
    )
    cuda = "; bf16 autocast, channels-last" if device.type == "cuda" else ""
    settings = (
        f"{n:,} training images ({ds.num_classes} classes), test set {len(ds.test.labels):,}; "
        f"{net} ({info.feature_dim} features), "
        f"{regime.epochs} epochs, batch {regime.batch_size}, SGD lr {regime.lr} cosine, momentum 0.9, "
        f"weight decay 5e-4, augmentation {'on' if regime.augment else 'off'}{cuda}; exact S "
        f"({n:,} x {info.d:,})"
    )
    return Setup(regime, info, ctx, retrain, full, settings)


def _epoch_hook(clock: Clock, what: str):
    def hook(_rec) -> None:
        clock.check(what)  # the epoch is checkpointed before this hook: a resumable stop

    return hook


def frozen_setup(regime: Regime, cifar: Path, work: Path, device: torch.device, clock: Clock, seed: int) -> Setup:
    """frozen-backbone: features of a ConvNet trained by dpcli on images disjoint from the pool, frozen.

    The backbone sees ``backbone_per_class`` training images per class (draw seed 1000); the pool of
    each seed is ``per_class`` images per class drawn (seed = the cell seed) from the *remaining*
    training images, so every seed prunes another sample of data.  The head is dpcli's embeddings
    path: L2 softmax regression fit to convergence (damping 1e-3), exact S, ``retrain`` = refit.
    Score baselines need training dynamics, which a converged head fit does not have: they read the
    dynamics of an SGD linear probe trained on the pool's features (``probe_epochs`` epochs,
    recorded by dpcli's DynamicsRecorder, seed = the cell seed).
    """
    from dpcli.data.embeddings import from_arrays
    from dpcli.data.sources import load_dataset
    from dpcli.stages import embeddings as emb_mod
    from dpcli.stages import heads
    from dpcli.train.loop import extract_features, load_trained, train

    bb_dir = link_subset(
        cifar, work / f"cifar10-backbone-{regime.backbone_per_class}pc", regime.backbone_per_class, seed=1000
    )
    used = {c: set(os.listdir(bb_dir / "train" / c)) for c in os.listdir(bb_dir / "train")}
    rest_dir = link_subset(cifar, work / f"cifar10-rest-{regime.backbone_per_class}pc", 0, seed=0, exclude=used)
    ds_bb = load_dataset(f"imagefolder:{bb_dir.resolve()}", work / "data")
    ds_rest = load_dataset(f"imagefolder:{rest_dir.resolve()}", work / "data")
    cfg = regime.train_config(ds_bb.name, device)
    ck_path = pipeline.checkpoint_path(work / "runs", cfg)
    log(f"{regime.name}: backbone {ck_path}")
    train(
        cfg,
        ds_bb,
        ck_path,
        device=device,
        eval_every=cfg.epochs,
        snapshot_epochs=(),
        on_epoch=_epoch_hook(clock, "backbone training"),
    )
    feat_file = ck_path.parent / "rest-features.npz"
    if not feat_file.exists():
        model, ck, _ = load_trained(ck_path, device, ds=ds_bb)
        # the backbone's own normalization (ds_bb's mean/std) on the pool's and test images
        x = extract_features(model, ds_rest.train, ds_bb, device).cpu().numpy()
        xt = extract_features(model, ds_rest.test, ds_bb, device).cpu().numpy()
        np.savez(
            feat_file.with_suffix(".partial.npz"),
            x=x,
            y=ds_rest.train.labels,
            xt=xt,
            yt=ds_rest.test.labels,
            backbone_test_acc=ck.final.test_acc,
        )
        os.replace(feat_file.with_suffix(".partial.npz"), feat_file)
    z = np.load(feat_file)
    rng = np.random.default_rng(seed)
    y_all = z["y"]
    pool = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(y_all == c), regime.per_class, replace=False) for c in np.unique(y_all)]
        )
    )
    emb = from_arrays(z["x"][pool].astype(np.float32), y_all[pool], z["xt"].astype(np.float32), z["yt"])
    icfg = InfluenceConfig().validate()
    inf_path = ck_path.parent / f"pool-{regime.per_class}pc-s{seed}" / "influence.h5"
    if not inf_path.exists():
        emb_mod.embeddings_influence(emb, inf_path, icfg, damping=regime.damping)
    info = stages.read_influence_info(inf_path)
    S = stages.load_S(inf_path)
    ctx = selection_context(S, emb.y, None, torch.device("cpu"))
    # what herding, moderate, d2 and --match-features read, and the probe's dynamics
    ctx.supply(features=emb.x, dynamics=probe_dynamics(emb.x, emb.y, emb.num_classes, regime, seed))

    def retrain(keep: np.ndarray, _seed: int, _mask: Path) -> dict:
        r = heads.refit(emb, keep, regime.damping)
        return {
            "test_accuracy": r.test_accuracy,
            "test_loss": r.test_loss,
            "train_seconds": r.seconds,
            "head_iterations": r.head.iterations,
        }

    def full(_seed: int) -> dict:
        return retrain(np.ones(emb.n, dtype=bool), _seed, Path())

    settings = (
        f"backbone: ConvNet width {regime.width} depth {regime.depth} ({emb.x.shape[1]} features) trained "
        f"by dpcli on {len(ds_bb.train.labels):,} CIFAR-10 training images ({regime.epochs} epochs, "
        f"{float(z['backbone_test_acc']):.1f} % test accuracy), then frozen; pool: {emb.n:,} other "
        f"training images ({regime.per_class} per class, drawn per seed from the "
        f"{len(y_all):,} the backbone never saw); head: L2 softmax regression fit to convergence "
        f"(damping {regime.damping:g}), exact S ({emb.n:,} x {info.d:,}); score baselines read the "
        f"dynamics of a {regime.probe_epochs}-epoch SGD linear probe on the same features"
    )
    return Setup(regime, info, ctx, retrain, full, settings)


def probe_dynamics(x: np.ndarray, y: np.ndarray, num_classes: int, regime: Regime, seed: int):
    """Per-epoch dynamics of a linear probe trained by minibatch SGD on fixed features (the forward pass
    that trains on each sample, as ``train`` records them), for the score-based baselines."""
    from dpcli.train.dynamics import Dynamics, DynamicsRecorder

    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    head = torch.nn.Linear(xt.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, weight_decay=regime.damping)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=regime.probe_epochs)
    rec = DynamicsRecorder(len(yt))
    for _ in range(regime.probe_epochs):
        rec.begin_epoch("cpu")
        for idx in torch.randperm(len(yt), generator=g).split(128):
            logits = head(xt[idx])
            losses = torch.nn.functional.cross_entropy(logits, yt[idx], reduction="none")
            rec.add_batch(idx, losses, logits, yt[idx])
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
        sched.step()
        rec.end_epoch()
    return Dynamics(
        loss=np.stack(rec._loss),
        correct=np.stack(rec._correct),
        margin=np.stack(rec._margin),
        probs=np.stack(rec._probs),
        el2n=np.stack(rec._el2n),
    )


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace, regimes: list[Regime]) -> None:
    torch.set_num_threads(args.threads)
    clock = Clock(args.deadline if args.deadline else (time.time() + args.budget if args.budget else None))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    results = Path(args.results)
    stores = {
        r.name: CellStore(results, r.name, toy=r.toy, also=tuple(args.results_all[1:]), mirror=args.mirror)
        for r in regimes
    }
    auto_missing = "auto" in {m for r in regimes for m in _methods(args, r)} and not has_selector("auto")
    if auto_missing:
        log("skipping `auto`: this dpcli has no --method auto (the report marks its cells 'not run')")
    cifar = None
    setups: dict[tuple[str, int], Setup] = {}

    def setup_for(regime: Regime, seed: int) -> Setup:
        nonlocal cifar
        key = (regime.name, seed if regime.backbone_per_class else 0)
        if key not in setups:
            data: Path | str = "digits"
            if regime.dataset == "cifar10":
                cifar = cifar or (Path(args.data) if args.data else extract_cifar(Path(args.tarball), work))
            if regime.backbone_per_class:
                setups[key] = frozen_setup(regime, cifar, work, device, clock, seed)
            else:
                if regime.dataset == "cifar10":
                    data = (
                        link_subset(
                            cifar,
                            work / f"cifar10-{regime.per_class or 'all'}pc",
                            regime.per_class,
                            seed=args.subset_seed,
                        )
                        if regime.per_class
                        else cifar
                    )
                setups[key] = image_setup(regime, data, work, device, clock)
        return setups[key]

    def methods_of(regime: Regime) -> list[str]:
        return [m for m in _methods(args, regime) if not (m == "auto" and auto_missing)]

    lead = [r for r in regimes if r.lead]
    rest = [r for r in regimes if not r.lead]
    seeds = sorted({s for r in rest for s in _seeds(args, r)})
    ratios = _ratios(args)
    # priority: the lead regimes (`paper`) first and whole; then the high ratios (>= 70 %, where selectors differ
    # most) for every seed, then the rest; within each pass, every regime, ratio and method at seed 0, then
    # seed 1, ...  The full-data cell of seed 0 comes with the selection model; the other seeds' full-data
    # cells run in the second pass.
    passes = [[r for r in ratios if r >= 0.7], [r for r in ratios if r < 0.7]]
    try:
        for regime in lead:
            run_comparisons(
                regime,
                methods_of(regime),
                lambda s, r=regime: setup_for(r, s),
                stores[regime.name],
                args,
                clock,
                device,
            )
        for k, group in enumerate(passes):
            for seed in seeds:
                for regime in rest:
                    if seed not in _seeds(args, regime):
                        continue
                    store = stores[regime.name]
                    methods = [m for m in methods_of(regime) if m not in EPSILON_CELLS]  # they need a lead regime
                    todo = [(m, r) for r in group for m in methods if not store.has(m, r, seed)]
                    want_full = (
                        (seed == 0 or k == len(passes) - 1) and not store.has("full", 0.0, seed) and not args.no_full
                    )
                    if not want_full and not todo:
                        continue
                    clock.check(f"{regime.name} seed {seed}")
                    setup = setup_for(regime, seed)
                    run_block(setup, store, todo, seed, device, clock, want_full)
    except BudgetSpent as stop:
        log(f"time budget spent (at: {stop}); every finished cell is in {results}")


def comparison_order(
    regime: Regime, methods: list[str], seeds: tuple[int, ...], ratios: list[float]
) -> list[tuple[int, str, float]]:
    """(seed, method, ratio) in the order a lead regime runs, so that whole comparisons finish early: per
    seed, the lead methods at every ratio (interleaved: each ratio's pair completes at once), the epsilon
    cells, then the rivals at every ratio; the full-data cell first for seed 0 (it comes with the selection
    model), last for the others (a full training run)."""
    order = []
    for seed in seeds:
        block = [(seed, m, r) for r in ratios for m in regime.lead if m in methods]
        block += [(seed, m, r) for m in methods if m in EPSILON_CELLS for r in METHODS[m].ratios or ratios]
        block += [(seed, m, r) for m in methods if m not in regime.lead and m not in EPSILON_CELLS for r in ratios]
        full = [(seed, "full", 0.0)]
        order += full + block if seed == 0 else block + full
    return order


def run_comparisons(
    regime: Regime,
    methods: list[str],
    setup_of: Callable[[int], Setup],
    store: CellStore,
    args: argparse.Namespace,
    clock: Clock,
    device,
) -> None:
    """A lead regime's cells in :func:`comparison_order`, skipping those already finished."""
    for seed, name, ratio in comparison_order(regime, methods, _seeds(args, regime), _ratios(args, regime)):
        if store.has(name, ratio, seed) or (name == "full" and args.no_full):
            continue
        clock.check(f"{regime.name} {name} {ratio:.0%} s{seed}")
        setup = setup_of(seed)
        if name == "full":
            run_full(setup, store, seed, device)
        else:
            run_cell(setup, store, name, ratio, seed, device)


def run_block(
    setup: Setup, store: CellStore, todo: list[tuple[str, float]], seed: int, device, clock: Clock, want_full: bool
) -> None:
    """One regime's cells at one seed: the full-data reference if wanted, then ``todo`` in order."""
    if want_full:
        run_full(setup, store, seed, device)
    for name, ratio in todo:
        clock.check(f"{setup.regime.name} {name} {ratio:.0%} s{seed}")
        run_cell(setup, store, name, ratio, seed, device)


def run_full(setup: Setup, store: CellStore, seed: int, device) -> None:
    """The full-data reference of one seed."""
    regime = setup.regime
    t0 = time.perf_counter()
    res = setup.full(seed)
    store.add(
        {
            "regime": regime.name,
            "method": "full",
            "ratio": 0.0,
            "seed": seed,
            **({"toy": True} if regime.toy else {}),
            "n": setup.info.n,
            "n_kept": setup.info.n,
            "wall_seconds": time.perf_counter() - t0,
            "settings": setup.settings,
            "device": str(device),
            **res,
        }
    )
    log(f"{regime.name} full s{seed}: {res['test_accuracy']:.2f}%")


def _cell(setup: Setup, name: str, ratio: float, seed: int, device) -> dict:
    return {
        "regime": setup.regime.name,
        "method": name,
        "ratio": ratio,
        "seed": seed,
        "device": str(device),
        "model": setup.info.checkpoint_fingerprint[:12],
        **({"toy": True} if setup.regime.toy else {}),
    }


def run_cell(setup: Setup, store: CellStore, name: str, ratio: float, seed: int, device) -> None:
    spec = METHODS[name]
    if spec.by_epsilon:
        return run_epsilon_cell(setup, store, name, ratio, seed, device)
    t0 = time.perf_counter()
    cell = _cell(setup, name, ratio, seed, device)
    try:
        mask, rec = make_mask(setup, spec, ratio, seed)
    except DpcliError as exc:  # a selector that cannot run here: recorded, the grid goes on
        store.add({**cell, "error": str(exc)})
        log(f"{setup.regime.name} {name} {ratio:.0%} s{seed}: selection failed: {exc}")
        return
    t1 = time.perf_counter()
    res = setup.retrain(mask.keep, seed, mask.path)
    # the selection code's hash tells a cell of the current default from an earlier one (benchmarks/auto_evidence.py)
    store.add(
        {
            **cell,
            "n": mask.n,
            "n_kept": mask.n_kept,
            "norm": mask.norm,
            **rec,
            "selection_code": selection_code(),
            "select_seconds": t1 - t0,
            "wall_seconds": time.perf_counter() - t0,
            **res,
        }
    )
    log(
        f"{setup.regime.name} {name} {ratio:.0%} s{seed}: {res['test_accuracy']:.2f}% "
        f"({rec['rule']}, {time.perf_counter() - t0:.0f}s)"
    )


def run_epsilon_cell(setup: Setup, store: CellStore, name: str, ratio: float, seed: int, device) -> None:
    """Eq. 3 within the spec's epsilon (or the norm its ``calibrate`` method reaches at ``ratio``), retrained
    beside random pruning of the count it reached, same seed: the README's claim, measured."""
    spec = METHODS[name]
    t0 = time.perf_counter()
    cell = _cell(setup, name, ratio, seed, device)
    try:
        eps = make_mask(setup, METHODS[spec.calibrate], ratio, seed)[0].norm if spec.calibrate else spec.epsilon
        mask, rec = make_mask(setup, spec, ratio, seed, epsilon=eps)
        if mask.n_pruned in (0, mask.n):
            raise DpcliError(f"epsilon {eps:.4g} prunes {mask.n_pruned} of {mask.n} samples: nothing to compare")
        rnd, _ = mask_for(setup, PruneConfig(count=mask.n_pruned, method="random", seed=seed).validate())
    except DpcliError as exc:
        store.add({**cell, "error": str(exc)})
        log(f"{setup.regime.name} {name} s{seed}: selection failed: {exc}")
        return
    t1 = time.perf_counter()
    res = setup.retrain(mask.keep, seed, mask.path)
    other = setup.retrain(rnd.keep, seed, rnd.path)
    store.add(
        {
            **cell,
            "epsilon": eps,
            "n": mask.n,
            "n_kept": mask.n_kept,
            "pruned_share": mask.n_pruned / mask.n,
            "norm": mask.norm,
            **rec,
            "select_seconds": t1 - t0,
            "wall_seconds": time.perf_counter() - t0,
            **res,
            "random_norm": rnd.norm,
            **{f"random_{k}": v for k, v in other.items()},
        }
    )
    log(
        f"{setup.regime.name} {name} s{seed}: epsilon {eps:.4g} pruned {mask.n_pruned / mask.n:.1%}: "
        f"{res['test_accuracy']:.2f}% vs random {other['test_accuracy']:.2f}%"
    )


def _methods(args, regime: Regime) -> list[str]:
    ms = args.methods or regime.methods
    return [m for m in ms if (regime.name, m) not in NOT_APPLICABLE]


def _seeds(args, regime: Regime) -> tuple[int, ...]:
    return tuple(args.seeds) if args.seeds else regime.seeds


def _ratios(args, regime: Regime | None = None) -> list[float]:
    """``--ratios``, else the regime's own, else :data:`RATIOS`."""
    return list(args.ratios or (regime.ratios if regime is not None and regime.ratios else RATIOS))


# --------------------------------------------------------------------------- report
def mean_se(v: list[float]) -> tuple[float, float, float]:
    """Mean, standard error and standard deviation (ddof 1; 0 for one value)."""
    a = np.asarray(v, dtype=np.float64)
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return float(a.mean()), sd / math.sqrt(len(a)), sd


def regime_report(regime: Regime, cells: list[dict], methods: list[str], auto_present: bool) -> str:
    """The generated part of one regime's section: settings, table, margins, auto's choices, epsilon cells."""
    toy = any(c.get("toy") for c in cells)
    by_epsilon = [c for c in cells if c["method"] in EPSILON_CELLS]
    cells = [c for c in cells if c["method"] not in EPSILON_CELLS]
    methods = [m for m in methods if m not in EPSILON_CELLS]
    ok = [c for c in cells if "error" not in c]
    acc: dict = {}
    for c in ok:
        acc.setdefault((c["method"], round(float(c["ratio"]), 6)), []).append(float(c["test_accuracy"]))
    errors = {(c["method"], round(float(c["ratio"]), 6)): c["error"] for c in cells if "error" in c}
    full = acc.get(("full", 0.0), [])
    ratios = sorted({r for (m, r) in acc if r > 0} | {r for (m, r) in errors})
    if not full and not ratios and not by_epsilon:
        return "_No cells recorded for this regime yet._\n"
    lines = ["**TOY DRY RUN (--tiny): these numbers mean nothing.**\n"] if toy else []
    settings = next((c.get("settings") for c in ok if c["method"] == "full"), None)
    devices = sorted({c.get("device", "?") for c in ok})
    if settings:
        lines.append(f"Settings: {settings}. Device: {', '.join(devices)}.\n")
    if full:
        m, se, _ = mean_se(full)
        lines.append(f"Full data: **{m:.2f} ± {se:.2f} %** test accuracy (mean ± standard error, n = {len(full)}).\n")
    shown = [m for m in methods if any((m, r) in acc or (m, r) in errors for r in ratios) or m == "auto"]
    best = {r: max((np.mean(acc[(m, r)]) for m in shown if (m, r) in acc), default=None) for r in ratios}
    lines.append("| method | " + " | ".join(f"{r:.0%} pruned" for r in ratios) + " |")
    lines.append("|---|" + "---|" * len(ratios))
    for m in shown:
        row = []
        for r in ratios:
            v = acc.get((m, r))
            if v:
                mu, se, _ = mean_se(v)
                s = f"{mu:.2f} ± {se:.2f} (n={len(v)})"
                row.append(f"**{s}**" if best[r] is not None and np.isclose(mu, best[r]) else s)
            elif (m, r) in errors:
                row.append("failed¹")
            elif m == "auto" and not auto_present:
                row.append("not run²")
            else:
                row.append("–")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines.append(
        "\nTest accuracy (%) after retraining on the kept samples: mean ± standard error over seeds "
        "(n = seeds); bold = best mean per ratio."
    )
    if errors:
        first = sorted({e.splitlines()[0] for e in errors.values()})
        lines.append("¹ The selector stopped with an error: " + "; ".join(f"`{e}`" for e in first[:3]))
    if not any(m == "auto" for m, _ in acc):
        lines.append("² No `auto` cells: the dpcli that ran this grid had no `--method auto`.")
    baselines = [m for m in shown if m not in OURS]
    for ours in DEFAULTS:
        if any((ours, r) in acc for r in ratios):
            lines.append(margins(acc, ours, baselines + [o for o in OURS if o != ours], ratios))
    lines.append(auto_choices(cells, ratios, auto_present))
    lines.append(epsilon_report(by_epsilon))
    return "\n".join(lines) + "\n"


def epsilon_report(cells: list[dict]) -> str:
    """The epsilon cells: the bound, what it pruned, the retrained accuracy beside random pruning of that count."""
    if not cells:
        return ""
    out = [
        "\nEpsilon cells (Eq. 3, the largest pruned set within a norm bound), each retrained beside random "
        "pruning of the count it reached (same seed). `optimization-eps`: the bound is the norm that Eq. 4 "
        "reaches at the nominal ratio; `readme-eps0.05`: the README's `prune --epsilon 0.05` (default method):\n",
        "| cell | seed | epsilon | pruned | accuracy | random, same count | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cells, key=lambda c: (c["method"], float(c["ratio"]), int(c["seed"]))):
        if "error" in c:
            out.append(f"| {c['method']} | {c['seed']} | – | failed: `{c['error'].splitlines()[0]}` | – | – | – |")
            continue
        diff = c["test_accuracy"] - c["random_test_accuracy"]
        out.append(
            f"| {c['method']} | {c['seed']} | {c['epsilon']:.4g} | {c['n'] - c['n_kept']:,} "
            f"({c['pruned_share']:.1%}) | {c['test_accuracy']:.2f} | {c['random_test_accuracy']:.2f} | "
            f"{diff:+.2f} |"
        )
    return "\n".join(out)


def margins(acc: dict, ours: str, rivals: list[str], ratios: list[float]) -> str:
    """Our mean minus each rival's; ``*`` where the difference exceeds both methods' seed standard deviations."""
    out = [
        f"\nMargin of `{ours}` over each other method (difference of means, points; `*` = larger in size "
        "than both methods' seed-to-seed standard deviations, so a `-x.xx*` is a clear loss):\n",
        "| rival | " + " | ".join(f"{r:.0%}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for b in rivals:
        row = []
        for r in ratios:
            if (ours, r) not in acc or (b, r) not in acc:
                row.append("–")
                continue
            (ma, _, sa), (mb, _, sb) = mean_se(acc[(ours, r)]), mean_se(acc[(b, r)])
            diff = ma - mb
            clear = len(acc[(ours, r)]) > 1 and len(acc[(b, r)]) > 1 and abs(diff) > max(sa, sb)
            row.append(f"{diff:+.2f}{'*' if clear else ''}")
        if any(x != "–" for x in row):
            out.append(f"| {b} | " + " | ".join(row) + " |")
    return "\n".join(out)


def auto_choices(cells: list[dict], ratios: list[float], auto_present: bool) -> str:
    """What `auto` chose in each cell: the rule label it recorded, counted over seeds."""
    mine = [c for c in cells if c["method"] == "auto" and "error" not in c]
    out = [
        "\n`auto`'s choice per ratio (the rule it recorded in mask.h5, with the number of seeds), and how many "
        "of those cells ran the current default (every part a candidate; the cells that record their "
        "`selection_code`):\n",
        "| ratio | choice | current default |",
        "|---|---|---|",
    ]
    for r in ratios:
        at = [c for c in mine if round(float(c["ratio"]), 6) == r]
        if not at:
            out.append(f"| {r:.0%} | not run{'' if auto_present else ' (no `--method auto` in this dpcli)'} | – |")
            continue
        counts: dict = {}
        for c in at:
            counts[c.get("rule", "?")] = counts.get(c.get("rule", "?"), 0) + 1
        current = sum("selection_code" in c for c in at)
        out.append(
            f"| {r:.0%} | "
            + "; ".join(f"`{k}` ×{v}" for k, v in sorted(counts.items()))
            + f" | {current} of {len(at)} |"
        )
    return "\n".join(out)


def report(args: argparse.Namespace) -> None:
    cells_by_regime: dict[str, list[dict]] = {}
    for folder in args.results_all:
        for name in REGIMES:
            for c in read_cells(Path(folder) / f"cells-{name}.jsonl"):
                cells_by_regime.setdefault(name, {})[_key(c)] = c  # a later folder's cell replaces an earlier one
    auto_present = has_selector("auto") or any(
        c["method"] == "auto" for cs in cells_by_regime.values() for c in cs.values()
    )
    path = Path(args.docs)
    text = path.read_text()
    for name, regime in REGIMES.items():
        cells = list(cells_by_regime.get(name, {}).values())
        methods = [m for m in regime.methods if (name, m) not in NOT_APPLICABLE]  # the preset's list, in order
        ran = {c["method"] for c in cells}
        methods += [m for m in METHODS if m in ran and m not in methods]  # and any other method run in it
        body = regime_report(regime, cells, methods, auto_present)
        text = replace_section(text, name, body)
    # the code that ran each cell is in its record (benchmarks/results/grid); the page names the command only
    stamp = (
        f"<!-- grid:stamp:begin -->\nTables written by `python3 benchmarks/grid.py --report-only "
        f"--results {' '.join(str(f) for f in args.results_all)}`; the plot by `python3 benchmarks/plot_grid.py`."
        "\n\n![Retrained test accuracy against the pruned share, per regime](grid-accuracy.png)\n"
        f"<!-- grid:stamp:end -->"
    )
    text = _replace(text, "<!-- grid:stamp:begin -->", "<!-- grid:stamp:end -->", stamp)
    path.write_text(text)
    log(f"wrote {path}")


def replace_section(text: str, regime: str, body: str) -> str:
    begin, end = f"<!-- grid:{regime}:begin -->", f"<!-- grid:{regime}:end -->"
    block = f"{begin}\n<!-- generated by benchmarks/grid.py --report-only; edits here are overwritten -->\n{body}{end}"
    return _replace(text, begin, end, block)


def _replace(text: str, begin: str, end: str, block: str) -> str:
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip("\n") + "\n\n" + block + "\n"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- entry point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=["digits", "frozen-backbone"], choices=list(REGIMES))
    ap.add_argument("--tarball", default="../shared/data/cifar10-jpg.tar.gz")
    ap.add_argument("--data", help="an extracted CIFAR-10 ImageFolder (train/ and test/); skips the tarball")
    ap.add_argument("--work", default="benchmark-runs/grid", help="runs, caches and masks")
    ap.add_argument(
        "--results",
        nargs="+",
        default=None,
        help="folder(s) of the cells-<regime>.jsonl files; a run writes to the first and skips the "
        "cells finished in any; --report-only reads all (a later folder's cell replaces an "
        "earlier one's) [default: WORK/results]",
    )
    ap.add_argument("--mirror", type=Path, help="also append every new cell here (what a lent GPU machine returns)")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help="[default: the regime's list]")
    ap.add_argument("--ratios", nargs="+", type=float, help="[default: the regime's, else 0.9 0.7 0.5 0.3]")
    ap.add_argument("--seeds", nargs="+", type=int, help="[default: the regime's, 0-4]")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (on a shared CPU more than 1 oversubscribes and is many times slower)",
    )
    ap.add_argument("--budget", type=float, default=0, help="stop cleanly after this many seconds (0: none)")
    ap.add_argument("--deadline", type=float, default=0, help="stop cleanly at this Unix time (0: none)")
    ap.add_argument(
        "--no-full",
        action="store_true",
        help="skip the full-data cells (when another process of the same regime runs them)",
    )
    ap.add_argument("--tiny", action="store_true", help="toy sizes of every regime: a dry run of every code path")
    ap.add_argument("--docs", default="docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true", help="render --docs from the --results folders")
    args = ap.parse_args()
    args.results_all = args.results or [str(Path(args.work) / "results")]
    args.results = args.results_all[0]
    if args.report_only:
        report(args)
        return
    regimes = [REGIMES[r].tiny() if args.tiny else REGIMES[r] for r in args.regimes]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    where = Path(args.mirror) if args.mirror else results  # a mirrored run describes its machine beside its cells
    where.mkdir(parents=True, exist_ok=True)
    (where / "machine.json").write_text(
        json.dumps({**machine(), "argv": sys.argv[1:], "tiny": args.tiny, "auto": has_selector("auto")}, indent=1)
    )
    run(args, regimes)


if __name__ == "__main__":
    main()
