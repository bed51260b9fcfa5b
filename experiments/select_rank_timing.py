"""Timing of ``bnmf.select_rank`` and the speedup of batching restarts and folds with vmap.

1. The sweep of the issue: ranks 2–10, 3 folds × 4 restarts, on 96 × 500 simulated counts
   (true rank 5, 500 counts per sample), every other option at its default (SVI), end to end.
2. vmap versus a Python loop, at rank 5: the 16 fits of one rank (4 restarts on all
   entries + 4 on each of 3 training masks) as one batched program
   (:func:`bnmf.selection.fit_rank`, scoring included) against 16 calls of ``bnmf.fit``'s engine
   (:func:`bnmf.fitting.fit_data`, SVI with the same options, masks, starts and seeds), each
   then scored the same way. Both include compilation, as a user would see it.

Run from the repository root, after ``experiments/rank_selection.py``; writes (or replaces) the
section "Timing" at the end of ``experiments/results/rank_selection.md``::

    python experiments/select_rank_timing.py
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.models import PoissonGamma
from bnmf.selection import fit_rank, heldout_masks

SHAPE, TRUE_RANK, COUNTS = (96, 500), 5, 500
FOLDS, RESTARTS, HOLDOUT = 3, 4, 0.1
LOOP_RANKS = (5,)
MARKER = "## Timing"
RESULTS = Path(__file__).parent / "results" / "rank_selection.md"


def simulate(seed=0):
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (SHAPE[0], TRUE_RANK))
    W /= W.sum(axis=0)
    H = rng.dirichlet(np.ones(TRUE_RANK), SHAPE[1]).T * COUNTS
    return rng.poisson(W @ H).astype(float)


def markdown(table) -> str:
    """A DataFrame as a Markdown table (no tabulate dependency)."""
    head = "| rank | " + " | ".join(table.columns) + " |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    body = ["| " + " | ".join([str(k)] + [f"{v:.4g}" for v in row]) + " |"
            for k, row in zip(table.index, table.to_numpy(dtype=float))]
    return "\n".join([head, rule] + body)


def loop_of_fits(data, rank, heldout):
    """The same 16 fits as fit_rank, one bnmf fit at a time, then the same scoring."""
    model = PoissonGamma()
    train = np.concatenate([data.mask[None], data.mask[None] & ~heldout])
    best = {}
    for g in range(FOLDS + 1):
        seen = dataclasses.replace(data, mask=train[g], values=np.where(train[g], data.values, 0))
        for r in range(RESTARTS):
            fit = fit_data(seen, rank, model, "svi", seed=r,
                           init="nndsvda" if r == 0 else "random", progress=False)
            if g not in best or fit.elbo > best[g].elbo:
                best[g] = fit
    for f in range(FOLDS):
        best[f + 1].log_likelihood(data.values, mask=heldout[f])
    return best


def main():
    X = simulate()
    lines = [MARKER, "",
             "Made by `python experiments/select_rank_timing.py`. Simulated Poisson counts, "
             f"{SHAPE[0]} × {SHAPE[1]}, true rank {TRUE_RANK}, {COUNTS} counts per sample; "
             f"{FOLDS} folds × {RESTARTS} restarts (16 fits per rank); SVI with default options.",
             "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
             f"jobs (load average at start {os.getloadavg()[0]:.1f}); Python "
             f"{platform.python_version()}, jax {jax.__version__}, bnmf {bnmf.__version__}.", ""]
    t0 = time.perf_counter()
    sel = bnmf.select_rank(X, ranks=range(2, 11), method="svi", folds=FOLDS,
                           restarts=RESTARTS, seed=0, progress=False)
    sweep = time.perf_counter() - t0
    print(sel.table.to_string(), "\n", sel.reason, f"\nsweep {sweep:.0f}s", flush=True)
    lines += ["### Sweep of ranks 2–10", "",
              f"Total {sweep:.0f} s ({sweep / 60:.1f} min); best rank {sel.best_rank}.", "",
              markdown(sel.table), "", f"Reason: {sel.reason}", ""]

    data = prepare(X, counts=True)
    heldout = heldout_masks(data.mask, HOLDOUT, FOLDS, 0)
    lines += ["### vmap batch versus a loop of fits (16 fits of one rank, compilation included)",
              "", "| rank | batched (s) | loop of bnmf fits (s) | speedup |", "|---|---|---|---|"]
    for rank in LOOP_RANKS:
        t0 = time.perf_counter()
        fit_rank(data, rank, PoissonGamma(), "svi", heldout, RESTARTS, 0, "float32", 1000, {})
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop_of_fits(data, rank, heldout)
        loop = time.perf_counter() - t0
        print(f"rank {rank}: batched {batched:.1f}s, loop {loop:.1f}s", flush=True)
        lines.append(f"| {rank} | {batched:.1f} | {loop:.1f} | {loop / batched:.1f}× |")
    lines.append("")
    text = "\n".join(lines)
    # Keep what rank_selection.py wrote above the marker; replace an older timing section.
    before = RESULTS.read_text().split(MARKER)[0].rstrip() + "\n\n" if RESULTS.exists() else ""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(before + text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
