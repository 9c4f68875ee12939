"""train -> influence -> prune -> retrain on an image folder larger than memory, with the peak RSS.

Each stage runs in its own process (as the CLI runs them) under ``/usr/bin/time -v``, and the
process tree's summed PSS (proportional set size) (DataLoader workers included) is sampled.  The stages are those of
``dpcli prune --prune-ratio 0.3 imagefolder:FOLDER --image-size 64 --arch convnet --epochs 1``
followed by ``dpcli retrain``; the dataset streams from the on-disk cache because its decoded size
exceeds ``$DPCLI_MEMORY_BUDGET``.  ``--sketch K`` stores the JL sketch S R instead of S, for an S that
would not fit the limit; ``--time-budget`` is the prune's.

``--memory-limit 1G`` runs every stage inside a memory cgroup of that size (root or a delegated
cgroup needed): the memory *available* to the process tree is then really that small, page cache
included.  The ``in-memory`` stage loads the same split with streaming off under the same limit;
it is expected to be killed (it proves that the data do not fit), and its exit status is recorded.
The ``cli`` stage runs the user's one command, ``dpcli prune ... --json``, in one process with its own run
root under ``WORK/cli-runs`` (train, influence and prune, nothing reused from the other stages).

    python3 benchmarks/pipeline_rss.py /tmp/folder --work /tmp/work --image-size 64
    python3 benchmarks/pipeline_rss.py /tmp/inet --work /tmp/w --memory-limit 1G --stages build,in-memory,train
    DPCLI_SOLVE_BUDGET=320M python3 benchmarks/pipeline_rss.py /tmp/inet --work /tmp/w --memory-limit 1G --stages cli
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import MemoryCgroup, run_measured  # noqa: E402

STAGES = ("build", "in-memory", "train", "influence", "prune", "retrain", "cli")
DEFAULT_STAGES = "build,train,influence,prune,retrain"


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(text.rstrip("KMG")) * units[text[-1] if text[-1] in "KMG" else ""])


def _config(spec: str, size: int, width: int, depth: int):
    from dpcli.config import TrainConfig

    return TrainConfig(
        dataset=spec, arch="convnet", width=width, depth=depth, epochs=1, batch_size=256, lr=0.05, image_size=size
    ).validate()


def stage(
    name: str,
    folder: Path,
    work: Path,
    size: int,
    device: str,
    width: int,
    depth: int,
    sketch: int | None = None,
    time_budget: float | None = None,
) -> dict:
    import torch

    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.data.sources import load_dataset
    from dpcli.stages import core, masks
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.loop import train

    dev = torch.device(device)
    root = work / "data"
    spec = f"imagefolder:{folder}"
    if name == "build":
        ds = load_dataset(spec, root, image_size=size)
        return {
            "n_train": len(ds.train),
            "n_test": len(ds.test),
            "streamed": ds.train.streamed,
            "decoded_train_gb": ds.train.images.nbytes / 1e9,
            "decoded_test_gb": ds.test.images.nbytes / 1e9,
            "skipped": len(ds.skipped),
        }
    if name == "in-memory":  # the same split with streaming off: must not fit under --memory-limit
        ds = load_dataset(spec, root, image_size=size, stream=False)
        return {"in_memory_gb": ds.train.images.nbytes / 1e9}
    if name == "train":
        ds = load_dataset(spec, root, image_size=size)
        ck = train(_config(ds.name, size, width, depth), ds, work / "ck.h5", device=dev)
        return {
            "test_acc": ck.final.test_acc,
            "train_seconds": ck.seconds,
            "streamed": ds.train.streamed,
            "n": len(ds.train),
        }
    if name == "influence":
        cfg = InfluenceConfig(sketch_k=sketch).validate()
        info = core.compute_influence(work / "ck.h5", work / "S.h5", cfg, device=dev, data_root=root)
        return {"n": info.n, "d": info.d, "sketch_k": sketch}
    if name == "prune":
        mask = masks.prune(
            work / "S.h5", work / "mask.h5", PruneConfig(ratio=0.3, time_budget=time_budget), device=dev, data_root=root
        )
        return {"n_pruned": mask.n_pruned, "n_kept": mask.n_kept}
    mask = masks.read_mask(work / "mask.h5")
    base = load_checkpoint(work / "ck.h5", weights=False).config
    ds = load_dataset(base.dataset, root, image_size=base.image_size)
    res = masks.retrain(ds, mask, work / "retrain.h5", base=base, overrides={}, device=dev)
    return {"test_acc": res.metrics["test_accuracy"], "n_kept": res.metrics["n_kept"]}


def _cli(folder: Path, args, cgroup) -> dict:
    """``dpcli prune --prune-ratio 0.3 imagefolder:FOLDER ...`` as a user runs it: one process, one command."""
    cmd = (
        [
            sys.executable,
            "-m",
            "dpcli",
            "prune",
            "--prune-ratio",
            "0.3",
            f"imagefolder:{folder}",
            "--image-size",
            str(args.image_size),
            "--arch",
            "convnet",
            "--width",
            str(args.width),
            "--depth",
            str(args.depth),
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--lr",
            "0.05",
            "--device",
            args.device,
            "--data-root",
            str(args.work / "data"),
            "--run-root",
            str(args.work / "cli-runs"),
            "--json",
        ]
        + (["--sketch", str(args.sketch)] if args.sketch else [])
        + (["--time-budget", str(args.time_budget)] if args.time_budget else [])
    )
    m = run_measured(cmd, log=args.work / "cli.log", cgroup=cgroup, check=False)
    out = m.pop("output")
    summary: dict = {}
    decoder, pos = json.JSONDecoder(), -1
    while (pos := out.find("{", pos + 1)) >= 0:  # the --json summary, among stderr's lines
        if pos and out[pos - 1] != "\n":
            continue
        try:
            doc = decoder.raw_decode(out, pos)[0]
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("command") == "prune":
            summary = doc
    keep = ("n", "n_pruned", "n_kept", "norm", "test_accuracy", "method")
    return {
        "command": " ".join(cmd[2:]),
        **{k: summary[k] for k in keep if k in summary},
        "auto": (summary.get("auto") or {}).get("line"),
        **m,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds the prune's solver may spend")
    ap.add_argument(
        "--sketch",
        type=int,
        default=None,
        help="store the JL sketch S R (n x K) instead of S: n x d would not fit the memory limit",
    )
    ap.add_argument("--stages", default=DEFAULT_STAGES, help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--memory-limit", default=None, help="run every stage in a memory cgroup of this size (e.g. 1G)")
    ap.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folder = args.folder.resolve()
    if args.stage:
        res = stage(
            args.stage,
            folder,
            args.work,
            args.image_size,
            args.device,
            args.width,
            args.depth,
            args.sketch,
            args.time_budget,
        )
        print("RESULT " + json.dumps(res), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.stages.split(",") if n]
    cgroup = MemoryCgroup(_size(args.memory_limit)) if args.memory_limit else None
    results: dict = {
        "folder": str(folder),
        "image_size": args.image_size,
        "cpus": os.cpu_count(),
        "device": args.device,
        "convnet": {"width": args.width, "depth": args.depth},
        "sketch_k": args.sketch,
        "time_budget": args.time_budget,
        "memory_limit_mb": cgroup.limit / 2**20 if cgroup else None,
        "memory_budget": os.environ.get("DPCLI_MEMORY_BUDGET", "1G (default)"),
        "loader_workers": os.environ.get("DPCLI_LOADER_WORKERS", "min(4, cpus)"),
        "jpeg_decode": os.environ.get("DPCLI_JPEG_DECODE", "auto"),
    }
    try:
        for name in names:
            if name == "cli":
                results[name] = _cli(folder, args, cgroup)
                print(name, json.dumps(results[name]), flush=True)
                continue
            cmd = (
                [
                    sys.executable,
                    __file__,
                    str(folder),
                    "--work",
                    str(args.work),
                    "--image-size",
                    str(args.image_size),
                    "--device",
                    args.device,
                    "--width",
                    str(args.width),
                    "--depth",
                    str(args.depth),
                    "--stage",
                    name,
                ]
                + (["--sketch", str(args.sketch)] if args.sketch else [])
                + (["--time-budget", str(args.time_budget)] if args.time_budget else [])
            )
            m = run_measured(cmd, log=args.work / f"{name}.log", cgroup=cgroup, check=name != "in-memory")
            lines = [ln for ln in m.pop("output").splitlines() if ln.startswith("RESULT ")]
            results[name] = {
                **(json.loads(lines[-1][7:]) if lines else {}),
                **{k: v for k, v in m.items() if k != "output"},
            }
            print(name, json.dumps(results[name]), flush=True)
    finally:
        if cgroup is not None:
            cgroup.close()
    done = [n for n in names if n != "in-memory"]
    results["peak_max_rss_mb"] = max(results[s]["max_rss_mb"] for s in done)
    results["peak_tree_pss_mb"] = max(results[s]["tree_pss_mb"] for s in done)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
