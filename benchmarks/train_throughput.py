"""Training throughput of dpcli's loop against a minimal plain PyTorch loop on the same model and data.

    python3 benchmarks/train_throughput.py --data digits --device cpu --arch convnet --steps 20
    python3 benchmarks/train_throughput.py --data imagefolder:DIR --device cuda --arch resnet18 \\
        --variants fp32,bf16,bf16+cl,bf16+cl+compile

Each timing is the best of ``--repeats`` interleaved runs.  For each variant (fp32 | bf16 autocast,
+cl = channels_last, +compile = torch.compile) it runs
``dpcli.train.loop.train`` for two epochs over a subset of ``steps * batch_size`` samples and
times the second epoch's steps (from the end of its first step to its last, with a device
synchronization at both ends: warm-up and compilation excluded), then the same number of steps
of a plain loop (``model(x[idx])``, cross-entropy, backward, SGD step) over the same samples held
on the device, same model, precision and memory format.  No augmentation in either.  Prints
images/s of both, their ratio, and the peak device memory of the dpcli run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dpcli.config import TrainConfig
from dpcli.data.sources import load_dataset
from dpcli.train.loop import _memory_format, _to_channels_last, make_model, train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variant_config(base: TrainConfig, variant: str, device: torch.device) -> TrainConfig:
    parts = set(variant.split("+"))
    unknown = parts - {"fp32", "bf16", "cl", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant part(s) {sorted(unknown)} in {variant!r}")
    return base.replace(
        fp32=("fp32" in parts) or None, channels_last="cl" in parts, compile=("compile" in parts) or None
    )


def time_dpcli(cfg: TrainConfig, ds, keep: np.ndarray, device: torch.device, out: Path) -> tuple[float, int, int]:
    """Seconds, images and peak bytes of the second epoch's steps after its first."""
    marks: dict[str, float] = {}
    first = min(cfg.batch_size, len(keep))

    def on_batch(epoch: int, seen: int, total: int) -> None:
        if epoch != 1:
            return
        if seen == first:
            _sync(device)
            marks["t0"] = time.perf_counter()
        if seen == total:
            _sync(device)
            marks["t1"] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train(
        cfg,
        ds,
        out,
        device=device,
        keep_indices=keep,
        on_batch=on_batch,
        eval_every=10**9,
        force=True,
        snapshot_epochs=(),
    )
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return marks["t1"] - marks["t0"], len(keep) - first, peak


