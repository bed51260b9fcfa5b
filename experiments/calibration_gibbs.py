"""Calibration of the Gibbs sampler at real sizes, on data from the model and from other
generators: coverage of 50% / 90% intervals of W and H, R-hat, ESS per second, wall time.

Generators (W columns Dirichlet over features, X ~ Poisson(W H)):

* ``gamma-prior``: W, H from the ``poisson`` model's prior (shape 1, rates giving E[X] = 10),
  fitted with those hyperparameters (``gibbs``) — a calibrated sampler covers 0.50 / 0.90;
* ``dir0.1-skewed``: sparse parts Dirichlet(0.1), exposure shares Dirichlet(0.3), totals
  log-normal around 1,000 counts per sample;
* ``dir0.5-gamma``: Dirichlet(0.5) parts, gamma(0.8) exposures, 1,000 counts per sample;
* ``dir1.5-flat``: flat parts Dirichlet(1.5), shares Dirichlet(3), totals log-uniform in
  100–100,000 counts per sample.

Methods: ``gibbs`` (model ``poisson``, data-set rates, shape 1), ``gibbs-hier`` (model
``poisson-hierarchical``: shapes and rates learned per component) and ``cavi`` (the fast
approximation, for comparison). Run from the repository root (the machine is shared: nice)::

    nice -n 10 python experiments/calibration_gibbs.py --sizes 96x600x6 --replicates 1
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

import bnmf
from bnmf.posterior import align_permutation, normalize

sys.path.insert(0, str(Path(__file__).parent))
from _markdown import markdown_table

PROBS = (0.5, 0.9)
GENERATORS = ("gamma-prior", "dir0.1-skewed", "dir0.5-gamma", "dir1.5-flat")
METHODS = {
    "gibbs": {"method": "gibbs"},
    "gibbs-hier": {"method": "gibbs", "model": "poisson-hierarchical"},
    "cavi": {"method": "cavi"},
}
GIBBS_OPTIONS = {"num_chains": 2, "num_warmup": 250, "num_samples": 300}


def simulate(generator: str, F: int, N: int, K: int, seed: int):
    """(X, W, H, model options) with W, H in bnmf's scale convention."""
    rng = np.random.default_rng(seed)
    options = {}
    if generator == "gamma-prior":
        rate = 1.0 / np.sqrt(10.0 / K)
        W = rng.gamma(1.0, 1.0 / rate, (F, K))
        H = rng.gamma(1.0, 1.0 / rate, (K, N))
        options = {"a": 1.0, "rate_W": rate, "rate_H": rate}
    elif generator == "dir0.1-skewed":
        W = rng.dirichlet(np.full(F, 0.1), K).T
        H = rng.dirichlet(np.full(K, 0.3), N).T * rng.lognormal(np.log(1000), 1.0, N)
    elif generator == "dir0.5-gamma":
        W = rng.dirichlet(np.full(F, 0.5), K).T
        H = rng.gamma(0.8, 1000.0 / (0.8 * K), (K, N))
    elif generator == "dir1.5-flat":
        W = rng.dirichlet(np.full(F, 1.5), K).T
        H = rng.dirichlet(np.full(K, 3.0), N).T * np.exp(rng.uniform(np.log(100), np.log(1e5), N))
    else:
        raise ValueError(generator)
    X = rng.poisson(W @ H).astype(float)
    W, H = normalize(W, H)
    return X, W, H, options


def coverage(fit, W, H) -> dict:
    perm = align_permutation(np.asarray(fit.W), W)
    out = {}
    for prob in PROBS:
        bounds = fit.interval(prob)
        for name, truth in (("W", W), ("H", H)):
            lower, upper = (np.asarray(b) for b in bounds[name])
            lower, upper = (lower[:, perm], upper[:, perm]) if name == "W" else (lower[perm], upper[perm])
            out[f"{name}_{round(100 * prob)}"] = float(((truth >= lower) & (truth <= upper)).mean())
    return out


def run(sizes, replicates, csv: Path) -> pd.DataFrame:
    rows = []
    for F, N, K in sizes:
        for generator in GENERATORS:
            for seed in range(replicates):
                X, W, H, model_options = simulate(generator, F, N, K, seed)
                for label, spec in METHODS.items():
                    options = dict(spec)
                    if label != "gibbs-hier":
                        options.update(model_options)
                    if options["method"] == "gibbs":
                        options.update(GIBBS_OPTIONS)
                    start = time.perf_counter()
                    fit = bnmf.fit(X, K, seed=seed, **options)
                    seconds = time.perf_counter() - start
                    row = {"size": f"{F}x{N} r{K}", "generator": generator, "method": label,
                           "seed": seed, "seconds": seconds, **coverage(fit, W, H)}
                    diag = fit.info.get("diagnostics")
                    if diag:
                        stats = fit.idata.sample_stats
                        ess = np.minimum(stats["ess_bulk_W"].values, stats["ess_tail_W"].values)
                        row.update({
                            "rhat_ok_W": 1 - diag["rhat_above_1.01_W"],
                            "ess100_W": float(np.mean(ess >= 100)),
                            "ess_per_s_W": float(np.median(stats["ess_bulk_W"].values) / seconds),
                        })
                    rows.append(row)
                    print(row, flush=True)
                    pd.DataFrame(rows).to_csv(csv, index=False)
    return pd.DataFrame(rows)


def write_report(table: pd.DataFrame, command: str, out: Path) -> None:
    columns = [c for c in ("W_50", "W_90", "H_50", "H_90", "rhat_ok_W", "ess100_W",
                           "ess_per_s_W", "seconds") if c in table]
    summary = table.groupby(["size", "generator", "method"], sort=False)[columns].mean()
    with open(out, "w") as handle:
        handle.write("# Calibration of the Gibbs sampler at real sizes\n\n")
        handle.write(f"Made by `{command}` (see its docstring). Coverage = fraction of true "
                     "entries of W (columns summing to 1) or H inside the equal-tailed interval "
                     "after Hungarian alignment. `rhat_ok_W`: share of normalized W entries with "
                     "split R-hat ≤ 1.01; `ess100_W`: share with bulk and tail ESS ≥ 100; "
                     "`ess_per_s_W`: median bulk ESS of W per second of wall time. Gibbs: "
                     f"{GIBBS_OPTIONS}.\n\n")
        handle.write(f"Machine: {os.cpu_count()} CPU cores shared with 6 other helpers' jobs "
                     f"(load 8–14 during the run, so seconds are several times those of an idle "
                     f"machine); jax {jax.__version__}, Python {platform.python_version()}. "
                     "Seconds include compilation.\n\n")
        handle.write("## Mean over replicates\n\n" + markdown_table(summary) + "\n\n")
        handle.write("## Every run\n\n" + markdown_table(table, index=False) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["96x600x6"])
    parser.add_argument("--replicates", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    out = Path(__file__).parent / "results" / "calibration_gibbs.md"
    csv = out.with_suffix(".csv")
    command = ("nice -n 10 python experiments/calibration_gibbs.py --sizes "
               f"{' '.join(args.sizes)} --replicates {args.replicates}")
    table = pd.read_csv(csv) if args.report_only else run(sizes, args.replicates, csv)
    write_report(table, command, out)


if __name__ == "__main__":
    main()
