"""Does ARD find the rank? Posterior of the number of active components on simulated counts.

Poisson data 96 × 300 (tests/helpers.simulate: parts Gamma(0.5) normalized, activities
Dirichlet(1) × depth), true rank 3, 5, 8, depth 100 and 2,000 counts per sample, 3 data sets
each; bnmf.fit(X, 2 × rank + 2, model="ard") (Gibbs from the ARD MAP with its pruned components
re-seeded from the residual). A component is active in
a draw when it carries ≥ 1% of the expected total count (Fit.rank_posterior). Writes
experiments/results/ard.md and ard.csv.

    nice -n 15 python experiments/ard.py [--warmup 1000 --samples 500 --chains 1]
        [--only 8:100:2,3:2000:0 --append]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd

import bnmf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _markdown import markdown_table
from helpers import simulate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--ranks", default="3,5,8")
    parser.add_argument("--depths", default="100,2000")
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--only", default=None,
                        help="run only these rank:depth:data_set triples, e.g. 8:100:2,3:2000:0")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of results/ard.csv and replace those rerun")
    args = parser.parse_args()
    out = HERE / "results"
    only = None if args.only is None else {tuple(map(int, t.split(":")))
                                           for t in args.only.split(",")}
    kept = pd.read_csv(out / "ard.csv") if args.append else pd.DataFrame()
    rows = []
    for depth in map(int, args.depths.split(",")):
        for rank in map(int, args.ranks.split(",")):
            for rep in range(args.datasets):
                if only is not None and (rank, depth, rep) not in only:
                    continue
                X, _, _ = simulate(96, 300, rank, depth, seed=1000 * rank + rep)
                start = time.perf_counter()
                fit = bnmf.fit(X, 2 * rank + 2, model="ard", seed=rep,
                               num_warmup=args.warmup, num_samples=args.samples,
                               num_chains=args.chains)
                seconds = time.perf_counter() - start
                row = {"true_rank": rank, "counts_per_sample": depth, "data_set": rep,
                       "max_rank": 2 * rank + 2, "seconds": round(seconds, 1)}
                for share in (0.01, 0.02):
                    post = fit.rank_posterior(min_share=share)
                    tag = f"{share:.0%}"
                    row[f"mode@{tag}"] = int(post.to_numpy().argmax())
                    row[f"P(true)@{tag}"] = float(post[rank])
                    row[f"P(rank)@{tag}"] = " ".join(f"{k}:{p:.2f}" for k, p in post.items()
                                                     if p >= 0.05)
                rows.append(row)
                print(row, flush=True)
                table = merged(kept, pd.DataFrame(rows))
                table.to_csv(out / "ard.csv", index=False)
                write_markdown(table, args, out / "ard.md")


def merged(kept: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``kept`` not rerun in ``new``, then ``new``, sorted by depth, rank, data set."""
    key = ["true_rank", "counts_per_sample", "data_set"]
    if len(kept):
        rerun = kept.set_index(key).index.isin(new.set_index(key).index)
        new = pd.concat([kept[~rerun], new], ignore_index=True)
    return new.sort_values(["counts_per_sample", "true_rank", "data_set"], ignore_index=True)


def write_markdown(table: pd.DataFrame, args, path: Path) -> None:
    lines = ["# ARD: the posterior of the rank", "",
             (f"Command: `nice -n 15 python experiments/ard.py --warmup {args.warmup} "
             f"--samples {args.samples} --chains {args.chains}` ({platform.machine()}, "
             "2 CPU cores shared with other jobs, load average 1–7; `seconds` is wall time "
              "under that load)."), "",
             ("Data: 96 × 300 Poisson counts simulated by `tests/helpers.simulate` (parts "
             "Gamma(0.5) normalized, activities Dirichlet(1) × depth), seed 1000·rank + data set. "
             "Fit: `bnmf.fit(X, 2·rank + 2, model=\"ard\")`, Gibbs sampling started at the ARD "
             "MAP with the components it pruned re-seeded by NNDSVDa of its residual. A "
             "component is active in a draw when it carries at least 1% (or 2%) of the "
             "expected total count; `P(rank)` lists the posterior probabilities ≥ 0.05 of each "
             "number of active components."), ""]
    for share in ("1%", "2%"):
        hit = table[f"mode@{share}"] == table["true_rank"]
        confident = table[f"P(true)@{share}"] >= 0.5
        lines.append(f"- active = share ≥ {share}: posterior mode = true rank in "
                     f"{hit.sum()}/{len(table)} data sets ({hit.mean():.0%}); P(true rank) ≥ 0.5 "
                     f"in {confident.sum()}/{len(table)} ({confident.mean():.0%}).")
    lines += ["", markdown_table(table, floatfmt=".2f", index=False), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
