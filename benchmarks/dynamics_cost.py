"""What recording training dynamics costs: `train` with the recorder against a no-op recorder.

Run by hand (not a test)::

    python benchmarks/dynamics_cost.py imagefolder:/tmp/bench/grid/cifar10-1000pc --data-root /tmp/bench/grid/data

Each setting runs ``--repeats`` times, alternating; the first run of the first setting includes warm-up.
Wall time and the process's CPU time are both reported: on a shared machine CPU time is the steadier one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dpcli.config import TrainConfig  # noqa: E402
from dpcli.data.sources import load_dataset  # noqa: E402
from dpcli.train import dynamics
from dpcli.train import loop as training  # noqa: E402


class NullRecorder(dynamics.DynamicsRecorder):
    def add_batch(self, *args) -> None:
        pass

    def end_epoch(self, dist=None) -> None:
        pass

    def snapshot(self, *args) -> None:
        pass

    def write(self, f) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset(args.dataset, args.data_root)
    cfg = TrainConfig(
        dataset=ds.name, arch="convnet", width=args.width, depth=3, epochs=args.epochs, lr=0.05, batch_size=128
    )
    times: dict[str, list[tuple[float, float]]] = {"recording": [], "no-op recorder": []}
    for _ in range(args.repeats):
        for name, recorder in (("recording", dynamics.DynamicsRecorder), ("no-op recorder", NullRecorder)):
            training.DynamicsRecorder = recorder
            with tempfile.TemporaryDirectory() as d:
                t0, c0 = time.perf_counter(), time.process_time()
                training.train(cfg, ds, Path(d) / "c.h5", device=torch.device("cpu"), eval_every=10**9)
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
                print(f"{name}: wall {times[name][-1][0]:.2f} s, cpu {times[name][-1][1]:.2f} s", flush=True)
    for name, values in times.items():
        print(
            f"{name}: wall "
            + ", ".join(f"{w:.2f}" for w, _ in values)
            + " s; cpu "
            + ", ".join(f"{c:.2f}" for _, c in values)
            + " s"
        )


if __name__ == "__main__":
    main()
