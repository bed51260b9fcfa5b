"""Calibration of ``bnmf.fit``: how often do the credible intervals of W and H cover the truth?

For every inference method in ``bnmf.inference.METHODS`` (so a method added later, e.g. a
closed-form CAVI, is measured on a rerun), repeated simulations in three settings:

* ``poisson-prior``: W, H drawn from the ``"poisson"`` model's own prior (gamma, shape 1, rates
  fixed and passed to the fit), X ~ Poisson(W H) — where a calibrated posterior must cover
  50% / 90% of true values with its 50% / 90% intervals;
* ``gaussian-prior``: the same for the ``"gaussian"`` model (half-normal priors, known noise
  scale prior);
* ``sbs-realistic``: 3 PCAWG signatures, Dirichlet exposures of 500–5,000 mutations per sample,
  X ~ Poisson(W H), fitted with the default (data-driven) priors.

True and fitted factors follow bnmf's convention (columns of W sum to 1, H carries the scale);
fitted components are matched to the true ones by Hungarian matching on cosine similarity.
Coverage is the fraction of entries of W (resp. H) inside the equal-tailed interval. ``map`` has
no interval and is listed for completeness.

Problems are small (30 features × 40 samples, rank 3) so that NUTS, the reference, runs.

Run from the repository root::

    python experiments/calibration.py            # writes experiments/results/calibration.md
    python experiments/calibration.py --quick    # one replicate per setting, prints only
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
from bnmf.datasets import load_pcawg_signatures
from bnmf.inference import METHODS
from bnmf.posterior import align_permutation, normalize

sys.path.insert(0, str(Path(__file__).parent))
from _markdown import markdown_table

N_FEATURES, N_SAMPLES, RANK = 30, 40, 3
PROBS = (0.5, 0.9)
# Options that keep each method's run to seconds on these sizes; everything else is default.
OPTIONS = {"nuts": {"num_warmup": 300, "num_samples": 300, "num_chains": 1}}


def simulate(setting: str, seed: int):
    """(X, W, H, model options) for one replicate; W, H in bnmf's scale convention."""
    rng = np.random.default_rng(seed)
    if setting == "poisson-prior":
        rate = 1.0 / np.sqrt(20.0 / RANK)          # prior mean entry sqrt(20 / K): E[X] = 20
        W = rng.gamma(1.0, 1.0 / rate, (N_FEATURES, RANK))
        H = rng.gamma(1.0, 1.0 / rate, (RANK, N_SAMPLES))
        X = rng.poisson(W @ H).astype(float)
        options = {"model": "poisson", "a": 1.0, "rate_W": rate, "rate_H": rate}
    elif setting == "gaussian-prior":
        scale, noise_scale = 1.0, 0.5
        W = np.abs(rng.normal(0, scale, (N_FEATURES, RANK)))
        H = np.abs(rng.normal(0, scale, (RANK, N_SAMPLES)))
        sigma = abs(rng.normal(0, noise_scale))
        X = np.abs(W @ H + rng.normal(0, sigma, (N_FEATURES, N_SAMPLES)))  # NMF needs X ≥ 0
        options = {"model": "gaussian", "scale_W": scale, "scale_H": scale,
                   "scale_sigma": noise_scale}
    elif setting == "sbs-realistic":
        signatures = load_pcawg_signatures()
        W = signatures.to_numpy()[:, rng.choice(signatures.shape[1], RANK, replace=False)]
        totals = np.exp(rng.uniform(np.log(500), np.log(5000), N_SAMPLES))
        H = rng.dirichlet(np.full(RANK, 0.7), N_SAMPLES).T * totals
        X = rng.poisson(W @ H).astype(float)
        options = {"model": "poisson"}
    else:
        raise ValueError(setting)
    W, H = normalize(W, H)
    return X, W, H, options


def coverage(fit, W, H) -> dict:
    perm = align_permutation(np.asarray(fit.W), W)
    out = {}
    for prob in PROBS:
        bounds = fit.interval(prob)
        for name, truth in (("W", W), ("H", H)):
            lower, upper = (np.asarray(b) for b in bounds[name])
            if name == "W":
                lower, upper = lower[:, perm], upper[:, perm]
            else:
                lower, upper = lower[perm], upper[perm]
            out[f"{name}_{round(100 * prob)}"] = float(((truth >= lower) & (truth <= upper)).mean())
    return out


def run(settings, seeds) -> pd.DataFrame:
    rows = []
    for setting in settings:
        for seed in seeds:
            X, W, H, options = simulate(setting, seed)
            model = options.pop("model")
            for method in METHODS:
                for guide in (("normal", "lowrank") if method == "svi" else (None,)):
                    label = method if guide is None else f"svi-{guide}"
                    extra = dict(OPTIONS.get(method, {}))
                    if guide is not None:
                        extra["guide"] = guide
                    start = time.perf_counter()
                    try:
                        fit = bnmf.fit(X, RANK, model=model, method=method, seed=seed,
                                       **options, **extra)
                    except (ValueError, TypeError) as err:   # a method without this model
                        print(f"{setting} {label}: not run ({err})", flush=True)
                        continue
                    seconds = time.perf_counter() - start
                    row = {"setting": setting, "method": label, "seed": seed, "seconds": seconds}
                    if fit.num_draws > 1:
                        row.update(coverage(fit, W, H))
                    rows.append(row)
                    print(row, flush=True)
    return pd.DataFrame(rows)


