"""Minibatch CAVI on 2,000 genes × 100,000 cells of sparse counts: time, peak memory, accuracy.

Counts are simulated from the Poisson–gamma model (rank 10, about 5% non-zero, as in
single-cell data) block by block, so the dense matrix (1.6 GB in float64) never exists. The
script then runs, each measured on its own:

* ``bnmf.fit(X, method="cavi", batch_size=...)``: minibatch (stochastic) CAVI over cells;
* ``bnmf.fit(X, method="cavi")``: full-batch CAVI on the same sparse X, for the bound and the
  memory it needs (O(nnz · rank) per sweep).

Peak memory is the growth of the resident set during the call (VmHWM, reset through
/proc/self/clear_refs), on top of the process's RSS before it (reported too). Accuracy: the
final bound of each fit per observed entry, and the cosine similarity of the fitted parts to
the true ones after one-to-one matching.

Usage::

    PYTHONPATH=. python experiments/minibatch_scale.py [--cells 100000] [--genes 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import bnmf  # noqa: E402
from bnmf.data import prepare  # noqa: E402
from bnmf.inference import Problem  # noqa: E402
from bnmf.inference.cavi import fit_cavi  # noqa: E402
from bnmf.models.counts import sparse_counts  # noqa: E402
from bnmf.models import PoissonGamma  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from speed import _status_kib, measure  # noqa: E402


def simulate(genes: int, cells: int, rank: int, density: float, seed: int = 0):
    """Sparse Poisson–gamma counts (genes × cells, CSC) and the true W, built in blocks."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, size=(genes, rank))
    H = rng.gamma(0.5, 1.0, size=(rank, cells))
    # Scale so the mean count gives about ``density`` non-zeros (a Poisson with mean m is
    # non-zero with probability 1 - exp(-m); heterogeneity makes it a little lower).
    W *= -np.log1p(-density) / (W.mean(axis=0).sum() * H.mean())
    blocks = []
    for start in range(0, cells, 5_000):
        rate = W @ H[:, start:start + 5_000]
        blocks.append(sp.csc_matrix(rng.poisson(rate).astype(np.float32)))
    return sp.hstack(blocks, format="csc"), W


def parts_similarity(W_fit: np.ndarray, W_true: np.ndarray) -> float:
    """Mean cosine similarity of matched columns."""
    a = W_fit / np.linalg.norm(W_fit, axis=0)
    b = W_true / np.linalg.norm(W_true, axis=0)
    cos = a.T @ b
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--full-sweeps", type=int, default=200)
    parser.add_argument("--num-draws", type=int, default=50)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    X, W_true = simulate(args.genes, args.cells, args.rank, args.density)
    print(f"simulated {args.genes:,} × {args.cells:,}: {X.nnz:,} non-zeros "
          f"({X.nnz / (X.shape[0] * X.shape[1]):.1%}), {time.perf_counter() - start:.1f} s; "
          f"CSC {(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20:.0f} MiB, "
          f"dense float64 would be {X.shape[0] * X.shape[1] * 8 / 2**20:,.0f} MiB")
    n_observed = X.shape[0] * X.shape[1]
    common = {"method": "cavi", "progress": False, "num_draws": args.num_draws}
    runs = {
        "minibatch CAVI": {"batch_size": args.batch_size, "epochs": args.epochs},
        "full-batch CAVI": {"max_iter": args.full_sweeps},
    }
    # The inference function alone on the sparse Problem (what bnmf.fit runs after validation,
    # before the ArviZ container), then the whole bnmf.fit.
    data = prepare(X, counts=True)
    model = PoissonGamma().resolve(data, args.rank)
    problem = Problem(X=sparse_counts(data.sparse, hidden=data.hidden), mask=None,
                      rank=args.rank, model=model)
    del data
    for name, options in runs.items():
        rss = _status_kib("VmRSS") / 1024
        raw, seconds, peak = measure(lambda: fit_cavi(problem, progress=False,
                                                      num_draws=args.num_draws, **options))
        print(f"{name} {options}, inference only: {seconds:.1f} s, peak RSS growth "
              f"{peak:,.0f} MiB over {rss:,.0f} MiB before; bound per entry "
              f"{raw.elbo / n_observed:.6f}", flush=True)
        del raw
        rss = _status_kib("VmRSS") / 1024
        fit, seconds, peak = measure(lambda: bnmf.fit(X, args.rank, **common, **options))
        print(f"{name} {options}, bnmf.fit: {seconds:.1f} s, peak RSS growth {peak:,.0f} MiB "
              f"over {rss:,.0f} MiB before; bound per entry {fit.elbo / n_observed:.6f}; "
              f"{fit.info['iterations']} steps/sweeps; parts cosine to truth "
              f"{parts_similarity(np.asarray(fit.W), W_true):.4f}", flush=True)
        del fit


if __name__ == "__main__":
    main()
