"""Calibration of the Gibbs sampler at real sizes, on data from the model and from other
generators: coverage of 50% / 90% intervals of W and H, R-hat, ESS per second, wall time.

Generators (W columns Dirichlet over features, X ~ Poisson(W H)):

* ``gamma-prior``: W, H from the ``poisson`` model's prior (shape 1, rates giving E[X] = 10),
  fitted with those hyperparameters (``gibbs``) — a calibrated sampler covers 0.50 / 0.90;
* ``dir0.1-skewed``: sparse parts Dirichlet(0.1), exposure shares Dirichlet(0.3), totals
  log-normal around 1,000 counts per sample;
* ``dir0.5-gamma``: Dirichlet(0.5) parts, gamma(0.8) exposures, 1,000 counts per sample;
* ``dir1.5-flat``: flat parts Dirichlet(1.5), shares Dirichlet(3), totals log-uniform in
  100–100,000 counts per sample;
* ``nb-dir0.5``: as ``dir0.5-gamma`` but overdispersed, X ~ NB(W H, φ) with φ per feature
  log-uniform in 2–50 (the generator of ``experiments/negbin.py``).

Methods: ``gibbs`` (model ``poisson``, data-set rates, shape 1), ``gibbs-hier`` (model
``poisson-hierarchical``: shapes and rates learned per component; bnmf.fit's default),
``gibbs-hier-orbit`` (the same with ``orbit_moves=True``), ``gibbs-hier-depth`` (the same
model with ``depth=True`` and orbit moves), ``gibbs-negbin`` (model ``negbin``, its
gamma–Poisson Gibbs sampler) and ``cavi`` (the fast
approximation, for comparison). Run from the repository root (the machine is shared: nice)::

    nice -n 15 python experiments/calibration_gibbs.py --sizes 96x600x6 --replicates 1 \\
        --generators dir0.5-gamma dir0.1-skewed --methods gibbs gibbs-hier cavi
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
from bnmf.models import HierarchicalPoissonGamma
from bnmf.posterior import align_permutation, normalize

sys.path.insert(0, str(Path(__file__).parent))
from _markdown import markdown_table

PROBS = (0.5, 0.9)
GENERATORS = ("gamma-prior", "dir0.1-skewed", "dir0.5-gamma", "dir1.5-flat", "nb-dir0.5")
METHODS = {
    "gibbs": {"method": "gibbs"},
    "gibbs-hier": {"method": "gibbs", "model": "poisson-hierarchical"},
    "gibbs-hier-orbit": {"method": "gibbs", "model": "poisson-hierarchical",
                         "orbit_moves": True},
    "gibbs-hier-depth": {"method": "gibbs", "model": HierarchicalPoissonGamma(depth=True),
                         "orbit_moves": True},
    "gibbs-negbin": {"method": "gibbs", "model": "negbin"},
    "cavi": {"method": "cavi"},
}
# bnmf.fit's defaults for method="gibbs", spelled out so the report states them
GIBBS_OPTIONS = {"num_chains": 4, "num_warmup": 500, "num_samples": 500}


def simulate(generator: str, F: int, N: int, K: int, seed: int):
    """(X, W, H, model options) with W, H in bnmf's scale convention."""
    rng = np.random.default_rng(seed)
    options, phi = {}, None
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
    elif generator == "nb-dir0.5":
        W = rng.dirichlet(np.full(F, 0.5), K).T
        H = rng.gamma(0.8, 1000.0 / (0.8 * K), (K, N))
        phi = np.exp(rng.uniform(np.log(2.0), np.log(50.0), F))[:, None]
    else:
        raise ValueError(generator)
    mean = W @ H if phi is None else rng.gamma(phi, W @ H / phi)  # NB: gamma–Poisson mixture
    X = rng.poisson(mean).astype(float)
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


