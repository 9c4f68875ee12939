"""What ``--method auto`` costs beside one ``optimization`` solve of the same S, measured in one process.

Run by hand::

    nice python3 benchmarks/auto_cost.py                        # 3,000 x 512 features, 10 classes: S 3,000 x 5,130
    nice python3 benchmarks/auto_cost.py --n 10000 --dim 256 --repeats 3 --json out.json

S is the exact last-layer influence of an L2 softmax head on Gaussian-class features with a share of labels
redrawn at random (``dpcli.api.influence``); then ``dpcli.api.prune`` runs ``method="optimization"`` and
``method="auto"`` alternately (so both see the same machine load), ``--repeats`` times.  Reported: median wall
seconds of each, the ratio auto / optimization (the target is at most 1.5), auto's validation seconds (features,
difficulty, the rungs' solves and head fits) and its line.  With ``--time-budget B`` both run with that budget:
auto's whole prune should then take about B.  ``--choices INFLUENCE_H5`` runs only auto's validation on that
S at ``--shares`` (its choices and their cost; with PYTHONPATH at another tree, that tree's)::

    nice python3 benchmarks/auto_cost.py --choices RUN/influence.h5 --json now.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def choices(influence: str, shares: list[float], seed: int = 0) -> dict:
    """``auto``'s validation alone on a real S (its checkpoint's features and dynamics, as ``prune`` reads them) at
    each prune share: the choice, the tie, every candidate's held-out accuracy, wall and CPU seconds.  Run with
    PYTHONPATH at another tree (``git archive BASE dpcli``) to compare choices before and after a change."""
    from pathlib import Path

    import torch

    from dpcli.config import PruneConfig
    from dpcli.select.base import Context
    from dpcli.select.methods import auto
    from dpcli.select.signals import difficulty
    from dpcli.stages.core import load_S, read_influence_info
    from dpcli.stages.masks import _CheckpointContext, _influence_labels

    info = read_influence_info(Path(influence))
    S = np.asarray(load_S(Path(influence), mapped=True))
    y = _influence_labels(Path(influence))
    ck = _CheckpointContext(
        S=S, labels=y, checkpoint=Path(info.checkpoint), device=torch.device("cpu"), influence=Path(influence)
    )
    features, dyn = ck.features(), ck.dynamics()
    probs = auto.true_class_probs_of(ck)
    out = {}
    for share in shares:
        t, c = time.perf_counter(), time.process_time()
        v = auto.validate(
            Context(S=S, labels=y),
            PruneConfig(ratio=share, seed=seed).validate(),
            int(round(share * len(y))),
            features,
            difficulty(dyn),
            probs=probs,
        )
        out[share] = {
            "chosen": v.chosen.name,
            "reason": v.reason,
            "wall": time.perf_counter() - t,
            "cpu": time.process_time() - c,
            "acc": {s.name: s.accuracy for s in v.scores},
            "tied": [s.name for s in v.scores if s.tied],
        }
        print(
            share,
            out[share]["chosen"],
            f"{out[share]['wall']:.1f} s ({out[share]['cpu']:.1f} CPU s)",
            out[share]["tied"],
            flush=True,
        )
    return out


def profile_parts() -> dict[str, float]:
    """Wrap auto's candidates' runs, head fits and difficulty fit with CPU timers; returns their running sums."""
    from collections import defaultdict

    from dpcli.select.methods import auto

    sums: dict[str, float] = defaultdict(float)

    def timed(key, fn):
        def run(*args, **kw):
            c = time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                sums[key(args) if callable(key) else key] += time.process_time() - c

        return run

    auto.run_rung = timed(lambda args: f"candidate {args[0].name} on {args[2].n} rows", auto.run_rung)
    auto._score = timed("head fits", auto._score)
    auto._difficulty = timed("difficulty", auto._difficulty)
    return sums


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--noise", type=float, default=0.2, help="share of labels redrawn at random")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="CPU seconds of auto's parts (candidates, head fits)")
    ap.add_argument("--choices", metavar="INFLUENCE_H5", help="only auto's validation on this S, at --shares")
    ap.add_argument("--shares", default="0.3,0.4,0.5,0.7,0.9")
    a = ap.parse_args()
    if a.choices:
        report = choices(a.choices, [float(v) for v in a.shares.split(",")])
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(report, fh, indent=2)
        return
    import dataclasses

    import torch

    import dpcli.api as dp
    from dpcli.config import PruneConfig
    from dpcli.select.base import Context, prune_count, select
    from dpcli.select.certificate import certify

    rng = np.random.default_rng(0)
    y = rng.integers(0, a.classes, a.n)
    x = ((rng.normal(size=(a.classes, a.dim)) * 0.3)[y] + rng.normal(size=(a.n, a.dim))).astype(np.float32)
    flip = rng.random(a.n) < a.noise
    y[flip] = rng.integers(0, a.classes, int(flip.sum()))
    t = time.perf_counter()
    S, _ = dp.influence(x, y)
    print(f"influence: S {S.shape[0]} x {S.shape[1]} in {time.perf_counter() - t:.1f}s", flush=True)
    parts = profile_parts() if a.profile else {}
    base = PruneConfig(ratio=a.ratio, time_budget=a.time_budget).validate()
    times: dict[str, list[float]] = {"optimization": [], "auto": []}
    cpu: dict[str, list[float]] = {"optimization": [], "auto": []}  # the process's CPU seconds, all threads
    validation, line, norms = [], "", {}
    for _ in range(a.repeats):
        for method in ("optimization", "auto"):
            cfg = dataclasses.replace(base, method=method)
            ctx = Context(S=S, labels=y, device=torch.device("cpu")).supply(features=x)
            t, c = time.perf_counter(), time.process_time()
            pruned, _ = select(cfg, ctx)
            times[method].append(time.perf_counter() - t)
            cpu[method].append(time.process_time() - c)
            norms[method] = certify(S, pruned).norm
            if method == "auto":
                validation.append(ctx.record["auto"]["signals"].get("validation_seconds", 0.0))
                line = ctx.record["auto"]["line"]
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "n": a.n,
        "dim": a.dim,
        "classes": a.classes,
        "d": S.shape[1],
        "ratio": a.ratio,
        "prune_count": prune_count(base, a.n),
        "time_budget": a.time_budget,
        "times": times,
        "cpu": cpu,
        "optimization_cpu_s": statistics.median(cpu["optimization"]),
        "auto_cpu_s": statistics.median(cpu["auto"]),
        "optimization_s": med["optimization"],
        "auto_s": med["auto"],
        "auto_over_optimization": med["auto"] / med["optimization"],
        "validation_s": statistics.median(validation),
        "validation_over_optimization": statistics.median(validation) / med["optimization"],
        "norms": norms,
        "auto_line": line,
        "load_average_after": os.getloadavg(),
        "auto_parts_cpu_s_all_repeats": dict(parts),
    }
    for name, sec in parts.items():
        print(f"  {name}: {sec / a.repeats:.2f} CPU s per auto run", flush=True)
    print(f"CPU s: optimization {report['optimization_cpu_s']:.1f}, auto {report['auto_cpu_s']:.1f}")
    print(
        f"optimization {med['optimization']:.1f} s (norm {norms['optimization']:.4g}); auto {med['auto']:.1f} s "
        f"(norm {norms['auto']:.4g}), of which validation {report['validation_s']:.1f} s; "
        f"auto / optimization {report['auto_over_optimization']:.2f}, validation / optimization "
        f"{report['validation_over_optimization']:.2f}\n{line}",
        flush=True,
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