def time_plain(cfg: TrainConfig, ds, keep: np.ndarray, device: torch.device) -> tuple[float, int]:
    """The minimal loop: same model, data resident on the device, the same steps, precision and format."""
    model = make_model(cfg, ds).to(device)
    if cfg.channels_last:
        _to_channels_last(model)
    net = torch.compile(model) if cfg.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
    # NCHW-contiguous like dpcli's batches (a bare permute would hand the model NHWC strides)
    x_all = (
        ((torch.from_numpy(ds.train.images[keep]).permute(0, 3, 1, 2).float() / 255 - mean) / std)
        .contiguous()
        .to(device)
    )
    y_all = torch.from_numpy(ds.train.labels[keep]).to(device)
    amp = device.type == "cuda" and not cfg.fp32
    bs = cfg.batch_size

    def epoch(mark: bool) -> tuple[float, int]:
        perm = torch.randperm(len(keep), device=device)
        t0, images = 0.0, 0
        for s, start in enumerate(range(0, len(keep), bs)):
            idx = perm[start : start + bs]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(_memory_format(x_all[idx], model))
            loss = F.cross_entropy(logits.float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if s == 0 and mark:
                _sync(device)
                t0 = time.perf_counter()
            elif mark:
                images += idx.numel()
        _sync(device)
        return time.perf_counter() - t0, images

    model.train()
    epoch(False)  # warm-up (and compilation)
    return epoch(True)


def checkpoint_bench(ds, n: int, epochs: int, out_dir: Path) -> list[dict]:
    """Write time of the epoch-``k`` checkpoint with per-sample rows for ``n`` samples, k = 2 and ``epochs``.

    ``append`` is this dpcli (rows appended to the side log, constant-size checkpoint);
    ``rewrite`` is the previous behaviour (every row of every epoch rewritten into the
    checkpoint), timed at the same epochs for comparison.
    """
    from dpcli.train.checkpoint import EpochRecord, save_checkpoint
    from dpcli.train.dynamics import DynamicsRecorder
    from dpcli.train.trajectory import TrajectoryRecorder

    cfg = TrainConfig(dataset=ds.name, arch="convnet", width=32, depth=2, epochs=epochs + 1, augment=False)
    model = make_model(cfg, ds)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    traj, dyn = TrajectoryRecorder(cfg.batch_size, 0.9, 0.0), DynamicsRecorder(n, (0,))
    rng = np.random.default_rng(0)
    history, rows = [], []
    for k in range(epochs):
        traj.begin_epoch(k, model, opt, 0.1)
        order = torch.from_numpy(rng.permutation(n))
        traj.add_batch(order)
        dyn.begin_epoch()
        dyn.add_batch(order, torch.from_numpy(rng.random(n, dtype=np.float32)), torch.from_numpy(rng.random(n) < 0.5))
        dyn.end_epoch()
        history.append(EpochRecord(k + 1, 1.0, 50.0, 1.0, 50.0, 1.0, 10, 0.1))
        for mode in ("append", "rewrite"):
            if mode == "rewrite" and k + 1 not in (2, epochs):
                continue  # the old way's cost at epoch k does not depend on earlier writes
            t0 = time.perf_counter()
            save_checkpoint(
                out_dir / f"{mode}.h5",
                model,
                opt,
                sched,
                cfg,
                ds,
                history,
                complete=False,
                keep_indices=None,
                lineage=None,
                trajectory=traj,
                dynamics=dyn,
                consolidate=mode == "rewrite",
            )
            if k + 1 in (2, epochs):
                rows.append(
                    {
                        "mode": mode,
                        "epoch": k + 1,
                        "n": n,
                        "seconds": time.perf_counter() - t0,
                        "checkpoint_bytes": (out_dir / f"{mode}.h5").stat().st_size,
                    }
                )
    for r in rows:
        print(
            f"CHECKPOINT {r['mode']:<8} epoch {r['epoch']:4d}  n={r['n']}  write {r['seconds'] * 1e3:8.1f} ms  "
            f"checkpoint.h5 {r['checkpoint_bytes'] / 2**20:7.2f} MiB",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="Steps per timed epoch.")
    ap.add_argument("--variants", default="bf16" if torch.cuda.is_available() else "fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is).")
    ap.add_argument("--repeats", type=int, default=1, help="Interleaved repetitions; the best of each is reported.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--checkpoint-bench",
        type=int,
        metavar="EPOCHS",
        default=0,
        help="Instead: checkpoint write time at epoch 2 vs EPOCHS, --checkpoint-n samples.",
    )
    ap.add_argument("--checkpoint-n", type=int, default=50_000)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = load_dataset(args.data)
    if args.checkpoint_bench:
        with tempfile.TemporaryDirectory() as tmp:
            rows = checkpoint_bench(ds, args.checkpoint_n, args.checkpoint_bench, Path(tmp))
        if args.json:
            print(json.dumps(rows))
        return
    n = min(len(ds.train.labels), args.steps * args.batch_size)
    keep = np.random.default_rng(0).choice(len(ds.train.labels), size=n, replace=False)
    keep.sort()
    base = TrainConfig(
        dataset=ds.name,
        arch=args.arch,
        width=args.width,
        depth=args.depth,
        epochs=2,
        lr=0.05,
        batch_size=args.batch_size,
        augment=False,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            cfg = variant_config(base, variant, device)
            best, pbest = [], []
            for _ in range(args.repeats):  # interleaved, best of R: other load on the machine only slows a run
                best.append(time_dpcli(cfg, ds, keep, device, Path(tmp) / f"{variant}.h5"))
                pbest.append(time_plain(cfg, ds, keep, device))
            sec, images, peak = min(best, key=lambda r: r[0])
            psec, pimages = min(pbest, key=lambda r: r[0])
            row = {
                "variant": variant,
                "device": str(device),
                "arch": args.arch,
                "batch_size": args.batch_size,
                "images": images,
                "dpcli_images_per_s": images / sec,
                "plain_images_per_s": pimages / psec,
                "ratio": (images / sec) / (pimages / psec),
                "peak_gpu_mib": peak / 2**20,
            }
            rows.append(row)
            print(
                f"THROUGHPUT {variant:<18} dpcli {row['dpcli_images_per_s']:9.0f} img/s   plain "
                f"{row['plain_images_per_s']:9.0f} img/s   ratio {row['ratio']:.3f}   "
                f"peak {row['peak_gpu_mib']:.0f} MiB",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
