"""What the per-dataset checksum costs on a large S, against the plain write and read measured in the same run.

    nice python3 benchmarks/checksum_cost.py --rows 50000 --cols 5130 --repeats 3 \
        --json benchmarks/results/checksum_cost.json

Write: S streamed by row blocks into an unfiltered contiguous dataset (what ``influence`` does), plain, and with
the CRC-32 digest fed the same blocks (:class:`dpcli.artifacts.h5.DatasetDigest`).  Read: the memory map and
its finiteness pass (what ``prune`` did before), plain, and with the digest verified over the same map
(:func:`dpcli.stages.core.load_S`).  Each repeat runs the four in turn on one file in --work; the figures are
medians and ratios to the plain pass of the same repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import h5py
import numpy as np

from dpcli.artifacts.h5 import DIGEST_ATTR, DatasetDigest, atomic_h5
from dpcli.artifacts.rows import create_rows, mapped_rows
from dpcli.select.linalg import nonfinite_rows
from dpcli.stages.core import load_S


def write(path: Path, n: int, d: int, block: np.ndarray, digest: bool) -> float:
    """Seconds to stream n rows of S into an influence artifact (fsynced by the atomic writer in both cases)."""
    t0 = time.perf_counter()
    with atomic_h5(path, "influence", {"n": n}) as f:
        dset = create_rows(f, "S", n, d)
        h = DatasetDigest(dset.dtype, dset.shape) if digest else None
        for a in range(0, n, len(block)):
            rows = block[: min(len(block), n - a)]
            dset[a : a + len(rows)] = rows
            if h is not None:
                h.update(rows)
        dset.attrs[DIGEST_ATTR] = h.hexdigest() if h is not None else "unchecked"  # seal() skips a marked S
    return time.perf_counter() - t0


def read_plain(path: Path) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        S = mapped_rows(f["S"])
        assert S is not None and nonfinite_rows(S) == 0
    return time.perf_counter() - t0


def read_checked(path: Path) -> float:
    t0 = time.perf_counter()
    load_S(path, mapped=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--cols", type=int, default=5_130)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/reliability-checksum"))
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(0).normal(size=(max(1, (8 << 20) // (4 * ns.cols)), ns.cols)).astype(np.float32)
    runs = []
    for r in range(ns.repeats):
        plain, checked = ns.work / "plain.h5", ns.work / "checked.h5"
        row = {
            "write_plain": write(plain, ns.rows, ns.cols, block, digest=False),
            "write_checked": write(checked, ns.rows, ns.cols, block, digest=True),
            "read_plain": read_plain(checked),
            "read_checked": read_checked(checked),
        }
        row["write_ratio"] = row["write_checked"] / row["write_plain"]
        row["read_ratio"] = row["read_checked"] / row["read_plain"]
        runs.append(row)
        print(json.dumps({"repeat": r, **{k: round(v, 3) for k, v in row.items()}}), flush=True)
        plain.unlink()
        checked.unlink()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    summary = {
        "rows": ns.rows,
        "cols": ns.cols,
        "gib": ns.rows * ns.cols * 4 / 2**30,
        "repeats": ns.repeats,
        "median": med,
        "runs": runs,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary["median"], indent=2))
    if ns.json:
        ns.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