def verdict(table: pd.DataFrame, low: float = 0.85, high: float = 0.95) -> str:
    """Which method is the cheapest whose 90% intervals of W and H both cover ``low``–``high``
    of the truth, averaged over the ``*-prior`` settings (data simulated from the model)."""
    prior = table[table["setting"].str.endswith("-prior")].dropna(subset=["W_90", "H_90"])
    means = prior.groupby("method")[["W_90", "H_90", "seconds"]].mean().sort_values("seconds")
    header = ("On data simulated from the model (`*-prior` settings, mean over settings and "
              "replicates), 90% coverage of W / H and seconds per fit:")
    lines = [header, ""]
    lines += [f"- `{m}`: {r.W_90:.2f} / {r.H_90:.2f}, {r.seconds:.0f} s"
              for m, r in means.iterrows()]
    ok = means[means["W_90"].between(low, high) & means["H_90"].between(low, high)]
    lines.append("")
    if len(ok):
        lines.append(f"The cheapest method with 90% coverage in {low:.2f}–{high:.2f} for both W "
                     f"and H is **`{ok.index[0]}`**; `method=None` runs NUTS wherever it is "
                     "feasible (`bnmf.fitting.default_method`: poisson and gaussian models, up "
                     "to 1,000 latent entries).")
    else:
        best = (means[["W_90", "H_90"]] - 0.9).abs().max(axis=1).idxmin()
        lines.append(f"No method reaches {low:.2f}–{high:.2f} for both W and H at these sizes; "
                     f"the closest is **`{best}`** ({means.loc[best, 'W_90']:.2f} / "
                     f"{means.loc[best, 'H_90']:.2f}). No variational guide gets there.")
    return "\n".join(lines)


def write_report(table: pd.DataFrame, seeds, out: Path) -> None:
    columns = [c for c in ("W_50", "W_90", "H_50", "H_90", "seconds") if c in table]
    summary = table.groupby(["setting", "method"], sort=False)[columns].mean()
    out.parent.mkdir(exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    with open(out, "w") as handle:
        handle.write("# Calibration of bnmf.fit's inference methods\n\n")
        handle.write("Made by `python experiments/calibration.py "
                     f"--replicates {len(seeds)}` (see its docstring). Coverage "
                     "= fraction of true entries of W (columns summing to 1) or H inside the "
                     "equal-tailed credible interval, after Hungarian alignment; a calibrated "
                     "posterior gives about 0.50 and 0.90 on data simulated from the model "
                     f"(`*-prior` settings). {N_FEATURES} features × {N_SAMPLES} samples, rank "
                     f"{RANK}, {len(seeds)} replicates; NUTS with {OPTIONS['nuts']}. Methods "
                     f"measured: every entry of `bnmf.inference.METHODS` ({', '.join(METHODS)}; "
                     "`svi` with both guides); `map` has no interval. The default (`method=None`, "
                     "`bnmf.fitting.default_method`) is `nuts` on problems of this size, and "
                     "`cavi` (poisson) or `svi` on problems too large for NUTS.\n\n")
        handle.write(f"Machine: {os.cpu_count()} CPU cores shared with other jobs; jax "
                     f"{jax.__version__}, Python {platform.python_version()}. Seconds are "
                     "wall time per fit, including compilation. Every run is also in "
                     f"`{out.with_suffix('.csv').name}`.\n\n")
        handle.write("## Verdict\n\n" + verdict(table) + "\n\n")
        handle.write("## Mean over replicates\n\n" + markdown_table(summary) + "\n\n")
        handle.write("## Every run\n\n" + markdown_table(table, index=False) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--replicates", type=int, default=4, help="seeds per setting (4)")
    parser.add_argument("--report-only", metavar="CSV", default=None,
                        help="rewrite the report from a saved table of runs")
    args = parser.parse_args(argv)
    settings = ("poisson-prior", "gaussian-prior", "sbs-realistic")
    seeds = (0,) if args.quick else tuple(range(args.replicates))
    out = Path(__file__).parent / "results" / "calibration.md"
    if args.report_only:
        table = pd.read_csv(args.report_only)
        write_report(table, sorted(table["seed"].unique()), out)
        return
    table = run(settings, seeds=seeds)
    print(table.groupby(["setting", "method"], sort=False).mean(numeric_only=True).to_string())
    if not args.quick:
        write_report(table, seeds, out)


if __name__ == "__main__":
    main()
