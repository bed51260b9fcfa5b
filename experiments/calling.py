"""Presence calls and exposure intervals of ``bnmf.refit`` on low-count catalogues.

Setting (the issue's "Done when"): catalogues simulated from *real* exposure patterns against
the 65 PCAWG SigProfiler SBS96 signatures. For each replicate, ``n`` PCAWG genomes are drawn at
random (all cancer types); each one's published SigProfiler activities give its exposure
proportions; its total is drawn log-uniformly in [100, 5000] mutations; then
``X ~ Poisson(W H)``. A signature is truly active in a sample when its true share is ≥ 5%.

Compared, on the same catalogues:

* ``bnmf.refit`` with its defaults (at 65 signatures × 150 samples: the Gibbs sampler of the
  cohort-level hierarchical model :class:`bnmf.models.refit.RefitPoisson`, two chains of 500
  draws after 500 sweeps, two stages: screening over all 65 signatures for the calls, then
  exposures refitted without the signatures each sample clearly lacks; call = posterior
  probability ≥ 0.95 that the share is ≥ 5%);
* ``bnmf.refit(method="nuts")``, the former default: NUTS on the same model (now through
  bnmf's generic NUTS), same call rule;
* ``bnmf.refit(method="svi")``, a mean-field approximation of the same model (``--svi``);
* NNLS per sample (SciPy) with a 5% threshold on the share, the usual baseline (no intervals).

Reported: precision and recall of the presence calls, coverage of the 90% credible intervals
of the exposures of truly active signatures, and run time.

Run from the repository root::

    python experiments/calling.py           # writes experiments/results/calling.md
    python experiments/calling.py --quick   # one small replicate, prints only
    python experiments/calling.py --samples 100 --seeds 0 1 2   # smaller cohorts
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pandas as pd
from scipy.optimize import nnls

import bnmf
from bnmf.datasets import load_pcawg_signatures

sys.path.insert(0, str(Path(__file__).parent))
from _markdown import markdown_table

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ACTIVITIES = DATA / "pcawg_sbs96" / "PCAWG_sigProfiler_SBS_signatures_in_samples.csv.gz"
MIN_FRACTION = 0.05


def simulate(W: pd.DataFrame, n: int, seed: int, low: float = 100, high: float = 5000):
    """Counts X (96, n) and true exposures H (65, n) from real PCAWG exposure patterns."""
    rng = np.random.default_rng(seed)
    activities = pd.read_csv(ACTIVITIES)[W.columns].to_numpy(dtype=float)
    activities = activities[activities.sum(axis=1) > 0]
    chosen = activities[rng.choice(len(activities), n, replace=False)]
    proportions = chosen / chosen.sum(axis=1, keepdims=True)
    totals = np.exp(rng.uniform(np.log(low), np.log(high), n))
    H = (proportions * totals[:, None]).T
    X = rng.poisson(W.to_numpy() @ H)
    return X, H


def nnls_exposures(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.stack([nnls(W, x)[0] for x in X.T], axis=1)


def precision_recall(calls: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = (calls & truth).sum()
    return float(hits / max(calls.sum(), 1)), float(hits / max(truth.sum(), 1))


LABELS = {"gibbs": "bnmf.refit(method='gibbs') (default here), two-stage",
          "nuts": "bnmf.refit(method='nuts') (former default), two-stage",
          "svi": "bnmf.refit(method='svi'), mean-field, two-stage"}


def evaluate(W: pd.DataFrame, n: int, seed: int, methods=("gibbs", "nuts")) -> list[dict]:
    X, H = simulate(W, n, seed)
    truth = H / H.sum(axis=0) >= MIN_FRACTION
    rows = []
    start = time.perf_counter()
    H_nnls = nnls_exposures(W.to_numpy(), X)
    seconds = time.perf_counter() - start
    precision, recall = precision_recall(H_nnls / np.maximum(H_nnls.sum(0), 1e-300)
                                         >= MIN_FRACTION, truth)
    rows.append({"method": "NNLS + 5% threshold", "seed": seed, "samples": n,
                 "precision": precision, "recall": recall, "coverage_90": np.nan,
                 "coverage_50": np.nan, "seconds": seconds, "divergences": np.nan})
    for method in methods:
        start = time.perf_counter()
        calls = bnmf.refit(X, W.to_numpy(), method=method, seed=seed)
        seconds = time.perf_counter() - start
        active = np.asarray(calls.active(min_fraction=MIN_FRACTION, prob=0.95))
        precision, recall = precision_recall(active, truth)
        coverage = {}
        for prob in (0.9, 0.5):
            lower, upper = (np.asarray(b) for b in calls.interval(prob))
            coverage[prob] = float(((H >= lower) & (H <= upper))[truth].mean())
        rows.append({"method": LABELS[method], "seed": seed, "samples": n, "precision": precision,
                     "recall": recall, "coverage_90": coverage[0.9], "coverage_50": coverage[0.5],
                     "seconds": seconds, "divergences": calls.info.get("divergences", np.nan)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small replicate, print only")
    parser.add_argument("--samples", type=int, default=150, help="samples per replicate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--large", type=int, default=300,
                        help="samples of one more replicate (Gibbs only; 0: none)")
    parser.add_argument("--svi", action="store_true", help="also run method='svi'")
    args = parser.parse_args(argv)
    methods = ("gibbs", "nuts", "svi") if args.svi else ("gibbs", "nuts")
    if not ACTIVITIES.exists():
        sys.exit(f"missing data: {ACTIVITIES} (the shared PCAWG folder); nothing to run.")
    W = load_pcawg_signatures()
    if args.quick:
        print(pd.DataFrame(evaluate(W, 40, 0, methods)).to_string())
        return
    rows = []
    for seed in args.seeds:
        rows += evaluate(W, args.samples, seed, methods)
    if args.large:
        rows += evaluate(W, args.large, max(args.seeds) + 1, methods=("gibbs",))
    table = pd.DataFrame(rows)
    summary = table.groupby("method", sort=False)[
        ["precision", "recall", "coverage_90", "coverage_50", "seconds"]].mean()
    out = Path(__file__).parent / "results" / "calling.md"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w") as handle:
        handle.write("# Presence calls and exposure intervals on low-count catalogues\n\n")
        command = " ".join(["python experiments/calling.py", *(argv or sys.argv[1:])])
        handle.write(f"Made by `{command}` (see its docstring for the "
                     "setting): catalogues of 100–5,000 mutations per sample simulated from "
                     "published PCAWG exposure patterns against the 65 PCAWG signatures; a "
                     "signature is active where its true share is ≥ 5%; bnmf calls it active "
                     "where P(share ≥ 5%) ≥ 0.95. Coverage is over the exposures of truly "
                     "active signatures.\n\n")
        handle.write(f"Machine: {platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPU cores (shared with other jobs, so times are rough); "
                     f"jax {jax.__version__}, Python {platform.python_version()}.\n\n")
        handle.write("One stage only (`refine=False`, the screening fit's own exposures) gave, on "
                     "seeds 0–3 with the same priors, precision 0.993, recall 0.757 and 90% "
                     "coverage 0.746 (0.776, 0.747, 0.709 for 150 samples, 0.751 for 300) "
                     "with 12–86 NUTS divergences per run: a flat signature (SBS5) leaked ~11% of the counts "
                     "into absent ones (see git history of this file).\n\n")
        handle.write("## Mean over the replicates\n\n")
        handle.write(markdown_table(summary) + "\n\n")
        handle.write("## Every run\n\n")
        handle.write(markdown_table(table, index=False) + "\n")
    print(summary.to_string())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
