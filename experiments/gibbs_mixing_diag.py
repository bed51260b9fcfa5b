"""Where the Gibbs sampler mixes slowly: split R-hat and bulk ESS of normalized W overall, per
chain, per component and by the size of the entry, and the ESS of the learned hyperparameters.

Run from the repository root, e.g. (the block moves of ``bnmf.inference.gibbs_block`` on and
off)::

    nice -n 15 python experiments/gibbs_mixing_diag.py --generator dir0.5-gamma --size 96x300x6
    nice -n 15 python experiments/gibbs_mixing_diag.py --size 96x300x6 --no-block-moves
    nice -n 15 python experiments/gibbs_mixing_diag.py --generator dir1.5-flat --depth \\
        --no-orbit-moves
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az
import numpy as np
import xarray as xr

import bnmf

sys.path.insert(0, str(Path(__file__).parent))
from calibration_gibbs import GENERATORS, coverage, simulate


def _rhat_ess(draws: np.ndarray):
    """Split R-hat and bulk ESS of draws (chain, draw, features, rank)."""
    ds = xr.Dataset({"W": (("chain", "draw", "f", "k"), draws)})
    return az.rhat(ds)["W"].values, az.ess(ds)["W"].values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="dir0.5-gamma", choices=GENERATORS)
    parser.add_argument("--size", default="96x300x6", help="features x samples x rank")
    parser.add_argument("--model", default="poisson-hierarchical")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--no-block-moves", action="store_true")
    parser.add_argument("--no-orbit-moves", action="store_true")
    parser.add_argument("--depth", action="store_true",
                        help="poisson-hierarchical with depth=True (per-sample H rates)")
    args = parser.parse_args(argv)
    F, N, K = (int(v) for v in args.size.split("x"))
    X, W, H, _ = simulate(args.generator, F, N, K, 0)
    start = time.perf_counter()
    model = (bnmf.models.HierarchicalPoissonGamma(depth=True) if args.depth else args.model)
    fit = bnmf.fit(X, K, model=model, method="gibbs", seed=0, num_chains=args.chains,
                   num_warmup=args.warmup, num_samples=args.samples,
                   block_moves=False if args.no_block_moves else None,
                   orbit_moves=not args.no_orbit_moves)
    seconds = time.perf_counter() - start
    d = fit.idata.posterior["W"].values  # (chain, draw, F, K), normalized and aligned
    rhat, ess = _rhat_ess(d)
    print(f"{args.generator} {args.size} {args.model} depth={args.depth} block_moves={fit.info['block_moves']} "
          f"orbit_moves={fit.info['orbit_moves']} "
          f"{seconds:.0f} s: R-hat <= 1.01 for {np.mean(rhat <= 1.01):.3f}, median R-hat "
          f"{np.median(rhat):.3f}, ESS median {np.median(ess):.0f}, 5th percentile "
          f"{np.percentile(ess, 5):.0f}; coverage {coverage(fit, W, H)}")
    for c in range(d.shape[0]):
        print(f"  chain {c}: ESS median {np.median(_rhat_ess(d[c:c + 1])[1]):.0f}")
    sd = d.std(axis=(0, 1))
    for c in range(1, d.shape[0]):
        z = np.abs(d[c].mean(axis=0) - d[0].mean(axis=0)) / sd
        print(f"  chain {c} vs 0: |mean difference| / sd median {np.median(z):.2f}, "
              f"max {z.max():.1f}")
    print("  ESS median per component", np.round(np.median(ess, axis=0)).tolist())
    mean, flat = d.mean(axis=(0, 1)).ravel(), ess.ravel()
    for name, part in zip(("smallest", "middle", "largest"),
                          np.array_split(np.argsort(mean), 3)):
        print(f"  {name} third of W entries (mean {mean[part].min():.2g}-"
              f"{mean[part].max():.2g}): ESS median {np.median(flat[part]):.0f}, "
              f"5th percentile {np.percentile(flat[part], 5):.0f}")
    for name in ("a_W", "b_W", "a_H", "b_H"):
        if name in fit.idata.posterior:
            v = fit.idata.posterior[name].values
            e = az.ess(xr.Dataset({name: (("chain", "draw", "k"), v)}))[name].values
            print(f"  {name}: ESS per component {np.round(e).tolist()}")


if __name__ == "__main__":
    main()
