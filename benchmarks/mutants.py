"""Mutation check: plant one small, realistic bug at a time and confirm the test suite notices.

Run by hand (not in CI; it runs test files once per mutant)::

    nice python3 benchmarks/mutants.py            # every mutant, then a table; exit 1 if any is missed
    python3 benchmarks/mutants.py --list          # the mutants and their test files
    python3 benchmarks/mutants.py --only resume-off --only within-bound-2x

Each mutant copies the working tree (tracked and untracked, non-ignored files) to a temporary
directory, replaces ``old`` by ``new`` in one file (refusing, loudly, unless ``old`` occurs exactly
once: the code moves, and a mutant that silently applies nowhere would be "missed" for the wrong
reason), and runs ``python3 -m pytest -x -q`` on its test files with PYTHONPATH set to the copy.
Caught = pytest exits 1 (a test failed) or 2 (collection failed); missed = it exits 0.  The same
test files are first run once unmutated (``--no-baseline`` skips this), since a failing baseline
would make every mutant look caught.  Snippets are short and distinctive so they can be re-pointed
when code moves: ``--list`` shows where each one points.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    id: str
    description: str
    path: str  # file to patch, relative to the repository root
    old: str  # exact snippet; must occur exactly once in ``path``
    new: str
    tests: tuple[str, ...]  # test files (or pytest node ids) that must catch it


MUTANTS: tuple[Mutant, ...] = (
    # ---- influence: S_i = (1/n) (H + damping I)^-1 g_i
    Mutant(
        "inv-n",
        "exact S misses the 1/n factor",
        "dpcli/influence/kernels.py",
        "        solved /= n\n",
        "",
        ("tests/influence/test_influence.py",),
    ),
    Mutant(
        "damping-sign",
        "damping subtracted from the Hessian instead of added",
        "dpcli/influence/kernels.py",
        "hessian.diagonal().add_(damping)",
        "hessian.diagonal().add_(-damping)",
        ("tests/influence/test_influence.py",),
    ),
    Mutant(
        "damping-2x",
        "a valid but wrong damping: twice the requested one",
        "dpcli/influence/kernels.py",
        "hessian.diagonal().add_(damping)",
        "hessian.diagonal().add_(2.0 * damping)",
        ("tests/influence/test_influence.py",),
    ),
    Mutant(
        "lissa-damping-sign",
        "LiSSA recursion with the damping term's sign flipped",
        "dpcli/influence/lissa.py",
        "h.mul_(1.0 - damping / scale)",
        "h.mul_(1.0 + damping / scale)",
        ("tests/influence/test_influence.py",),
    ),
    # ---- the epsilon certificate
    Mutant(
        "certify-1.5x",
        "certify accepts a norm up to 1.5 x epsilon (solver path)",
        "dpcli/select/certificate.py",
        "not norm <= float(epsilon)",
        "not norm <= 1.5 * float(epsilon)",
        ("tests/select/test_selection.py",),
    ),
    Mutant(
        "certify-1.5x-score-rule",
        "the same, seen through a `prune --method forgetting --epsilon` mask",
        "dpcli/select/certificate.py",
        "not norm <= float(epsilon)",
        "not norm <= 1.5 * float(epsilon)",
        ("tests/select/test_methods.py::test_forgetting_epsilon_mask_is_certified_and_an_overshoot_refused",),
    ),
    Mutant(
        "repair-rounding-0.5",
        "repair() treats a 50% overshoot as rounding and drops samples to hide it",
        "dpcli/select/certificate.py",
        "ROUNDING = 1e-6",
        "ROUNDING = 0.5",
        ("tests/select/test_selection.py",),
    ),
    Mutant(
        "sketch-k-dropped",
        "the certificate does not record that S was sketched",
        "dpcli/select/certificate.py",
        "sketch_k, _ISSUED)",
        "None, _ISSUED)",
        ("tests/select/test_selection.py", "tests/influence/test_influence_scale.py"),
    ),
    # ---- solvers and selectors
    Mutant(
        "swap-start-only",
        "the swap solver stops after its random start (no local search, no annealing)",
        "dpcli/select/solvers/swap.py",
        "    if eng.full or n * d <= SEARCH_ALL_STARTS:\n        for st in starts:\n            local_search(eng, st, clock)",
        "    return (~starts[0].A if complement else starts[0].A), starts[0].moves\n"
        "    if eng.full or n * d <= SEARCH_ALL_STARTS:\n        for st in starts:\n            local_search(eng, st, clock)",
        ("tests/select/test_selection.py",),
    ),
    Mutant(
        "swap-anneal-always-accepts",
        "swap's annealing chain accepts every proposal (a random walk)",
        "dpcli/select/solvers/swap.py",
        "                ok = np.flatnonzero(gain >= self.ns2 - (root + T * L[c : c + batch]) ** 2)\n",
        "                ok = np.arange(gain.size)\n",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-anneal-cycle-cut",
        "swap's annealing cycles end after a tenth of their proposals",
        "dpcli/select/solvers/swap.py",
        "    while done < proposals and not clock.expired() and st.ns2 > 0.0:",
        "    while done < proposals // 10 and not clock.expired() and st.ns2 > 0.0:",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-anneal-one-cycle",
        "swap's annealing stops after one cycle, converged or not",
        "dpcli/select/solvers/swap.py",
        "        if done == 0:\n            break\n",
        "        if True:\n            break\n",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-anneal-no-hot-try",
        "swap's annealing stops at the first cycle that gains little, untried hotter",
        "dpcli/select/solvers/swap.py",
        "            if accept == _HOT_ACCEPT0:\n",
        "            if True:\n",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-cycles-short",
        "swap's annealing cycles cool over 50 proposals per row again (the previous law)",
        "dpcli/select/solvers/swap.py",
        "CYCLE_PER_ROW = 100\n",
        "CYCLE_PER_ROW = 50\n",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-hot-uncapped",
        "swap's hotter cycle is as long as the gentle one, not capped at HOT_MAX",
        "dpcli/select/solvers/swap.py",
        "this = min(length, HOT_MAX) if accept == _HOT_ACCEPT0 else length",
        "this = length",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "swap-offset-dropped",
        "where S S^T is held, v ignores the complemented problem's offset",
        "dpcli/select/solvers/_swap_search.py",
        "self.v_off = self.rows.matvec(offset) if self.G is not None and offset.any() else np.zeros(self.n)",
        "self.v_off = np.zeros(self.n)",
        ("tests/select/test_selection.py", "tests/select/test_solver_quality.py"),
    ),
    Mutant(
        "swap-batch-conflicting",
        "a swap batch keeps every member's first claim, so two swaps may share an outsider",
        "dpcli/select/solvers/_swap_search.py",
        "    keep = first_o & first_j\n",
        "    keep = first_o\n",
        ("tests/select/test_solver_batches.py",),
    ),
    Mutant(
        "swap-batch-no-cross-terms",
        "a swap batch's gain is the sum of its swaps' gains (no ||e||^2 cross terms)",
        "dpcli/select/solvers/_swap_search.py",
        "np.diagonal(M) + 2.0 * lower",
        "np.diagonal(M)",
        ("tests/select/test_solver_batches.py",),
    ),
    Mutant(
        "anneal-always-accepts",
        "the paper's annealing accepts every proposal (a random walk)",
        "dpcli/select/solvers/anneal.py",
        "ok = (dE <= 0.0) | (self.rng.random(i.size) < np.exp(-np.maximum(dE, 0.0) / temp))",
        "ok = np.ones(i.size, dtype=bool)",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "anneal-ends-early",
        "the paper's annealing schedule ends after a tenth of its proposals",
        "dpcli/select/solvers/anneal.py",
        "self.total_moves = _default_moves(self.n)",
        "self.total_moves = _default_moves(self.n) // 10",
        ("tests/select/test_solver_quality.py",),
    ),
    Mutant(
        "block-reuse-half",
        "a reused pool's Gram block leaves the new rows' columns unwritten",
        "dpcli/select/linalg.py",
        "            G[:k0, k0:] = C[:, :k0].T\n",
        "",
        ("tests/select/test_solvers.py",),
    ),
    Mutant(
        "registry-imports-package",
        "listing the solvers imports their package (numpy and all) to find them",
        "dpcli/registry.py",
        "            path = spec.submodule_search_locations if spec is not None else None\n",
        "            path = importlib.import_module(self.package).__path__\n",
        ("tests/select/test_solvers.py",),
    ),
    Mutant(
        "external-npy-copied",
        "prune of a float32 S.npy copies it into the heap instead of mapping it",
        "dpcli/data/embeddings.py",
        "S = _mapped_rows(src, path) if src.dtype == np.float32 and src.flags.c_contiguous else _copy_rows(src, path)",
        "S = _copy_rows(src, path)",
        ("tests/select/test_solvers.py",),
    ),
    Mutant(
        "api-finite-check-dense",
        "dpcli.api.prune checks S for NaN with an n x d boolean array",
        "dpcli/api.py",
        "            bad = nonfinite_rows(S)",
        "            bad = int((~np.isfinite(S)).any(axis=1).sum())",
        ("tests/select/test_solvers.py",),
    ),
    Mutant(
        "count-columns-torch",
        "on a device the covered solve's count columns lack their one-hot part",
        "dpcli/select/coverage.py",
        "    out[torch.arange(n, device=out.device), torch.as_tensor(ginv, device=out.device)] += lam\n",
        "",
        ("tests/select/test_solvers.py",),
    ),
    Mutant(
        "registry-wrong-class",
        "the selector registry returns the last registered class, not the named one",
        "dpcli/registry.py",
        "            return self._items[name]\n",
        "            return list(self._items.values())[-1]\n",
        ("tests/select/test_methods.py",),
    ),
    Mutant(
        "forgetting-direction",
        "forgetting counts wrong->correct (learning) instead of correct->wrong",
        "dpcli/select/methods/forgetting.py",
        "(prev == 1) & (c[e] == 0)",
        "(prev == 0) & (c[e] == 1)",
        ("tests/select/test_baselines.py",),
    ),
    Mutant(
        "herding-argmax",
        "herding keeps the farthest point (argmax) instead of the closest (argmin)",
        "dpcli/select/methods/herding.py",
        "cost[~free] = np.inf\n            j = int(np.argmin(cost))",
        "cost[~free] = -np.inf\n            j = int(np.argmax(cost))",
        ("tests/select/test_baselines.py",),
    ),
    # ---- stages and CLI
    Mutant(
        "indices-out-inverted",
        "--indices-out writes the pruned indices instead of the kept ones",
        "dpcli/stages/outputs.py",
        "write_indices(self.indices, kept, pub)",
        "write_indices(self.indices, np.flatnonzero(~keep), pub)",
        ("tests/cli/test_cli.py",),
    ),
    Mutant(
        "retrain-pruned-rows",
        "retrain trains on the pruned rows instead of the kept ones",
        "dpcli/stages/masks.py",
        "keep_indices=mask.keep_indices",
        "keep_indices=mask.pruned_indices",
        ("tests/cli/test_cli.py",),
    ),
    Mutant(
        "resume-off",
        "an interrupted run restarts from epoch 0 instead of resuming",
        "dpcli/train/loop.py",
        "    if out.exists() and not force:\n",
        "    if out.exists() and not force and load_checkpoint(out, weights=False).complete:\n",
        ("tests/train/test_training.py",),
    ),
    Mutant(
        "sigterm-lost",
        "a SIGTERM whose exception Python swallowed (in a weakref callback) never stops training",
        "dpcli/train/loop.py",
        "            interrupts.check()  # a stop",
        "            pass  # a stop",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "sigterm-lost-printed",
        "a swallowed SIGTERM prints Python's 'Exception ignored' traceback",
        "dpcli/cli/application.py",
        "    sys.unraisablehook = unraisable\n",
        "    pass\n",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "sigint-lost",
        "Ctrl-C keeps Python's handler: a SIGINT swallowed in a weakref callback never stops training",
        "dpcli/cli/application.py",
        "(signal.SIGINT, signal.default_int_handler),",
        "(signal.SIGINT, None),",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "sigint-unignored",
        "dpcli handles a SIGINT its parent shell ignored (a background job stops on Ctrl-C)",
        "dpcli/cli/application.py",
        "        s\n        for s, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL))\n        if signal.getsignal(s) is default\n",
        "        s for s, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL)) if True\n",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "passed-over-silent",
        "images in a format dpcli does not read (.gif) are left out without a word",
        "dpcli/data/sources/imagefolder.py",
        "        _warn_passed_over(layout.passed_over)\n",
        "",
        ("tests/data/test_data_scale.py", "tests/cli/test_errors.py"),
    ),
    Mutant(
        "warnings-python-format",
        "dpcli's warnings print in Python's file:line: UserWarning format",
        "dpcli/cli/application.py",
        "    warnings.formatwarning = fmt\n",
        "    pass\n",
        ("tests/cli/test_errors.py",),
    ),
    Mutant(
        "label-names-first-seen",
        "class names are numbered in order of first appearance, not sorted",
        "dpcli/data/embeddings.py",
        "        classes = tuple(np.unique(names).tolist())",
        "        classes = tuple(dict.fromkeys(names.tolist()))",
        ("tests/influence/test_embeddings.py",),
    ),
    Mutant(
        "model-options-after-load",
        "bad model options (--epochs 0, an unknown --arch) are found only after the image cache is built",
        "dpcli/cli/options.py",
        '        TrainConfig(dataset="", **self.overrides(), image_size=self.image_size).validate()\n',
        "",
        ("tests/cli/test_errors.py",),
    ),
    Mutant(
        "class-guard-off",
        "auto may choose a candidate that keeps no sample of a class its first candidate keeps",
        "dpcli/select/methods/auto.py",
        "    return s.lost == 0 and",
        "    return True and",
        (
            "tests/select/test_auto.py::test_an_ineligible_best_is_passed_over",
            "tests/select/test_auto.py::test_a_candidate_that_drops_a_class_the_first_rung_keeps_is_never_chosen",
        ),
    ),
    Mutant(
        "emptied-classes-unsaid",
        "a kept set without some class is neither warned about nor recorded",
        "dpcli/select/base.py",
        "    gone = ~np.isin(",
        "    gone = np.zeros(len(classes), dtype=bool) & ~np.isin(",
        ("tests/select/test_auto.py",),
    ),
    Mutant(
        "strata-need-dynamics",
        "explicit --strata on an embeddings run refuses (no dynamics) though auto uses the stored loss",
        "dpcli/select/base.py",
        "            loss = self.influence_loss() if self.checkpoint is None",
        "            loss = None if self.checkpoint is None",
        ("tests/select/test_auto.py",),
    ),
    Mutant(
        "unused-classes-unsaid",
        "labels that leave most class indices unused (IDs, not indices) pass silently",
        "dpcli/data/embeddings.py",
        "    _check_classes(labels, c, declared=num_classes is not None)\n",
        "",
        ("tests/influence/test_embeddings.py",),
    ),
    Mutant(
        "space-unchecked",
        "an S larger than the free disk space is computed, and fails only when written",
        "dpcli/artifacts/rows.py",
        "    if nbytes > free:\n",
        "    if False:\n",
        ("tests/artifacts/test_reliability.py",),
    ),
    Mutant(
        "within-bound-2x",
        "verify-bound's within_bound compares with twice the predicted bound",
        "dpcli/stages/bound.py",
        "return abs(self.observed_gap) <= self.predicted_bound",
        "return abs(self.observed_gap) <= 2 * self.predicted_bound",
        ("tests/cli/test_cli.py",),
    ),
    Mutant(
        "bound-first-epoch",
        "verify-bound takes the full-data test loss from the first epoch, not the last",
        "dpcli/stages/pipeline.py",
        "full_loss = final.test_loss",
        "full_loss = ck.history[0].test_loss",
        ("tests/cli/test_cli.py",),
    ),
    # ---- later capabilities: faithful selectors, the streaming loader, device-side recording
    Mutant(
        "tdds-weights-reversed",
        "TDDS weights the first window most instead of the last",
        "dpcli/select/methods/tdds.py",
        "(T - J - np.arange(T - J + 1))",
        "(np.arange(T - J + 1))",
        ("tests/select/test_select_methods_reference.py",),
    ),
    Mutant(
        "dual-ddof0",
        "DUAL's window standard deviation with ddof = 0",
        "dpcli/select/methods/dual.py",
        "w.std(axis=2, ddof=1)",
        "w.std(axis=2, ddof=0)",
        ("tests/select/test_select_methods_reference.py",),
    ),
    Mutant(
        "ccs-aum-mean",
        "CCS ranks by the last epoch's margin instead of the area under the margin",
        "dpcli/select/methods/ccs.py",
        "return margin.sum(axis=0)",
        "return margin[-1]",
        ("tests/select/test_select_methods_reference.py",),
    ),
    Mutant(
        "moderate-order",
        "Moderate ranks distances in reverse",
        "dpcli/select/methods/moderate.py",
        'order = np.argsort(distance, kind="stable")',
        'order = np.argsort(-distance, kind="stable")',
        ("tests/select/test_select_methods_reference.py",),
    ),
    Mutant(
        "center-crop-off-by-one",
        "the evaluation center crop is shifted by one pixel",
        "dpcli/data/batches.py",
        "top, left = int(round((h - split.crop) / 2.0)),",
        "top, left = int(round((h - split.crop) / 2.0)) + 1,",
        ("tests/data/test_data_scale.py",),
    ),
    # ---- pretrained weights' preprocessing (dpcli.models.preprocess) and the embeddings retrain artifact
    Mutant(
        "weights-resize-is-crop",
        "torchvision weights: the shorter side resized to the crop, not resize_size",
        "dpcli/models/sources/torchvision.py",
        "make_spec(t.crop_size, t.resize_size,",
        "make_spec(t.crop_size, t.crop_size,",
        ("tests/models/test_preprocessing.py",),
    ),
    Mutant(
        "weights-norm-dataset-stats",
        "the weights' mean/std replaced by the dataset's own statistics",
        "dpcli/data/base.py",
        "        mean=mean,\n        std=std,\n",
        "        mean=ds.mean,\n        std=ds.std,\n",
        ("tests/models/test_preprocessing.py",),
    ),
    Mutant(
        "weights-bicubic-as-bilinear",
        "bicubic weights (timm, EfficientNet) resized bilinearly",
        "dpcli/data/imageio.py",
        '"bicubic": modes.BICUBIC',
        '"bicubic": modes.BILINEAR',
        ("tests/models/test_preprocessing.py::test_timm_pretrained_cfg_matches_timm_eval_transform",),
    ),
    Mutant(
        "weights-lineage-ignored",
        "later stages re-resolve the preprocessing instead of the checkpoint's record",
        "dpcli/models/preprocess.py",
        "    if LINEAGE_KEY in lineage:\n",
        "    if False:\n",
        ("tests/models/test_preprocessing.py::test_train_and_influence_feed_the_model_what_weights_transforms_give",),
    ),
    Mutant(
        "head-refit-all-rows",
        "embeddings retrain refits the head on every row, not the kept ones",
        "dpcli/stages/heads.py",
        "sub = refit(emb, mask.keep, damping, init=",
        "sub = refit(emb, np.ones(emb.n, dtype=bool), damping, init=",
        ("tests/influence/test_embeddings.py::test_retrain_writes_a_checkpoint_equal_to_an_independent_refit",),
    ),
    Mutant(
        "head-reuse-any-mask",
        "a head checkpoint at --out is reused whatever mask it was refitted on",
        "dpcli/stages/heads.py",
        '                and lineage.get("mask_fingerprint") == mask.fingerprint\n',
        "",
        ("tests/influence/test_embeddings.py::test_retrain_writes_a_checkpoint_equal_to_an_independent_refit",),
    ),
    Mutant(
        "head-hessian-never-subsampled",
        "large-n Newton steps take their curvature from every row",
        "dpcli/influence/head.py",
        "    if n <= _HESSIAN_ROWS:\n",
        "    if True:\n",
        ("tests/influence/test_head.py::test_a_subsampled_curvature_reaches_the_same_optimum",),
    ),
    Mutant(
        "refit-mean-ce",
        "the embeddings refit minimizes the kept rows' mean CE + the full run's L2, not S's objective",
        "dpcli/stages/heads.py",
        "damping * emb.n / len(idx)",
        "damping",
        ("tests/influence/test_embeddings.py::test_verify_bound_shows_the_refit_agrees_with_S_to_second_order",),
    ),
    Mutant(
        "freeze-backbone-on-cpu",
        "--freeze-backbone fits the head and solves S on the CPU whatever --device says",
        "dpcli/stages/embeddings.py",
        "        device=device,\n",
        '        device=__import__("torch").device("cpu"),\n',
        ("tests/influence/test_embeddings.py::test_freeze_backbone_fits_and_solves_on_its_device",),
    ),
    Mutant(
        "head-cg-unpreconditioned",
        "the head fit's CG preconditioner ignores the features (identity factor)",
        "dpcli/influence/head.py",
        "    return torch.linalg.eigh(phi.T @ phi / phi.shape[0])",
        "    return torch.linalg.eigh(torch.eye(dim + 1, dtype=phi.dtype, device=xh.device))",
        ("tests/influence/test_head.py",),
    ),
    Mutant(
        "head-forcing-fixed",
        "the inner CG tolerance stays at 0.5 (no superlinear convergence)",
        "dpcli/influence/head.py",
        "min(0.5, math.sqrt(gn))",
        "0.5",
        ("tests/influence/test_head.py",),
    ),
    Mutant(
        "train-accuracy-unsummed",
        "the device-side epoch metrics count one correct sample per step",
        "dpcli/train/loop.py",
        "correct.sum().double()",
        "correct[:1].sum().double()",
        ("tests/train/test_training.py",),
    ),
    # ---- GPU-path fixes found by the H200 smoke run (docs/gpu.md)
    Mutant(
        "refined-unit-columns-unscaled",
        "the float32-refined solve forgets to divide by the column norms",
        "dpcli/influence/precision.py",
        "rhs = (g / norms[:, None]).T",
        "rhs = g.T",
        ("tests/train/test_train_perf.py::test_float32_refined_handles_saturated_samples",),
    ),
    Mutant(
        "compile-no-fallback",
        "a compiler failure on the first step is not caught",
        "dpcli/train/loop.py",
        "    except Exception as exc:  # noqa: BLE001",
        "    except ZeroDivisionError as exc:  # noqa: BLE001",
        ("tests/train/test_train_perf.py::test_a_compiler_failure_falls_back_to_the_eager_run",),
    ),
    Mutant(
        "rank-reads-global-batch",
        "a torchrun rank reads the whole global batch, not its slice",
        "dpcli/data/batches.py",
        "    if part is None:\n        return start, stop\n",
        "    if True:\n        return start, stop\n",
        ("tests/train/test_distributed.py",),
    ),
    # ---- the default selector (--method auto)
    Mutant(
        "auto-base-unbalanced",
        "auto's first rung is the objective alone, without class quotas",
        "dpcli/select/methods/auto.py",
        'Rung("balanced", 0, {"balance": True}),',
        'Rung("balanced", 0, {}),',
        ("tests/select/test_auto.py",),
    ),
    Mutant(
        "auto-always-base",
        "auto never leaves its first candidate, whatever validation says",
        "dpcli/select/methods/auto.py",
        "    pick = min(tied, key=lambda s: prior_rank(s.name, share))\n",
        "    pick = scores[0]\n",
        ("tests/select/test_auto.py::test_a_tie_goes_to_the_grid_tables_first_and_a_clear_win_does_not",),
    ),
    Mutant(
        "auto-validate-on-fit",
        "auto scores every kept set on the fit part it was selected from",
        "dpcli/select/methods/auto.py",
        "correct, loss = evaluate(w, b, x[val], y[val])",
        "correct, loss = evaluate(w, b, x[fit], y[fit])",
        ("tests/select/test_auto.py",),
    ),
    Mutant(
        "auto-no-noise",
        "auto ties only candidates of exactly equal validation accuracy, ignoring its noise",
        "dpcli/select/methods/auto.py",
        "s.behind <= s.spread",
        "s.behind <= 0",
        ("tests/select/test_auto.py::test_a_tie_goes_to_the_grid_tables_first_and_a_clear_win_does_not",),
    ),
    Mutant(
        "auto-tie-to-first",
        "a tie on the validation goes to the first candidate, not the grid's best",
        "dpcli/select/methods/auto.py",
        "    pick = min(tied, key=lambda s: prior_rank(s.name, share))\n",
        "    pick = tied[0]\n",
        ("tests/select/test_auto.py::test_a_tie_goes_to_the_grid_tables_first_and_a_clear_win_does_not",),
    ),
    Mutant(
        "auto-table-beats-clear-win",
        "the grid's table overrides a candidate that wins the validation clearly",
        "dpcli/select/methods/auto.py",
        "    tied = [s for s in ok if s.tied]\n",
        "    tied = ok\n",
        ("tests/select/test_auto.py::test_a_tie_goes_to_the_grid_tables_first_and_a_clear_win_does_not",),
    ),
    Mutant(
        "auto-tie-table-stale",
        "auto's tie table is not what the grid's results give (two candidates swapped)",
        "dpcli/select/methods/auto.py",
        '0.5: ("random-stratified", "dual-beta",',
        '0.5: ("dual-beta", "random-stratified",',
        ("tests/select/test_auto.py::test_the_tie_table_is_what_the_grid_results_give",),
    ),
    Mutant(
        "auto-pure-unchecked",
        "auto may choose the objective alone when it starves a class",
        "dpcli/select/methods/auto.py",
        "    return s.lost == 0 and s.short == 0",
        "    return s.lost == 0",
        (
            "tests/select/test_auto.py::test_the_objective_alone_is_checked_for_class_shares_not_forced",
            "tests/select/test_auto.py::test_an_ineligible_best_is_passed_over",
        ),
    ),
    Mutant(
        "auto-choice-not-run",
        "auto's choice wins the validation but the class-quota rung is run on all of S",
        "dpcli/select/methods/auto.py",
        "pruned, label = run_rung(v.chosen, cfg,",
        "pruned, label = run_rung(LADDER[0], cfg,",
        ("tests/select/test_auto.py::test_a_chosen_candidate_runs_on_all_of_S_as_its_own_method",),
    ),
    Mutant(
        "auto-dual-beta-wrong-rows",
        "the dual-beta candidate selects on the first rows' dynamics, not the fit part's",
        "dpcli/select/methods/auto.py",
        "None if p is None else p[:, fit]",
        "None if p is None else p[:, :len(fit)]",
        ("tests/select/test_auto.py::test_dual_beta_is_a_candidate_scored_like_the_others",),
    ),
    Mutant(
        "evidence-label-misread",
        "auto_evidence reads the class-quota rung's label as the strata rung",
        "benchmarks/auto_evidence.py",
        'if "strata=1," in rule:',
        'if "strata=10," in rule:',
        ("tests/test_auto_evidence.py",),
    ),
    Mutant(
        "report-current-uncounted",
        "the grid report counts every auto cell as run with the current default",
        "benchmarks/grid.py",
        'current = sum("selection_code" in c for c in at)',
        "current = len(at)",
        ("tests/test_auto_evidence.py",),
    ),
    Mutant(
        "stratified-unproportional",
        "class-stratified random prunes every class by the same count, not share",
        "dpcli/select/methods/random_stratified.py",
        "counts = proportional_counts(sizes, m)",
        "counts = proportional_counts(np.ones_like(sizes), m)",
        ("tests/select/test_random_stratified.py",),
    ),
    # ---- batched JPEG decoding (decode_jpeg, on the GPU when one is used)
    Mutant(
        "jpeg-exif-ignored",
        "the batched JPEG path forgets the EXIF orientation",
        "dpcli/data/jpeg.py",
        "img = apply_orientation(img, exif_orientation(data))",
        "img = img",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-rotate-wrong-way",
        "EXIF orientation 6 rotated counter-clockwise instead of clockwise",
        "dpcli/data/jpeg.py",
        "return torch.rot90(x, -1, (-2, -1))",
        "return torch.rot90(x, 1, (-2, -1))",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-no-antialias",
        "the batched path shrinks without antialiasing (PIL's BILINEAR antialiases)",
        "dpcli/data/jpeg.py",
        "align_corners=False, antialias=True)",
        "align_corners=False, antialias=False)",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-truncated-kept",
        "a truncated JPEG (no end-of-image marker) goes to decode_jpeg instead of PIL",
        "dpcli/data/jpeg.py",
        'if comps in (1, 3) and data.rstrip(b"\\0").endswith(_EOI):',
        "if comps in (1, 3):",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-cmyk-batched",
        "CMYK JPEGs go to decode_jpeg (colour conversion differs from PIL's)",
        "dpcli/data/jpeg.py",
        "if comps in (1, 3) and data",
        "if comps in (1, 3, 4) and data",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-auto-ignores-cost",
        "auto decodes on the GPU even where many PIL workers are faster",
        "dpcli/data/jpeg.py",
        "(73 / s) ** 1.5 < GPU_PER_S",
        "(73 / s) ** 1.5 < 1e12",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "jpeg-cache-ignores-decoder",
        "the cache build ignores the batched decoder and always runs PIL",
        "dpcli/data/cache.py",
        '        if decoder == "pil":\n',
        "        if True:\n",
        ("tests/data/test_jpeg_decode.py",),
    ),
    Mutant(
        "workers-outlive-build",
        "cache-building workers are not told to die with a killed build",
        "dpcli/data/cache.py",
        "mp_context=_pool_context(), initializer=_die_with_parent)",
        "mp_context=_pool_context())",
        ("tests/data/test_data_scale.py::test_cache_workers_die_with_a_killed_build",),
    ),
    Mutant(
        "blocks-ignore-bytes",
        "hashing / statistics blocks hold 4096 rows whatever their size",
        "dpcli/data/base.py",
        "rows = max(1, min(rows, _BLOCK_BYTES // max(1, row_bytes)))",
        "rows = max(1, rows)",
        ("tests/data/test_data_scale.py::test_hashing_and_statistics_blocks_are_bounded_in_bytes",),
    ),
    # ---- memory bounds on big data
    Mutant(
        "inference-batch-unbounded",
        "evaluation and features always run 1,024 rows, whatever the image size",
        "dpcli/data/batches.py",
        "return int(max(32, min(INFERENCE_BATCH, budget // per_row)))",
        "return INFERENCE_BATCH",
        ("tests/data/test_data_scale.py::test_inference_batches_are_bounded_in_bytes_and_do_not_change_results",),
    ),
    Mutant(
        "heap-never-trimmed",
        "a streamed epoch never hands glibc's freed batch buffers back",
        "dpcli/data/batches.py",
        "trim = heap_trimmer() if split.streamed else None",
        "trim = None",
        ("tests/data/test_data_scale.py::test_streamed_batches_trim_the_heap_every_64_mib",),
    ),
    Mutant(
        "solve-chunks-unbounded",
        "row solves run 4,096 rows of d float64 gradients whatever d is",
        "dpcli/influence/kernels.py",
        "chunk_size = min(int(chunk_size), max(64, _SOLVE_BYTES // (8 * w.shape[0] * (w.shape[1] + 1))))",
        "",
        ("tests/influence/test_influence_scale.py::test_row_solves_cap_their_chunks_by_bytes_and_keep_the_rows",),
    ),
    Mutant(
        "loss-norm-whole-set",
        "influence's per-sample losses and gradient norms form n x C float64 at once",
        "dpcli/influence/kernels.py",
        "    out = torch.empty(2, n, dtype=_F64, device=features.device)",
        "    chunk_size = n\n    out = torch.empty(2, n, dtype=_F64, device=features.device)",
        ("tests/influence/test_influence.py::test_loss_and_grad_norm_match_autograd_chunk_by_chunk",),
    ),
    Mutant(
        "hessian-mirror-missing",
        "the CPU Hessian writes the upper W-W blocks but not their mirror",
        "dpcli/influence/kernels.py",
        "            h[w2, w1] = block[:dim, :dim].T\n",
        "",
        ("tests/influence/test_influence.py::test_hessian_matches_autograd_and_hvp_matches_dense",),
    ),
    Mutant(
        "grads-bias-part-dropped",
        "per-sample gradients written in place leave the bias part at zero",
        "dpcli/influence/kernels.py",
        "    out[:, num_classes * dim :] = e\n",
        "    out[:, num_classes * dim :] = 0\n",
        ("tests/influence/test_influence.py::test_per_sample_grads_match_vmap_grad_of_nn_linear",),
    ),
    Mutant(
        "solve-budget-ignored",
        "an explicit covered solve allocates whatever its count and feature columns need",
        "dpcli/select/coverage.py",
        "    if need > budget:\n        raise DpcliError(",
        "    if False:\n        raise DpcliError(",
        ("tests/select/test_coverage.py::test_covered_solve_over_its_budget_fails_in_one_line_before_allocating",),
    ),
    Mutant(
        "auto-budget-ignored",
        "auto runs every rung, however many classes make its covered solve",
        "dpcli/select/methods/auto.py",
        "        if need > budget:\n",
        "        if False:\n",
        ("tests/select/test_auto.py::test_rungs_over_the_solve_budget_are_skipped_and_said",),
    ),
    Mutant(
        "auto-fit-copy-uncounted",
        "auto's budget check leaves out the copy of the fit part's rows of S",
        "dpcli/select/methods/auto.py",
        "need = max(full, s_fit + part if validating else 0)",
        "need = max(full, part if validating else 0)",
        ("tests/select/test_auto.py::test_rungs_over_the_solve_budget_are_skipped_and_said",),
    ),
    Mutant(
        "auto-budget-per-solve",
        "auto gives its final solve the whole --time-budget after the rungs used theirs",
        "dpcli/select/methods/auto.py",
        "run_rung(v.chosen, cfg, ctx, m, probs[0], remaining(cfg, t0))",
        "run_rung(v.chosen, cfg, ctx, m, probs[0], cfg.time_budget)",
        ("tests/select/test_auto.py::test_time_budget_is_one_budget_split_across_the_solves",),
    ),
    Mutant(
        "auto-val-features-dense",
        "auto's feature rung matches the full features on the fit part, not their sketch",
        "dpcli/select/methods/auto.py",
        "    sub.supply(\n        difficulty=np.asarray(difficulty)[fit],\n        features=sketch_rows(np.asarray(features), fit, heldout.FEATURE_SKETCH, cfg.seed),\n    )\n",
        "    sub.supply(difficulty=np.asarray(difficulty)[fit], features=np.asarray(features)[fit])\n",
        ("tests/select/test_auto_cost.py",),
    ),
    Mutant(
        "auto-sketch-chunk-rows",
        "every chunk of the validation's sketch reads the first chunk's rows",
        "dpcli/select/heldout.py",
        "        out[i : i + step] = sk.apply(np.asarray(a[rows[i : i + step]]))\n",
        "        out[i : i + step] = sk.apply(np.asarray(a[rows[:step]]))\n",
        ("tests/select/test_auto_cost.py",),
    ),
    Mutant(
        "auto-sketch-budget-dense",
        "auto's budget check counts the feature rung's dense feature columns on the fit part",
        "dpcli/select/methods/auto.py",
        "counts + classes * sketch_width(feats), itemsize)",
        "counts + classes * feats, itemsize)",
        ("tests/select/test_auto_cost.py",),
    ),
    Mutant(
        "feature-block-unscaled",
        "the feature columns are not weighed against the influence part",
        "dpcli/select/coverage.py",
        "    scale = ref / np.sqrt(got) if got > 0 else 1.0",
        "    scale = 1.0",
        ("tests/select/test_coverage.py::test_feature_block_equals_a_dense_construction",),
    ),
    # ---- issue 29: every DPCLI_* variable read in env.py and listed in one table
    Mutant(
        "env-read-outside-env-py",
        "a module reads its DPCLI_* variable itself again",
        "dpcli/artifacts/runs.py",
        "    from dpcli.env import runs_root\n\n    return runs_root()",
        '    return Path(os.environ.get("DPCLI_RUNS", "dpcli-runs"))',
        ("tests/test_env.py",),
    ),
    Mutant(
        "env-table-row-missing",
        "the reference's environment table lacks a variable env.py reads",
        "docs/reference-cli.md",
        "| `DPCLI_DIST_TIMEOUT` | `1800` | seconds a torchrun rank waits for the others |\n",
        "",
        ("tests/test_env.py",),
    ),
    Mutant(
        "env-cache-workers-lenient",
        "a malformed DPCLI_CACHE_WORKERS is silently ignored",
        "dpcli/env.py",
        "    if not env.isdigit():\n        raise DpcliError(",
        "    if False:\n        raise DpcliError(",
        ("tests/test_env.py",),
    ),
    # ---- issue 29: the mask's run key holds every option of its selector
    Mutant(
        "run-key-drops-option",
        "the mask's run key leaves out --time-budget (a stale mask is reused)",
        "dpcli/config.py",
        "for k, v in dataclasses.asdict(self).items() if k in names}",
        'for k, v in dataclasses.asdict(self).items() if k in names and k != "time_budget"}',
        ("tests/select/test_run_key.py",),
    ),
    Mutant(
        "run-key-no-coverage",
        "selectors' declared options leave out the coverage options",
        "dpcli/select/base.py",
        "        return (\n            *TARGET_OPTIONS,\n            *(SOLVER_OPTIONS if cls.solves else ()),\n            *(COVERAGE_OPTIONS if cls.coverage else ()),\n            *sorted(cls.reads),\n        )\n",
        "        return (*TARGET_OPTIONS, *(SOLVER_OPTIONS if cls.solves else ()), *(), *sorted(cls.reads))\n",
        ("tests/select/test_run_key.py",),
    ),
    # ---- issue 29: the sketch over more than one block of R
    Mutant(
        "sketch-blocks-one-seed",
        "every block of the sketch's R is drawn from the same seed (repeated rows)",
        "dpcli/influence/sketch.py",
        "np.random.SeedSequence([self.seed, j])",
        "np.random.SeedSequence([self.seed, 0])",
        ("tests/influence/test_sketch_blocks.py",),
    ),
    Mutant(
        "sketch-blocks-offset",
        "apply() multiplies every column block by R's first block",
        "dpcli/influence/sketch.py",
        "            out += rows[:, lo : lo + self.block_rows].astype(np.float64) @ self.block(j)\n",
        "            out += (\n                rows[:, lo : lo + self.block_rows].astype(np.float64)\n                @ self.block(0)[: rows[:, lo : lo + self.block_rows].shape[1]]\n            )\n",
        ("tests/influence/test_sketch_blocks.py",),
    ),
    # ---- issue 29: the lock-reuse path of prune
    Mutant(
        "lock-reuse-no-indices",
        "a prune that waited and reuses the published mask skips --indices-out",
        "dpcli/stages/masks.py",
        "                    outputs.stage(pub, done.user_keep, done.samples, done.path)\n",
        "                    pass\n",
        ("tests/cli/test_lock_reuse.py",),
    ),
    # ---- issue 29: messages name only flags, choices and modules that exist
    Mutant(
        "message-method-for-estimator",
        "an error tells the user to pass --method lissa (it is --estimator)",
        "dpcli/influence/kernels.py",
        'use --estimator cg"',
        'use --method cg"',
        ("tests/test_messages.py",),
    ),
    Mutant(
        "message-unknown-flag",
        "a selector's help names --seed, which the CLI does not have",
        "dpcli/select/methods/random.py",
        "(seeded by --solver-seed)",
        "(seeded by --seed)",
        ("tests/test_messages.py",),
    ),
    Mutant(
        "docstring-missing-module",
        "a docstring points at a module that does not exist",
        "dpcli/stages/core.py",
        ":mod:`dpcli.influence.sketch`",
        ":mod:`dpcli.influence_scale`",
        ("tests/test_messages.py",),
    ),
    # ---- issue 29: class quotas with strata, the hard cutoff per class
    Mutant(
        "quotas-over-groups",
        "strata quotas rounded over class x stratum groups at once (a class drifts from "
        "its share; a class of 3 in 3 strata is emptied)",
        "dpcli/select/coverage.py",
        "        counts[mine] = proportional_counts(gsize[mine], int(left[p]))",
        "        counts = proportional_counts(gsize, m - int(forced.sum()))",
        ("tests/select/test_coverage.py",),
    ),
    Mutant(
        "cutoff-global-under-balance",
        "--hard-cutoff under --balance cuts the hardest of all samples",
        "dpcli/select/coverage.py",
        "        for p, idx in enumerate(_members(parts, len(sizes))):",
        "        for p, idx in enumerate([np.arange(n)]):",
        ("tests/select/test_coverage.py",),
    ),
    Mutant(
        "quota-empties-class",
        "class quotas may take every sample of a rare class",
        "dpcli/select/coverage.py",
        "caps=sizes - 1 if m <=",
        "caps=sizes if m <=",
        ("tests/select/test_coverage.py",),
    ),
    Mutant(
        "auto-sketch-never",
        "dataset-mode prune writes the dense S however large (10 TB for ImageNet + ResNet-50)",
        "dpcli/stages/pipeline.py",
        "    if sketch_large and icfg.sketch_k is None:",
        "    if False:",
        ("tests/influence/test_influence_scale.py::test_dataset_mode_prune_sketches_an_S_over_the_budget",),
    ),
    Mutant(
        "stages-keep-heap",
        "one-process dataset mode keeps each stage's freed heap into the next",
        "dpcli/stages/pipeline.py",
        "    release_memory()\n    return FullRun(",
        "    return FullRun(",
        ("tests/data/test_data_scale.py::test_one_process_pipeline_hands_the_heap_back_between_stages",),
    ),
    Mutant(
        "S-copied-not-mapped",
        "prune copies S into the heap instead of mapping the file",
        "dpcli/stages/core.py",
        'S = mapped_rows(f["S"]) if mapped else None',
        "S = None",
        ("tests/select/test_certificate.py::test_prune_maps_S_instead_of_copying_it",),
    ),
    Mutant(
        "mmap-failure-unhandled",
        "a file system without mmap ends prune in a traceback",
        "dpcli/artifacts/rows.py",
        "    except (OSError, ValueError):  # a file system",
        "    except ImportError:  # a file system",
        ("tests/select/test_certificate.py::test_load_S_reads_a_copy_where_the_file_cannot_be_mapped",),
    ),
    Mutant(
        "S-written-chunked",
        "the influence stage stores S in chunks, which cannot be mapped",
        "dpcli/artifacts/rows.py",
        "dtype=np.float32, chunks=None)",
        "dtype=np.float32, chunks=True)",
        (
            "tests/influence/test_influence_scale.py::test_shards_merge_to_the_unsharded_artifact",
            "tests/influence/test_embeddings.py::test_sketch_first_solve_equals_S_times_R",
        ),
    ),
    Mutant(
        "probs-budget-worst-case",
        "the probabilities' size counts 30 epochs even for a shorter run",
        "dpcli/train/dynamics.py",
        "need = self.n * classes * 2 * self.prob_epochs",
        "need = self.n * classes * 2 * PROB_EPOCHS",
        ("tests/select/test_select_methods_dynamics.py",),
    ),
    Mutant(
        "probs-skip-drops-margin",
        "over the probabilities' budget, the margins are not written either",
        "dpcli/train/dynamics.py",
        "            if self._extras:  # not compressed",
        "            if self._extras and self._probs:  # not compressed",
        ("tests/select/test_select_methods_dynamics.py",),
    ),
    # ---- EVA (issue 30): the dual-window variance of the recorded error-vector norm
    Mutant(
        "eva-no-l1",
        "EVA mixes the two windows' raw variances instead of L1-normalized ones",
        "dpcli/select/methods/eva.py",
        "    return v / max(float(np.abs(v).sum()), L1_EPS)",
        "    return v",
        ("tests/select/test_eva.py",),
    ),
    Mutant(
        "eva-later-window-at-end",
        "EVA's later window is the last epochs instead of mid-training",
        "dpcli/select/methods/eva.py",
        "    later = min(epochs // 2, epochs - J)",
        "    later = epochs - J",
        ("tests/select/test_eva.py",),
    ),
    Mutant(
        "el2n-no-onehot",
        "the recorded error vector forgets the one-hot label: ||p|| instead of ||p - onehot||",
        "dpcli/train/dynamics.py",
        "torch.linalg.vector_norm(p.scatter(1, y, p_y - 1.0), dim=1)",
        "torch.linalg.vector_norm(p, dim=1)",
        ("tests/select/test_eva.py",),
    ),
    Mutant(
        "el2n-lost-on-resume",
        "a resumed run drops the error-vector norms of the epochs before the resume",
        "dpcli/train/loop.py",
        'el2n=np.stack([r["el2n"] for r in dyn_rows]) if has("el2n") else None',
        "el2n=None",
        ("tests/select/test_eva.py",),
    ),
    # ---- the grid's `paper` regime (issue 30): priority order, resume, epsilon cells
    Mutant(
        "grid-lead-not-paired",
        "the paper regime runs auto at every ratio, then random: no whole comparison early",
        "benchmarks/grid.py",
        "for r in ratios for m in regime.lead if m in methods]",
        "for m in regime.lead if m in methods for r in ratios]",
        ("tests/test_grid.py",),
    ),
    Mutant(
        "grid-resume-own-folder-only",
        "a resumed grid reruns the cells finished in the committed results folder",
        "benchmarks/grid.py",
        "cells = own + [c for folder in also for c in read_cells(Path(folder) / self.path.name)]",
        "cells = own",
        ("tests/test_grid.py",),
    ),
    Mutant(
        "grid-toy-counts-as-measured",
        "a --tiny rehearsal's toy cells count as finished measured cells",
        "benchmarks/grid.py",
        'self.done = {_key(c) for c in cells if bool(c.get("toy")) == toy}',
        "self.done = {_key(c) for c in cells}",
        ("tests/test_grid.py",),
    ),
    Mutant(
        "grid-eps-random-nominal",
        "an epsilon cell's random reference prunes the nominal ratio, not the count reached",
        "benchmarks/grid.py",
        'PruneConfig(count=mask.n_pruned, method="random", seed=seed)',
        'PruneConfig(ratio=0.4, method="random", seed=seed)',
        ("tests/test_grid.py",),
    ),
    # ---- proxy sets for architecture search (issue 30 item 2)
    Mutant(
        "proxy-rho-on-test",
        "the proxy ranking is correlated with the whole pool's test accuracies, not its validation ones",
        "benchmarks/proxy_search.py",
        'whole_val = [whole[n]["val_accuracy"] for n in names]',
        'whole_val = [whole[n]["test_accuracy"] for n in names]',
        ("tests/test_proxy_search.py",),
    ),
    Mutant(
        "proxy-random-pays-reference",
        "random's search is charged the reference training it never reads",
        "benchmarks/proxy_search.py",
        '(ref if selector != "random" else 0.0)',
        "ref",
        ("tests/test_proxy_search.py",),
    ),
    Mutant(
        "proxy-epochs-drop-last",
        "the proxy schedule counts whole batches only, so it trains longer than it needs",
        "benchmarks/proxy_search.py",
        "math.ceil(kept / batch_size)",
        "max(1, kept // batch_size)",
        ("tests/test_proxy_search.py",),
    ),
    Mutant(
        "proxy-resume-retrains",
        "a rerun trains a finished proxy again",
        "benchmarks/proxy_search.py",
        '    k = ("proxy", c.name, selector, kept, seed)\n    if (rec := store.get(k)) is not None:',
        '    k = ("proxy", c.name, selector, kept, seed)\n    if (rec := store.get(k)) is None:',
        ("tests/test_proxy_search.py",),
    ),
    # ---- the user's index space, kept files by name, outputs published together (issues 27, 32)
    Mutant(
        "listing-path-sorted",
        "an image folder is listed in global path order, not ImageFolder's os.walk order",
        "dpcli/data/layouts.py",
        "                passed_over.append(os.path.join(top, name))\n    return found",
        "                passed_over.append(os.path.join(top, name))\n    return sorted(found)",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "listing-skips-hidden",
        "hidden image files are left out (ImageFolder lists them)",
        "dpcli/data/layouts.py",
        "            if _is_image(name):",
        '            if _is_image(name) and not name.startswith("."):',
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "unreadable-shifts-indices",
        "an unreadable file is dropped from the numbering, shifting every later index",
        "dpcli/data/sources/imagefolder.py",
        "space = SampleSpace(info.train_rows, len(layout.train), name, layout.listing())",
        "space = SampleSpace(np.arange(len(info.train_rows)), len(info.train_rows), name, layout.listing())",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "dangling-link-fatal",
        "a dangling link with an image extension stops the run instead of keeping its index",
        "dpcli/data/imageio.py",
        "        if exc.errno in (errno.ENOENT, errno.ELOOP):",
        "        if False:",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "mask-keeps-unreadable-unchecked",
        "a mask that keeps an unreadable file is read as if it were sound",
        "dpcli/stages/masks.py",
        "            if kept_bad.size:",
        "            if False:",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "retrain-space-unchecked",
        "retrain uses a mask made for another numbering of the samples",
        "dpcli/stages/masks.py",
        "    if not mask.samples.same_as(ds.samples):",
        "    if mask.n != len(ds.train.labels):",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "paths-out-off-by-one",
        "--paths-out names the file after each kept one",
        "dpcli/stages/outputs.py",
        "layout.relative(layout.train[i][0])",
        "layout.relative(layout.train[min(i + 1, len(layout.train) - 1)][0])",
        ("tests/data/test_index_space.py",),
    ),
    Mutant(
        "listing-change-unchecked",
        "--paths-out names files from a folder that changed since S was computed",
        "dpcli/stages/outputs.py",
        "    if layout.listing() != space.listing or len(layout.train) != space.total:",
        "    if False:",
        ("tests/cli/test_outputs.py",),
    ),
    Mutant(
        "outputs-published-one-by-one",
        "each output is renamed into place as soon as it is written, so a failure leaves a mask without its index file",
        "dpcli/artifacts/h5.py",
        "        if publication is None:\n",
        "        if True:\n",
        ("tests/cli/test_outputs.py",),
    ),
    Mutant(
        "publication-no-rollback",
        "a rename failing midway leaves the outputs renamed before it in place",
        "dpcli/artifacts/h5.py",
        "                    if aside is not None:\n                        os.replace(aside, path)",
        "                    if False:\n                        os.replace(aside, path)",
        ("tests/cli/test_outputs.py",),
    ),
    Mutant(
        "output-equal-input",
        "prune S.h5 --out S.h5 replaces S by the mask",
        "dpcli/stages/outputs.py",
        "            if same_place(path, src):",
        "            if False:",
        ("tests/cli/test_outputs.py",),
    ),
    Mutant(
        "external-labels-ignored",
        "prune S.npy --labels FILE ignores the labels",
        "dpcli/stages/external.py",
        "    y = read_labels(labels, n) if labels is not None else _stored_labels(stored, n, Path(path))",
        "    y = _stored_labels(stored, n, Path(path))",
        ("tests/cli/test_options_act.py",),
    ),
    Mutant(
        "file-mode-ignores-dataset-options",
        "dataset-mode options given with an influence file are ignored",
        "dpcli/cli/prune.py",
        '    if kind != "dataset":',
        "    if False:",
        ("tests/cli/test_options_act.py",),
    ),
    Mutant(
        "prune-freeze-backbone-ignored",
        "prune DATASET --freeze-backbone trains the whole network instead",
        "dpcli/cli/prune.py",
        "    if freeze_backbone:  # features once",
        "    if False:  # features once",
        ("tests/cli/test_options_act.py",),
    ),
    Mutant(
        "class-share-factor-4",
        "the class-share warning fires only 4x away, not at the documented 2x",
        "dpcli/select/base.py",
        "(ratio < 1 / SHARE_FACTOR)",
        "(ratio < 1 / (2 * SHARE_FACTOR))",
        ("tests/cli/test_options_act.py",),
    ),
    Mutant(
        "summary-says-solver",
        "the summary names auto's solver label instead of what auto chose",
        "dpcli/cli/prune.py",
        '        chosen = mask.auto.get("chosen", "?")',
        "        chosen = mask.solver",
        ("tests/cli/test_options_act.py",),
    ),
    # ---- progress, the Python API, stable names, the digits split, declared dependencies (issue 27)
    Mutant(
        "progress-no-ticker",
        "off a terminal, progress lines wait for the stage's end (no timed lines)",
        "dpcli/console.py",
        "while not stop.wait(interval):",
        "while not stop.wait(None):",
        ("tests/test_progress.py::test_a_train_logging_to_a_file_writes_progress_lines_while_it_runs",),
    ),
    Mutant(
        "progress-batches-not-samples",
        "training progress counts batches where the total counts samples",
        "dpcli/train/loop.py",
        "                on_batch(epoch, seen, n_used)",
        "                on_batch(epoch, steps, n_used)",
        ("tests/test_progress.py::test_on_a_terminal_the_bar_moves_inside_an_epoch",),
    ),
    Mutant(
        "progress-cached-stage-noise",
        "a stage that only found its artifact cached prints an end line",
        "dpcli/console.py",
        "if (announce and self.worked) or end.elapsed",
        "if announce or end.elapsed",
        ("tests/test_progress.py::test_a_cached_stage_stays_quiet_and_a_one_step_stage_prints_its_end_only",),
    ),
    Mutant(
        "progress-write-raises",
        "a full stderr (ENOSPC) stops the job at its next progress line",
        "dpcli/console.py",
        "        print_()\n    except (OSError, ValueError) as exc:  # ValueError",
        "        print_()\n    except ValueError as exc:  # ValueError",
        ("tests/test_progress.py::test_a_broken_stderr_does_not_stop_the_job",),
    ),
    Mutant(
        "progress-broken-pipe-exits",
        "a stderr reader that quit ends the job (rich's default: SystemExit(1))",
        "dpcli/console.py",
        "    def on_broken_pipe(self) -> None:\n        self.quiet = True",
        "    def on_broken_pipe(self) -> None:\n        Console.on_broken_pipe(self)",
        ("tests/test_progress.py::test_a_broken_stderr_does_not_stop_the_job",),
    ),
    Mutant(
        "api-progress-on-stderr",
        "the Python API writes its progress lines to stderr instead of the logger",
        "dpcli/console.py",
        "_plain if listener is None else log.info",
        "_plain",
        ("tests/test_progress.py::test_the_api_is_silent_by_default_and_reports_to_logging_and_a_callback",),
    ),
    Mutant(
        "api-string-S",
        "an S of strings reaches numpy's float conversion (a raw ValueError)",
        "dpcli/api.py",
        'if x.dtype.kind not in "biuf":',
        'if x.dtype.kind not in "biufUSO":',
        ("tests/test_api.py::test_bad_input_is_one_dpcli_error_line",),
    ),
    Mutant(
        "api-int-keep-as-mask",
        "refit turns kept indices into a boolean mask (nonzero = kept) silently",
        "dpcli/api.py",
        "    if mask.dtype != bool:\n",
        "    mask = mask.astype(bool)\n    if mask.dtype != bool:\n",
        ("tests/test_api.py::test_bad_input_is_one_dpcli_error_line",),
    ),
    Mutant(
        "api-repr-arrays",
        "Selection's one line prints the pruned indices where it means their count",
        "dpcli/api.py",
        "pruned={self.n_pruned}, norm=",
        "pruned={self.pruned_indices}, norm=",
        ("tests/test_api.py::test_reprs_are_one_short_line",),
    ),
    Mutant(
        "api-embed-shuffled",
        "embed reads a dataset in shuffled order",
        "dpcli/api.py",
        "shuffle=False, collate_fn=_collate",
        "shuffle=True, collate_fn=_collate",
        ("tests/test_api.py::test_embed_reads_an_image_folder_dataset_like_a_direct_forward_pass",),
    ),
    Mutant(
        "api-none-array",
        "a required array left out (None) reaches numpy: prune(None) dies on NoneType",
        "dpcli/api.py",
        '    if a is None:\n        raise DpcliError(f"{what} is required',
        '    if False:\n        raise DpcliError(f"{what} is required',
        ("tests/test_api.py::test_bad_input_is_one_dpcli_error_line",),
    ),
    Mutant(
        "api-iterable-dataset",
        "embed takes an IterableDataset and dies on its len() (a raw TypeError)",
        "dpcli/api.py",
        "if not isinstance(inputs, Sized):",
        "if False:",
        ("tests/test_api.py::test_bad_input_is_one_dpcli_error_line",),
    ),
    Mutant(
        "latest-not-followed",
        "a path through latest/ is used as given: outputs and records name latest/",
        "dpcli/artifacts/runs.py",
        "    if real == os.path.abspath(text):\n",
        "    if True:\n",
        ("tests/test_latest.py::test_prune_links_its_chain_and_verify_bound_leaves_it",),
    ),
    Mutant(
        "latest-outside-run-root",
        "results written elsewhere with --out get a latest/ link too",
        "dpcli/artifacts/runs.py",
        "if not target.is_relative_to(root) or target == root:",
        "if target == root:",
        ("tests/test_latest.py::test_results_written_elsewhere_get_no_link",),
    ),
    Mutant(
        "latest-verify-moves-prune",
        "verify-bound points latest/prune at the last mask of its table",
        "dpcli/cli/verify.py",
        '{"verify-bound": report["report"]}',
        '{"verify-bound": report["report"], "prune": masks_all[-1].path}',
        ("tests/test_latest.py::test_prune_links_its_chain_and_verify_bound_leaves_it",),
    ),
    Mutant(
        "tutorial-glob",
        "the tutorial reaches the mask by a glob again",
        "docs/tutorial.md",
        "dpcli retrain digits --mask dpcli-runs/latest/prune/mask.h5",
        "dpcli retrain digits --mask dpcli-runs/digits/train-*/influence-*/prune-*/mask.h5",
        ("tests/test_tutorial.py::test_the_tutorials_blocks_are_all_runnable_or_marked",),
    ),
    Mutant(
        "digits-split-floor",
        "the digits test split rounds its class shares down",
        "dpcli/data/sources/digits.py",
        "int(len(members) * DIGITS_TEST_FRACTION + 0.5)",
        "int(len(members) * DIGITS_TEST_FRACTION)",
        ("tests/test_digits_split.py",),
    ),
    Mutant(
        "undeclared-scipy",
        "scipy is imported but not declared (issue 27 item 8)",
        "pyproject.toml",
        '    "scipy>=1.10",',
        "",
        ("tests/test_dependencies.py",),
    ),
    Mutant(
        "api-no-share-warning",
        "dpcli.api.prune certifies without saying a class's kept share strayed",
        "dpcli/api.py",
        "cert = certify_selection(S, pruned, cfg, ctx)",
        "cert = certify_selection(S, pruned, cfg, Context(S=S, labels=np.zeros(n, dtype=np.int64)))",
        ("tests/test_api.py::test_prune_warns_of_a_skewed_class_share_like_the_cli",),
    ),
    Mutant(
        "freeze-head-fit-options-dropped",
        "--max-iter/--tol never reach the --freeze-backbone head fit",
        "dpcli/stages/embeddings.py",
        '        emb,\n        out_dir / "influence.h5",\n        icfg,\n        damping=damping,\n        tol=tol,\n        max_iter=max_iter,\n        device=device,\n        info=info,\n        space=ds.samples,\n',
        '        emb, out_dir / "influence.h5", icfg, damping=damping, device=device, info=info, space=ds.samples\n',
        ("tests/cli/test_options_act.py::test_the_head_fit_options_reach_the_frozen_backbone_fit",),
    ),
    Mutant(
        "train-damping-ignored",
        "train takes --damping without --freeze-backbone and ignores it",
        "dpcli/cli/train.py",
        'o.refuse(o.given(), ("damping", "max_iter", "tol"),',
        'o.refuse(o.given(), ("max_iter", "tol"),',
        ("tests/cli/test_options_act.py::test_train_refuses_options_its_path_would_leave_unused",),
    ),
    Mutant(
        "reference-drops-an-option",
        "the generated CLI reference leaves out each panel's first option",
        "dpcli/cli/reference.py",
        "        for p in params:",
        "        for p in params[1:]:",
        ("tests/cli/test_reference.py::test_every_option_row_of_the_help_screen_is_in_the_command_table",),
    ),
    # ---- issue 32: no silent wrong answers
    Mutant(
        "checksum-S-unverified",
        "prune reads a bit-flipped S without checking its checksum",
        "dpcli/stages/core.py",
        '        verify_dataset(f["S"], path, "S", values=S)',
        "        pass",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "checksum-open-unverified",
        "an artifact's small datasets are not checked when it is opened",
        "dpcli/artifacts/h5.py",
        "        verify(f, path)\n",
        "        pass\n",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "link-followed",
        "an HDF5 link out of the artifact is followed as if it were its data",
        "dpcli/artifacts/integrity.py",
        "if not isinstance(link, h5py.HardLink):",
        "if False:",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "epochs-missing-resumes",
        "a checkpoint copied without its .epochs/ folder resumes with a partial trajectory",
        "dpcli/train/loop.py",
        "        epochlog.check_complete(out, start, len(recorder._records))\n",
        "",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "trajectory-tail-accepted",
        "a trajectory holding only the last epochs is replayed as the whole run",
        "dpcli/train/trajectory.py",
        "if not np.array_equal(traj.epochs, np.arange(epochs_done)):",
        "if int(traj.epochs[-1]) + 1 != epochs_done:",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "nan-weights-damping",
        "NaN weights reach the Hessian and are reported as a --damping problem",
        "dpcli/train/loop.py",
        "    _check_weights(path, ck.state)\n",
        "",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "npy-declared-size",
        "a .npy that declares more data than it holds is mapped anyway",
        "dpcli/artifacts/integrity.py",
        "    if held < declared:\n",
        "    if False:\n",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "influence-out-checkpoint",
        "influence --out equal to its checkpoint is not refused before work",
        "dpcli/cli/influence.py",
        '    check_distinct({"--out": out}, {"the checkpoint": ck_path})',
        "    pass",
        ("tests/artifacts/test_integrity.py",),
    ),
    Mutant(
        "sighup-default",
        "SIGHUP keeps its default action: the job dies silently, exit -1",
        "dpcli/cli/application.py",
        "(signal.SIGHUP, signal.SIG_DFL)",
        "(signal.SIGHUP, None)",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "json-epipe-is-an-error",
        "a reader gone from stdout is reported as a write error (exit 74)",
        "dpcli/console.py",
        "    except BrokenPipeError:\n        raise ReaderGone() from None\n",
        "",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "json-closed-stdout",
        "a closed stdout (>&-) ends in an AttributeError after the mask was written",
        "dpcli/console.py",
        "        if sys.stdout is None:  # started with stdout closed (>&-)\n"
        '            raise OSError(errno.EBADF, "stdout is closed")\n',
        "",
        ("tests/cli/test_signals.py",),
    ),
    Mutant(
        "empty-mask-warned",
        "--epsilon that admits the whole set publishes a mask keeping nothing",
        "dpcli/select/base.py",
        "    if not np.any(keep):  # as --prune-count",
        "    if False:  # as --prune-count",
        ("tests/select/test_auto.py::test_an_epsilon_that_admits_the_whole_set_is_refused_like_pruning_every_sample",),
    ),
    Mutant(
        "unused-classes-warned",
        "a stray label 99 among 0..9 builds a 100-class S after a warning",
        "dpcli/data/embeddings.py",
        "        if not declared:\n",
        "        if False:\n",
        (
            "tests/influence/test_embeddings.py::test_labels_that_leave_class_indices_unused_are_refused_unless_declared",
        ),
    ),
    # ---- issue 29 item 6: shared options spelled out per command and gathered in its body
    Mutant(
        "gather-swapped",
        "verify-bound gathers --lr into momentum and --momentum into lr",
        "dpcli/cli/verify.py",
        "        lr=lr,\n        momentum=momentum,\n",
        "        lr=momentum,\n        momentum=lr,\n",
        ("tests/cli/test_gather.py",),
    ),
    Mutant(
        "gather-run-root-dropped",
        "retrain leaves --run-root out of its Job (the field's default, None, is used)",
        "dpcli/cli/retrain.py",
        "run_root=run_root, ",
        "",
        ("tests/cli/test_gather.py",),
    ),
    Mutant(
        "gather-sgd-epochs-dropped",
        "influence ignores --sgd-epochs (gathered as None: replays every epoch)",
        "dpcli/cli/influence.py",
        "sgd_epochs=sgd_epochs,",
        "sgd_epochs=None,",
        ("tests/cli/test_gather.py",),
    ),
    Mutant(
        "stderr-unsettled",
        "the entry point leaves stderr's last bytes to Python's shutdown (exit 120 under env -i)",
        "dpcli/cli/__init__.py",
        "    _settle_stderr()\n",
        "",
        ("tests/cli/test_bare_env.py",),
    ),
    Mutant(
        "stop-wrapped-unseen",
        "a stop signal that a C callback (h5py's visit) wrapped in a SystemError ends in a traceback and exit 1",
        "dpcli/cli/application.py",
        "            stop = _stop_behind(exc)\n            if stop is None:\n                raise\n",
        "            stop = None\n            if stop is None:\n                raise\n",
        ("tests/cli/test_signals.py",),
    ),
    # ---- the house: CI runs the README's test command word for word
    Mutant(
        "ci-runs-pytest-only",
        ".ci/run skips the lint, format and type checks the README's test command runs",
        ".ci/run",
        "ruff check && ruff format --check && mypy && pytest\n",
        "pytest\n",
        ("tests/test_ci.py",),
    ),
    Mutant(
        "checkers-unpinned",
        "the dev extra lets ruff float to any release (a new one may judge the same code differently)",
        "pyproject.toml",
        '"ruff==0.17.6"',
        '"ruff>=0.6"',
        ("tests/test_ci.py",),
    ),
)


class SnippetError(RuntimeError):
    """A mutant's ``old`` snippet is not in its file exactly once: re-point the mutant."""


