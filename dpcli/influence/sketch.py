"""Influence at scale: a Johnson-Lindenstrauss sketch of S, row shards, and their merge.

* **Sketch** (``--sketch k``): store ``S R`` (n x k, float32) with ``R`` a ``d x k``
  Gaussian matrix, entries N(0, 1/k), generated deterministically from the seed in
  row blocks of ``R`` (block ``j`` from ``SeedSequence([seed, j])``), so no more than
  one block is needed at a time when ``d k`` is large.  For any fixed vector ``v``
  (e.g. a fixed subset's ``sum S_i``), ``P(| ||v R|| / ||v|| - 1 | > t) <= 2 exp(-k t^2 / 8)``.
* **Shards** (``--shard i/k``): rows ``[floor(i n / k), floor((i+1) n / k))`` of S,
  with the Hessian from all the data.
* **Merge** (``--merge``): checks the parts and streams their rows in order into a
  normal influence artifact whose ``fingerprint`` equals a single run's.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np

from dpcli.artifacts.h5 import StreamHash, atomic_h5, get_attr, open_artifact
from dpcli.artifacts.rows import create_rows, row_chunks
from dpcli.errors import DpcliError

# bytes of R kept in memory between chunks; above it, blocks are regenerated for every chunk
_R_CACHE_BYTES = 256 << 20
_R_BLOCK_ROWS = 4096
SHARD_ATTRS = ("shard", "shards", "row_start", "row_stop", "n_total", "shard_fingerprint")


def jl_failure_bound(k: int, t: float) -> float:
    """Gaussian JL bound: P(|‖vR‖/‖v‖ − 1| > t) ≤ 2 exp(−k t² / 8) for one fixed v (0 < t < 1)."""
    return min(1.0, 2.0 * math.exp(-k * t * t / 8.0))


class Sketch:
    """Right-multiplication by a seeded d x k Gaussian matrix with N(0, 1/k) entries."""

    def __init__(self, d: int, k: int, seed: int, block_rows: int = _R_BLOCK_ROWS) -> None:
        if int(k) < 1:
            raise DpcliError(f"--sketch must be a positive integer, got {k!r}")
        self.d, self.k, self.seed, self.block_rows = int(d), int(k), int(seed), int(block_rows)
        self._cache: list[np.ndarray] | None = [] if self.d * self.k * 8 <= _R_CACHE_BYTES else None

    def block(self, j: int) -> np.ndarray:
        """Rows ``[j*block_rows, (j+1)*block_rows)`` of R, float64."""
        if self._cache is not None and j < len(self._cache):
            return self._cache[j]
        rows = min(self.block_rows, self.d - j * self.block_rows)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, j])))
        blk = rng.standard_normal((rows, self.k)) / math.sqrt(self.k)
        if self._cache is not None and j == len(self._cache):
            self._cache.append(blk)
        return blk

    def matrix(self) -> np.ndarray:
        """All of R (for tests and small d)."""
        return np.concatenate([self.block(j) for j in range(self.n_blocks)], axis=0)

    @property
    def n_blocks(self) -> int:
        return -(-self.d // self.block_rows)

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """``rows @ R`` in float64, returned as float32."""
        if rows.shape[1] != self.d:
            raise DpcliError(f"sketch expects rows with {self.d} columns, got {rows.shape[1]}")
        out = np.zeros((rows.shape[0], self.k), dtype=np.float64)
        for j in range(self.n_blocks):
            lo = j * self.block_rows
            out += rows[:, lo : lo + self.block_rows].astype(np.float64) @ self.block(j)
        return out.astype(np.float32)


# ----------------------------------------------------------------------------- shards
def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/k"`` with ``0 <= i < k`` -> ``(i, k)``."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m:
        raise DpcliError(f"--shard must look like i/k (e.g. 0/4), got {spec!r}")
    i, k = int(m.group(1)), int(m.group(2))
    if k < 1:
        raise DpcliError(f"--shard {spec}: the number of shards must be at least 1")
    if not 0 <= i < k:
        raise DpcliError(f"--shard {spec}: the shard index must lie in 0..{k - 1}")
    return i, k


def shard_rows(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows ``[floor(i n / k), floor((i+1) n / k))`` of shard ``i/k`` (all rows without a shard)."""
    if shard is None:
        return 0, n
    i, k = shard
    if k > n:
        raise DpcliError(f"--shard {i}/{k}: more shards than the {n} training samples")
    return (i * n) // k, ((i + 1) * n) // k


def output_attrs(cfg, n: int, shard: tuple[int, int] | None) -> dict:
    """Attributes describing the sketch and the shard of an influence artifact."""
    attrs: dict = {}
    if getattr(cfg, "sketch_k", None):
        attrs.update(
            sketch_k=int(cfg.sketch_k),
            sketch_seed=int(cfg.sketch_seed),
            sketch="S @ R, R d x k with N(0, 1/k) entries; norms of sums within (1 +- t) w.p. "
            ">= 1 - 2 exp(-k t^2 / 8) per fixed subset",
        )
    if shard is not None:
        start, stop = shard_rows(n, shard)
        attrs.update(shard=shard[0], shards=shard[1], row_start=start, row_stop=stop, n_total=n)
    return attrs


AUTO_SKETCH_MIN, AUTO_SKETCH_MAX = 256, 4096