def run(sizes, replicates, csv: Path, generators=GENERATORS, methods=tuple(METHODS),
        rows=None) -> pd.DataFrame:
    """Fit every size × generator × replicate × method, appending to ``rows`` (earlier
    results) and writing the CSV after each fit."""
    rows = list(rows or [])
    for F, N, K in sizes:
        for generator in generators:
            for seed in range(replicates):
                X, W, H, model_options = simulate(generator, F, N, K, seed)
                for label in methods:
                    spec = METHODS[label]
                    options = dict(spec)
                    if label in ("gibbs", "cavi"):  # the poisson model's own prior
                        options.update(model_options)
                    if options["method"] == "gibbs":
                        options.update(GIBBS_OPTIONS)
                    start = time.perf_counter()
                    fit = bnmf.fit(X, K, seed=seed, **options)
                    seconds = time.perf_counter() - start
                    row = {"size": f"{F}x{N} r{K}", "generator": generator, "method": label,
                           "seed": seed, "seconds": seconds,
                           "load": round(os.getloadavg()[0], 1), **coverage(fit, W, H)}
                    diag = fit.info.get("diagnostics")
                    if diag:
                        stats = fit.idata.sample_stats
                        ess = np.minimum(stats["ess_bulk_W"].values, stats["ess_tail_W"].values)
                        row.update({
                            "rhat_ok_W": 1 - diag["rhat_above_1.01_W"],
                            "rhat_ok_H": 1 - diag["rhat_above_1.01_H"],
                            "ess100_W": float(np.mean(ess >= 100)),
                            "ess_per_s_W": float(np.median(stats["ess_bulk_W"].values) / seconds),
                        })
                    rows.append(row)
                    print(row, flush=True)
                    pd.DataFrame(rows).to_csv(csv, index=False)
    return pd.DataFrame(rows)


def status(table: pd.DataFrame) -> str:
    """Which rows are evidence of calibration: those whose chains mixed (R-hat ≤ 1.01 for 99%
    of normalized W entries, bulk and tail ESS ≥ 100 for 95%); what was measured."""
    sampled = table[table["method"].str.startswith("gibbs")] if len(table) else table
    mixed = sampled[(sampled["rhat_ok_W"] >= 0.99) & (sampled["ess100_W"] >= 0.95)]
    measured = ", ".join(f"{size}: {', '.join(sorted(set(part['generator'])))}"
                         for size, part in table.groupby("size", sort=False))
    return (f"{len(table)} fits measured ({measured}); {len(mixed)} of {len(sampled)} Gibbs "
            "fits had mixed chains by the thresholds above. Coverage of a fit whose chains did "
            "not mix is not yet evidence of calibration (its intervals are from too few "
            "effective draws). Generators, sizes and replicates not listed were not run.")


def write_report(table: pd.DataFrame, command: str, out: Path) -> None:
    columns = [c for c in ("W_50", "W_90", "H_50", "H_90", "rhat_ok_W", "rhat_ok_H",
                           "ess100_W", "ess_per_s_W", "seconds") if c in table]
    summary = table.groupby(["size", "generator", "method"], sort=False)[columns].mean()
    with open(out, "w") as handle:
        handle.write("# Calibration of the Gibbs sampler at real sizes\n\n")
        handle.write(f"Made by `{command}` (see its docstring). Coverage = fraction of true "
                     "entries of W (columns summing to 1) or H inside the equal-tailed interval "
                     "after Hungarian alignment. `rhat_ok_W`: share of normalized W entries with "
                     "split R-hat ≤ 1.01 (`rhat_ok_H` the same for H); `ess100_W`: share with "
                     "bulk and tail ESS ≥ 100; "
                     "`ess_per_s_W`: median bulk ESS of W per second of wall time. Gibbs: "
                     f"{GIBBS_OPTIONS}.\n\n")
        loads = table["load"] if "load" in table else pd.Series(dtype=float)
        load = (f"1-minute load {loads.min():.0f}–{loads.max():.0f} at the end of the fits"
                if loads.notna().any() else "load not recorded")
        handle.write(f"Machine: {os.cpu_count()} CPU cores shared with other jobs ({load}, so "
                     "seconds are several times those of an idle machine); jax "
                     f"{jax.__version__}, Python {platform.python_version()}. Seconds include "
                     "the MAP starts and compilation.\n\n")
        handle.write("## Status\n\n" + status(table) + "\n\n")
        handle.write("## Mean over replicates\n\n" + markdown_table(summary) + "\n\n")
        handle.write("## Every run\n\n" + markdown_table(table, index=False) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["96x600x6"])
    parser.add_argument("--replicates", type=int, default=1)
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS),
                        choices=GENERATORS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in the CSV and add these fits")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    out = Path(__file__).parent / "results" / "calibration_gibbs.md"
    csv = out.with_suffix(".csv")
    command = ("nice -n 15 python experiments/calibration_gibbs.py --sizes "
               f"{' '.join(args.sizes)} --replicates {args.replicates} --generators "
               f"{' '.join(args.generators)} --methods {' '.join(args.methods)}"
               + (" --append" if args.append else ""))
    earlier = pd.read_csv(csv).to_dict("records") if (args.append or args.report_only) else []
    table = (pd.DataFrame(earlier) if args.report_only else
             run(sizes, args.replicates, csv, args.generators, args.methods, earlier))
    write_report(table, command, out)


if __name__ == "__main__":
    main()