def tree_files(root: Path) -> list[str]:
    """The working tree as git sees it (tracked plus untracked, non-ignored), else everything."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
        ).stdout
        return [p for p in out.decode().split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
        ]


def copy_tree(root: Path, dest: Path) -> None:
    for rel in tree_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def check(m: Mutant, tree: Path) -> str:
    """The text of the mutant's file in ``tree``, after checking its snippet occurs exactly once."""
    path = tree / m.path
    if not path.is_file():
        raise SnippetError(f"{m.id}: {m.path} does not exist")
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise SnippetError(f"{m.id}: the snippet {m.old!r} occurs {count} times in {m.path}, not once")
    return text


def apply(m: Mutant, tree: Path) -> None:
    (tree / m.path).write_text(check(m, tree).replace(m.old, m.new))


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run pytest on ``tests`` in ``tree``; returns (outcome, seconds, first failing test or note)."""
    missing = [t for t in tests if not (tree / t.split("::")[0]).is_file()]
    if missing:
        raise SnippetError(f"test file(s) not found: {', '.join(missing)}")
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    which = subprocess.run(
        [sys.executable, "-c", "import dpcli, sys; sys.stdout.write(dpcli.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if which.returncode == 0 and not Path(which.stdout).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"dpcli imports from {which.stdout}, not from the copy {tree}")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, f"no result within {timeout:g}s"
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    note = failed.group(1) if failed else ""
    if proc.returncode in (0, 1, 2):
        return {0: "passed", 1: "failed", 2: "error"}[proc.returncode], seconds, note
    return f"pytest exit {proc.returncode}", seconds, out.strip().splitlines()[-1] if out.strip() else ""


def run_mutant(m: Mutant, timeout: float) -> tuple[str, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"dpcli-mutant-{m.id}-") as tmp:
        tree = Path(tmp) / "repo"
        copy_tree(ROOT, tree)
        apply(m, tree)
        outcome, seconds, note = run_tests(tree, m.tests, timeout)
    verdict = {"passed": "MISSED", "failed": "caught", "error": "caught"}.get(outcome, outcome)
    if outcome == "error":
        note = f"collection error {note}".strip()
    return verdict, seconds, note


def baseline(mutants: list[Mutant], timeout: float) -> None:
    """The unmutated tree must pass every test file the mutants use."""
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="dpcli-mutant-baseline-") as tmp:
        tree = Path(tmp) / "repo"
        copy_tree(ROOT, tree)
        outcome, seconds, note = run_tests(tree, tests, timeout)
    print(f"baseline (unmutated, {len(tests)} test targets): {outcome} in {seconds:.0f}s {note}", flush=True)
    if outcome != "passed":
        raise RuntimeError(f"the unmutated suite does not pass ({outcome} {note}); fix that first")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", metavar="ID", help="run only this mutant (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the test files")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run [1800]")
    args = ap.parse_args(argv)
    known = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.only or () if i not in known]
    if unknown:
        print(f"mutants: error: unknown mutant(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    chosen = [known[i] for i in args.only] if args.only else list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.id:26s} {m.path:36s} {' '.join(m.tests)}\n{'':26s} {m.description}")
        return 0
    try:
        for m in chosen:  # every snippet must apply, and every test file exist, before anything runs
            check(m, ROOT)
            for test in m.tests:
                if not (ROOT / test.split("::")[0]).is_file():
                    raise SnippetError(f"{m.id}: test file {test} not found")
        if not args.no_baseline:
            baseline(chosen, args.timeout)
        rows = []
        for m in chosen:
            verdict, seconds, note = run_mutant(m, args.timeout)
            rows.append((m, verdict, seconds, note))
            print(f"{m.id:26s} {verdict:8s} {seconds:6.1f}s  {note}", flush=True)
    except (SnippetError, RuntimeError) as exc:
        print(f"mutants: error: {exc}", file=sys.stderr)
        return 2
    missed = [m.id for m, v, _, _ in rows if v != "caught"]
    print()
    print("| mutant | what it breaks | file | verdict | seconds | first failing test |")
    print("|---|---|---|---|---:|---|")
    for m, verdict, seconds, note in rows:
        print(f"| `{m.id}` | {m.description} | `{m.path}` | {verdict} | {seconds:.1f} | `{note}` |")
    print(
        f"\n{len(rows) - len(missed)} of {len(rows)} mutants caught"
        + (f"; not caught: {', '.join(missed)}" if missed else "")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
