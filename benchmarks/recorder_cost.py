"""CPU time of the dynamics recorder alone, per epoch, with and without the margin/probability records.

Run by hand (not a test)::

    python benchmarks/recorder_cost.py --n 50000 --classes 10

Feeds random logits through ``add_batch``/``end_epoch`` for ``--epochs`` epochs and writes the records
after each epoch as ``train`` does with every checkpoint; reports process CPU time, which stays
meaningful on a shared machine, where wall time does not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import h5py  # noqa: E402
import torch  # noqa: E402

from dpcli.train.dynamics import DynamicsRecorder  # noqa: E402


def run(n: int, classes: int, batch: int, epochs: int, extras: bool) -> tuple[float, float]:
    """(CPU seconds per epoch for add_batch + end_epoch, CPU seconds per checkpoint write, averaged)."""
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.arange(s, min(s + batch, n)), torch.randn(min(batch, n - s), classes, generator=g))
        for s in range(0, n, batch)
    ]
    rec = DynamicsRecorder(n)
    rec._extras = extras  # False = only loss and correctness, as before margins and probabilities
    record = write = 0.0
    for _ in range(epochs):
        c0 = time.process_time()
        rec.begin_epoch()
        for idx, z in batches:
            y = z.argmax(1)
            rec.add_batch(idx, torch.nn.functional.cross_entropy(z, y, reduction="none"), z, y)
        rec.end_epoch()
        c1 = time.process_time()
        with tempfile.TemporaryDirectory() as d, h5py.File(os.path.join(d, "c.h5"), "w") as f:
            rec.write(f)
        record += c1 - c0
        write += time.process_time() - c1
    return record / epochs, write / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for label, extras in (("loss + correct", False), ("+ margin + probs", True)):
        rec, wr = run(args.n, args.classes, args.batch, args.epochs, extras)
        print(f"{label}: {rec:.3f} s CPU recording + {wr:.3f} s CPU writing per epoch (mean of {args.epochs})")


if __name__ == "__main__":
    main()