def auto_sketch_k(n: int, d: int) -> int | None:
    """The sketch width for a dense S (n x d float32) that would pass ``$DPCLI_SOLVE_BUDGET``, else None.

    ``prune`` holds S in memory, so a dataset-mode run whose S would not fit stores S R instead: the
    widest K (a multiple of 64, 256..4096) whose n x K float32 takes at most half the budget, leaving the
    rest for the covered solve's columns.  ImageNet-1k with a ResNet-50 head (d = 2,049,000) would
    otherwise write a 10 TB S.
    """
    from dpcli.env import solve_budget

    budget = solve_budget()
    if n * d * 4 <= budget:
        return None
    k = (budget // 2) // (4 * max(n, 1)) // 64 * 64
    k = max(AUTO_SKETCH_MIN, min(AUTO_SKETCH_MAX, k))
    return k if k < d else None


def make_sketch(cfg, d: int) -> Sketch | None:
    k = getattr(cfg, "sketch_k", None)
    return Sketch(d, k, getattr(cfg, "sketch_seed", 0)) if k else None


# ----------------------------------------------------------------------------- merge
# attributes that must agree across parts (besides S itself)
_SAME = (
    "method",
    "damping",
    "n",
    "d",
    "num_classes",
    "feature_dim",
    "checkpoint_fingerprint",
    "dataset",
    "dataset_fingerprint",
    "config",
    "shards",
    "n_total",
    "sketch_k",
    "sketch_seed",
)


def _read_part(path: Path) -> dict:
    with open_artifact(path, "influence") as f:
        if get_attr(f, "shards") is None:
            raise DpcliError(f"{path}: is not a shard (no shard attributes); --merge takes files written with --shard")
        meta = {key: get_attr(f, key) for key in set(_SAME) | set(SHARD_ATTRS) | {"seconds"}}
        if "S" not in f or f["S"].ndim != 2:
            raise DpcliError(f"{path}: shard has no 2-D dataset 'S'")
        meta["rows"] = f["S"].shape[0]
        meta["width"] = f["S"].shape[1]
    meta["path"] = Path(path)
    if meta["rows"] != meta["row_stop"] - meta["row_start"]:
        raise DpcliError(
            f"{path}: damaged shard ({meta['rows']} rows for range [{meta['row_start']}, {meta['row_stop']}))"
        )
    return meta


def merge_shards(parts: list[Path], out: Path, *, checkpoint_fingerprint: str | None = None, progress=None) -> Path:
    """Check the parts and stream their rows, in row order, into one influence artifact."""
    if not parts:
        raise DpcliError("--merge needs the shard files to merge")
    t0 = time.perf_counter()
    metas = [_read_part(Path(p)) for p in parts]
    first = metas[0]
    if checkpoint_fingerprint is not None and first["checkpoint_fingerprint"] != checkpoint_fingerprint:
        raise DpcliError(f"{first['path']}: shard was computed from another checkpoint than the one given")
    for m in metas[1:]:
        for key in _SAME:
            if m[key] != first[key]:
                what = "checkpoint" if key == "checkpoint_fingerprint" else f"configuration ({key})"
                raise DpcliError(
                    f"{m['path']} and {first['path']}: shards come from a different {what}; merge only parts of one run"
                )
    n = int(first["n_total"])
    metas.sort(key=lambda m: (m["row_start"], m["row_stop"]))
    pos = 0
    for m in metas:
        if m["row_start"] > pos:
            raise DpcliError(
                f"rows [{pos}, {m['row_start']}) are missing: no shard covers them (expected {first['shards']} parts)"
            )
        if m["row_start"] < pos:
            raise DpcliError(
                f"{m['path']}: overlaps another shard at rows [{m['row_start']}, {min(pos, m['row_stop'])})"
            )
        pos = m["row_stop"]
    if pos != n:
        raise DpcliError(f"rows [{pos}, {n}) are missing: no shard covers them (expected {first['shards']} parts)")
    width = int(first["width"])
    with open_artifact(first["path"], "influence") as src:
        attrs = {
            key: get_attr(src, key)
            for key in src.attrs
            if not key.endswith(".json")
            and key
            not in ("dpcli_kind", "dpcli_schema", "dpcli_version", "created", "fingerprint", "seconds", *SHARD_ATTRS)
        }
        aux = {name: src[name][()] for name in src if name != "S"}
    attrs["merged_from"] = [str(m["path"].resolve()) for m in metas]
    hasher = StreamHash()
    with atomic_h5(out, "influence", attrs) as f:
        dset = create_rows(f, "S", n, width)
        step = row_chunks(n, width)[0]
        for m in metas:
            part_hash = StreamHash()
            with open_artifact(m["path"], "influence") as src:
                S = src["S"]
                for lo in range(0, m["rows"], step):
                    rows = S[lo : lo + step]
                    part_hash.update(rows)
                    hasher.update(rows)
                    dset[m["row_start"] + lo : m["row_start"] + lo + len(rows)] = rows
            if part_hash.hexdigest() != m["shard_fingerprint"]:
                raise DpcliError(f"{m['path']}: rows do not match the shard's recorded hash (damaged file)")
            if progress:
                progress(m["row_stop"], n)
        for name, data in aux.items():
            f.create_dataset(name, data=data)
        f.attrs["fingerprint"] = hasher.hexdigest()
        f.attrs["seconds"] = float(sum(float(m["seconds"] or 0.0) for m in metas) + time.perf_counter() - t0)
    return Path(out)
