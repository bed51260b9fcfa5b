"""Joint multi-view NMF against fitting each view alone (issue 19, multi-view done-when).

Run from the repository root (a few minutes on a 2-core machine shared with other jobs)::

    nice -n 10 python experiments/multiview.py          # writes experiments/results/multiview.md
    nice -n 10 python experiments/multiview.py --quick  # one data set per kind

Simulated data (3 data sets, seeds 0, 1, 2, per kind): one shared H (rank 5 × 200 samples,
entries Gamma(0.5, 1)); a strong view of 250 features at a mean of 5 counts per entry and a
weak view of 150 features at a tenth of that depth (0.5 per entry); W columns Gamma(0.5, 1)
draws. Two kinds, each with two likelihoods:

* ``poisson+negbin``: strong view Poisson, weak view negative binomial (φ per feature,
  log-uniform on [2, 20], X ~ Poisson(Gamma(φ, φ/μ)));
* ``negbin+poisson``: strong view negative binomial (as above), weak view Poisson.

Each view is fitted with its own likelihood: jointly (``bnmf.fit({"strong": X1, "weak": X2},
5, model={...}, method="map", tol=1e-6)``) and alone (``bnmf.fit(X_v, 5, model=...,
method="map", tol=1e-6)``): every fit run to 1e-6 nats per entry per 10 updates (3,000
updates at most), so the table compares the models' MAPs, not where a stopping rule left
them. A second table repeats the joint and strong-view fits at the default stopping rule
(tol 1e-4).
Recovery is the Hungarian-matched cosine with the truth (mean over the 5 components) of H's
rows (over samples) and of each view's W columns.

Real data: SBS96 of 21 breast genomes (``bnmf.datasets.load_breast21``) with DBS78 of 6 of
them (``load_breast_dbs78``, bundled from SigProfilerExtractor's wheel; the DBS view is
unobserved for the other 15 samples), both Poisson, rank 3. 10% of the DBS entries are held
out in each of 5 disjoint folds (:func:`bnmf.selection.heldout_masks`); the joint fit and the
DBS-only fit score them by their plug-in MAP density (``log_likelihood``), mean per held-out
entry with the paired standard error of the difference over entries.
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
from bnmf.datasets import load_breast21, load_breast_dbs78
from bnmf.selection import heldout_masks

sys.path.insert(0, str(Path(__file__).parent))
from _markdown import markdown_table

RANK, N_SAMPLES = 5, 200
FEATURES = {"strong": 250, "weak": 150}
DEPTH = {"strong": 5.0, "weak": 0.5}  # mean count per entry: the weak view at a tenth
PHI_RANGE = (2.0, 20.0)
KINDS = {"poisson+negbin": {"strong": "poisson", "weak": "negbin"},
         "negbin+poisson": {"strong": "negbin", "weak": "poisson"}}
SEEDS = (0, 1, 2)
TOL, MAX_ITER = 1e-6, 3000


def simulate(seed: int, likelihoods: dict):
    """{view: X}, {view: W}, H."""
    rng = np.random.default_rng(seed)
    H = rng.gamma(0.5, 1.0, (RANK, N_SAMPLES))
    X, W = {}, {}
    for view, n_features in FEATURES.items():
        W[view] = rng.gamma(0.5, 1.0, (n_features, RANK))
        W[view] *= DEPTH[view] / (W[view] @ H).mean()
        mean = W[view] @ H
        if likelihoods[view] == "negbin":
            phi = np.exp(rng.uniform(*np.log(PHI_RANGE), n_features))[:, None]
            mean = rng.gamma(phi, mean / phi)
        X[view] = rng.poisson(mean)
    return X, W, H


def matched(A, B) -> float:
    return float(bnmf.match(np.asarray(A), np.asarray(B))["cosine"].mean())


def simulated(kinds, seeds) -> pd.DataFrame:
    rows = []
    for kind in kinds:
        likelihoods = KINDS[kind]
        for seed in seeds:
            X, W, H = simulate(seed, likelihoods)
            start = time.time()
            converged = {"method": "map", "seed": seed, "tol": TOL, "max_iter": MAX_ITER}
            joint = bnmf.fit(X, RANK, model=likelihoods, **converged)
            alone = {v: bnmf.fit(X[v], RANK, model=likelihoods[v], **converged) for v in X}
            default = bnmf.fit(X, RANK, model=likelihoods, method="map", seed=seed)
            default_alone = bnmf.fit(X["strong"], RANK, model=likelihoods["strong"],
                                     method="map", seed=seed)
            rows.append({
                "kind": kind, "seed": seed,
                "H joint": matched(joint.H.T, H.T),
                "H strong alone": matched(alone["strong"].H.T, H.T),
                "H weak alone": matched(alone["weak"].H.T, H.T),
                "W weak joint": matched(joint.W["weak"], W["weak"]),
                "W weak alone": matched(alone["weak"].W, W["weak"]),
                "W strong joint": matched(joint.W["strong"], W["strong"]),
                "W strong alone": matched(alone["strong"].W, W["strong"]),
                "joint updates": joint.info["iterations"],
                "H joint (default tol)": matched(default.H.T, H.T),
                "H strong alone (default tol)": matched(default_alone.H.T, H.T),
                "updates (default tol): joint": default.info["iterations"],
                "strong alone": default_alone.info["iterations"],
                "seconds (5 fits)": time.time() - start,
            })
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def breast(folds: int = 5, holdout: float = 0.1) -> pd.DataFrame:
    sbs, dbs = load_breast21(), load_breast_dbs78()
    observed = np.ones(dbs.shape, bool)
    held_masks = heldout_masks(observed, holdout, folds, seed=0)
    full = dbs.reindex(columns=sbs.columns)  # the joint fit's sample axis (NaN: not measured)
    rows = []
    for fold, held in enumerate(held_masks):
        joint = bnmf.fit({"sbs": sbs, "dbs": dbs}, 3, method="map",
                         mask={"dbs": ~held})
        alone = bnmf.fit(dbs, 3, method="map", mask=~held)
        held_full = pd.DataFrame(held, index=dbs.index, columns=dbs.columns).reindex(
            columns=sbs.columns, fill_value=False).to_numpy()
        lpd_joint = joint.log_likelihood(view="dbs", X_new=full, mask=held_full)[held_full]
        lpd_alone = alone.log_likelihood(dbs, mask=held)[held]
        diff = lpd_joint - lpd_alone
        rows.append({"fold": fold, "held-out entries": int(held.sum()),
                     "lpd joint": lpd_joint.mean(), "lpd DBS alone": lpd_alone.mean(),
                     "difference": diff.mean(),
                     "se": diff.std(ddof=1) / np.sqrt(diff.size)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    joint = bnmf.fit({"sbs": sbs, "dbs": dbs}, 3, method="map")
    sbs_alone = bnmf.fit(sbs, 3, method="map")
    table.attrs["H joint vs SBS alone"] = matched(joint.H.T, sbs_alone.H.T)
    table.attrs["W_sbs joint vs SBS alone"] = matched(joint.W["sbs"], sbs_alone.W)
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    out = []
    for kind, group in table.groupby("kind", sort=False):
        out.append({
            "kind": kind, "data sets": len(group),
            "H: joint > strong alone": int((group["H joint"] > group["H strong alone"]).sum()),
            "H: joint > weak alone": int((group["H joint"] > group["H weak alone"]).sum()),
            "W weak: joint > alone": int((group["W weak joint"] > group["W weak alone"]).sum()),
        })
    return pd.DataFrame(out)


def report(sim: pd.DataFrame, real: pd.DataFrame, command: str, total: float) -> str:
    lines = [
        "# Joint multi-view NMF against each view alone",
        "",
        (f"Command: `{command}` ({total / 60:.1f} min; {platform.machine()}, "
         f"{os.cpu_count()} CPUs shared with other jobs; jax {jax.__version__}; "
         f"bnmf {bnmf.__version__}). Data and fits: see the docstring of "
         "`experiments/multiview.py`."),
        "",
        "## Simulated: shared H, two likelihoods, the weak view at a tenth of the depth",
        "",
        ("Hungarian-matched cosine with the truth (mean over 5 components), MAP fits run to "
        "convergence (tol=1e-6)."),
        "",
        markdown_table(sim[[c for c in sim.columns if "default" not in c and c not in
                            ("strong alone", "seconds (5 fits)")]], floatfmt=".5f",
                       index=False),
        "",
        "Data sets where the joint fit beats the single-view fits:",
        "",
        markdown_table(summary(sim), index=False),
        "",
        ("At the default stopping rule (tol=1e-4 nats per entry per 10 updates) the fits stop "
        "earlier; there the joint H is below the strong view's alone on the poisson+negbin "
        "data and above it on the negbin+poisson data (the weak view holds about 6% of the "
        "counts, so its gain for H is small and needs a converged fit to show):"),
        "",
        markdown_table(sim[["kind", "seed", "H joint (default tol)",
                            "H strong alone (default tol)", "updates (default tol): joint",
                            "strong alone"]], floatfmt=".5f", index=False),
        "",
        "## Real: breast SBS96 (21 genomes) with DBS78 (6 of them)",
        "",
        ("Held-out DBS entries (10% per fold, 5 disjoint folds), log predictive density per "
        "entry (nats, MAP plug-in), joint SBS+DBS fit against the DBS-only fit, rank 3; "
        "`se`: paired standard error of the difference over the fold's entries."),
        "",
        markdown_table(real, floatfmt=".4f", index=False),
        "",
        (f"All folds: mean difference {real['difference'].mean():+.4f} nats per entry. "
         f"Shared H of the joint fit (all DBS entries) against the SBS-only fit's H: matched "
         f"cosine {real.attrs['H joint vs SBS alone']:.4f}; SBS parts "
         f"{real.attrs['W_sbs joint vs SBS alone']:.4f} (320 doublets barely move what 183,916 "
         "substitutions determine). The DBS-only fit (rank 3 from 6 samples) puts held-out "
         "entries at near-zero rates; the joint fit takes those samples' activities from "
         "their substitutions."),
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one data set per kind")
    parser.add_argument("--out", default="experiments/results/multiview.md")
    args = parser.parse_args()
    start = time.time()
    sim = simulated(KINDS, SEEDS[:1] if args.quick else SEEDS)
    real = breast(folds=2 if args.quick else 5)
    command = "python experiments/multiview.py" + (" --quick" if args.quick else "")
    text = report(sim, real, command, time.time() - start)
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)
        sim.to_csv(Path(args.out).with_suffix(".csv"), index=False)


if __name__ == "__main__":
    main()
