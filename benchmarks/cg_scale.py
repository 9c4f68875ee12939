"""CG influence at ResNet-50 / CIFAR-100 scale on CPU: n samples, D features, C classes (d = C (D+1)).

Synthetic but trained-like last layer: non-negative (post-ReLU) features, a layer fitted so most
training samples are classified confidently.  Solves a few RHS chunks and extrapolates to all n.

    python benchmarks/cg_scale.py --n 5000 --dim 2048 --classes 100 --rhs 8 --chunks 2
"""

from __future__ import annotations

import argparse
import time

import torch

from dpcli.influence.cg import CGStats, cg_influence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--rhs", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--damping", type=float, default=5e-4)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--preconditioner", default="kronecker")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    n, D, C = a.n, a.dim, a.classes
    labels = torch.randint(0, C, (n,), generator=gen)
    centers = torch.rand(C, D, generator=gen, dtype=torch.float64)
    feats = torch.relu(centers[labels] + 0.5 * torch.randn(n, D, generator=gen, dtype=torch.float64)).float()
    # a least-squares fit of one-hot targets gives a trained-like layer; scaled to confident softmax
    phi = torch.cat([feats.double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    onehot = torch.nn.functional.one_hot(labels, C).double()
    sol = torch.linalg.solve(phi.T @ phi + 1.0 * torch.eye(D + 1, dtype=torch.float64), phi.T @ onehot)
    W = (8.0 * sol[:D].T).float().contiguous()
    b = (8.0 * sol[D]).float()
    acc = float(((feats.double() @ W.double().T + b.double()).argmax(1) == labels).double().mean())
    rows = a.rhs * a.chunks
    stats = CGStats()
    t0 = time.perf_counter()
    cg_influence(
        feats,
        labels,
        W,
        b,
        a.damping,
        tol=a.tol,
        chunk_size=a.rhs,
        rows=(0, rows),
        sink=lambda s, r: None,
        stats=stats,
        preconditioner=a.preconditioner,
    )
    total = time.perf_counter() - t0
    solve = total - stats.seconds_setup
    d = C * (D + 1)
    print(
        f"n={n} D={D} C={C} d={d} train acc {100 * acc:.1f}% damping {a.damping:g} tol {a.tol:g} "
        f"preconditioner {a.preconditioner} threads {a.threads}"
    )
    print(
        f"setup (preconditioner) {stats.seconds_setup:.1f}s; {rows} RHS in {a.chunks} chunks of {a.rhs}: "
        f"iterations {stats.iterations}, max rel residual {stats.max_relative_residual:.2e}, solve {solve:.1f}s"
    )
    per_rhs = solve / rows
    print(
        f"per RHS {per_rhs:.2f}s -> all {n} rows ~{per_rhs * n / 3600:.2f} h on this machine "
        f"(~{per_rhs * n / 3600 / 8:.2f} h with --shard i/8)"
    )


if __name__ == "__main__":
    main()
