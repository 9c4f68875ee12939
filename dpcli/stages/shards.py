"""The `influence` command's scale options: --shard i/k and --merge, over :mod:`dpcli.stages`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from dpcli import console
from dpcli.artifacts.h5 import get_attr, open_artifact
from dpcli.config import InfluenceConfig
from dpcli.errors import DpcliError
from dpcli.influence.sketch import merge_shards, parse_shard
from dpcli.stages import core as stages
from dpcli.stages.outputs import check_distinct
from dpcli.train.checkpoint import load_checkpoint


def run(
    checkpoint: Path,
    parts: list[Path],
    *,
    merge: bool,
    shard: str | None,
    icfg: InfluenceConfig,
    out: Path | None,
    device_fn: Callable[[], Any],
    data_root: Path | None,
) -> dict[str, Any]:
    """Run one shard or merge parts; returns the JSON summary (and prints the human line)."""
    if merge and shard is not None:
        raise DpcliError("give either --shard (compute one part) or --merge (join parts), not both")
    ck = load_checkpoint(checkpoint, weights=False)  # fail early on a wrong file
    check_distinct(
        {"--out": out},
        {"the checkpoint": Path(checkpoint), **{f"the shard {p}": Path(p) for p in (parts if merge else [])}},
    )
    if merge:
        if out is None:
            raise DpcliError("--merge needs --out for the merged influence.h5")
        if not parts:
            raise DpcliError("--merge needs the shard files: dpcli influence CKPT --merge PART ... --out FILE")
        with console.progress_bar("merge shards") as update:
            merge_shards(parts, out, checkpoint_fingerprint=ck.fingerprint, progress=lambda d, t: update(d, t))
        info = stages.read_influence_info(out)
        console.info(
            f"influence: {info.path}  S merged from {len(parts)} shards, {info.n} rows, fingerprint {info.fingerprint}"
        )
        return {
            "command": "influence",
            "influence": str(info.path),
            "n": info.n,
            "d": info.d,
            "method": info.method,
            "damping": info.damping,
            "seconds": info.seconds,
            "checkpoint": info.checkpoint,
            "fingerprint": info.fingerprint,
            "merged": [str(p) for p in parts],
        }
    if parts:
        raise DpcliError(f"unexpected extra arguments {' '.join(map(str, parts))} (only --merge takes several files)")
    spec = parse_shard(shard)
    assert spec is not None
    if out is None:
        raise DpcliError("--shard needs --out for the part file (e.g. --out part-0.h5)")
    with console.progress_bar(f"influence ({icfg.estimator}) shard {spec[0]}/{spec[1]}") as update:
        info = stages.compute_influence(
            checkpoint,
            out,
            icfg,
            device=device_fn(),
            data_root=data_root,
            progress=lambda done, total: update(done, total),
            shard=spec,
        )
    with open_artifact(out, "influence") as f:
        start, stop = int(get_attr(f, "row_start")), int(get_attr(f, "row_stop"))
        part_hash = get_attr(f, "shard_fingerprint")
    console.info(
        f"influence shard {spec[0]}/{spec[1]}: {out}  rows [{start}, {stop}) of {info.n} "
        f"({info.method}, {info.seconds:.1f}s); merge all parts with --merge"
    )
    return {
        "command": "influence",
        "influence": str(out),
        "n": info.n,
        "d": info.d,
        "method": info.method,
        "damping": info.damping,
        "seconds": info.seconds,
        "checkpoint": info.checkpoint,
        "shard": spec[0],
        "shards": spec[1],
        "row_start": start,
        "row_stop": stop,
        "shard_fingerprint": part_hash,
    }
