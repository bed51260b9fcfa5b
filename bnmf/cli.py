"""Command line: ``bnmf fit``, ``bnmf select-rank``, ``bnmf refit`` and ``bnmf demo``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import matplotlib

__all__ = ["console", "enable_compilation_cache", "main"]

_OFF = ("", "0", "off", "false", "no", "none")
# bnmf.models.MODELS' names, written out so that `bnmf --help` imports no JAX (a test holds
# the two equal)
MODEL_CHOICES = ("ard", "gaussian", "horseshoe", "negbin", "poisson", "poisson-hierarchical",
                 "spatial")


def enable_compilation_cache(environ=None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process; return its folder.

    A command line run is a fresh process, which would compile every program again: with the
    cache it compiles each one once per machine (``bnmf demo``: 31 s on the first run, 19 s
    on later ones, on 2 CPU cores). Programs compiled with other JAX versions, devices or
    flags are kept apart by JAX's cache key, and the results are the same with or without it.

    The folder is ``$BNMF_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnmf/jax``, else
    ``~/.cache/bnmf/jax``; ``BNMF_CACHE_DIR=off`` turns the cache off. A cache folder already
    configured for JAX (``JAX_COMPILATION_CACHE_DIR``) is used as it is. A folder that cannot
    be created or written gives one warning, and the command runs without a cache. The folder
    is not pruned (the demo's programs take about 1 MB); deleting it only costs a
    recompilation.
    """
    import jax

    environ = os.environ if environ is None else environ
    setting = environ.get("BNMF_CACHE_DIR")
    if setting is not None and setting.strip().lower() in _OFF:
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    home = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(setting) if setting else home / "bnmf" / "jax"
    try:  # an unusable folder: one clear warning, not one from JAX per program
        folder.mkdir(parents=True, exist_ok=True)
        usable = os.access(folder, os.W_OK)
    except OSError:
        usable = False
    if not usable:
        warnings.warn(f"bnmf: cannot write the compilation cache folder {folder}; running "
                      "without it (set BNMF_CACHE_DIR to a writable folder, or to 'off').",
                      stacklevel=2)
        return None
    folder = str(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    # every program, not only those over JAX's default 1 s: a fit compiles many small ones
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def _diagnostics_line(summary: dict, num_chains) -> str:
    """The chains' convergence in one line: worst split R-hat and ESS of the normalized W and
    H, and the share of entries past the thresholds of :mod:`bnmf.posterior`."""
    from .posterior import ESS_MIN, RHAT_MAX

    chains = f"{num_chains} chains; " if num_chains else ""
    parts = [f"{name}: R-hat max {summary[f'rhat_max_{name}']:.3f} "
             f"({summary[f'rhat_above_{RHAT_MAX}_{name}']:.1%} > {RHAT_MAX}), "
             f"ESS min {summary[f'ess_min_{name}']:.0f} "
             f"({summary[f'ess_below_{ESS_MIN}_{name}']:.1%} < {ESS_MIN})"
             for name in ("W", "H")]
    return "convergence: " + chains + "; ".join(parts)


def _summary(fit, top: int = 5) -> str:
    """A short text summary: what ran, and each part's top features with 90% intervals; SBS96
    parts are named by their one-to-one best match among the bundled PCAWG signatures."""
    from .plotting import reference_matches

    info = fit.info
    lines = [repr(fit)]
    if "method_choice" in info:
        lines.append(f"method: {info['method_choice']}")
    if "model_choice" in info:
        lines.append(f"model: {info['model_choice']}")
    status = "converged" if info.get("converged") else "stopped at the iteration limit"
    if "iterations" in info:
        lines.append(f"inference: {info['algorithm']}, {info['iterations']} iterations, {status}")
    if "divergences" in info:
        lines.append(f"NUTS: {info['divergences']} divergent transitions")
    if "diagnostics" in info:
        lines.append(_diagnostics_line(info["diagnostics"], info.get("num_chains")))
    if fit.elbo is not None:
        lines.append(f"ELBO: {fit.elbo:.6g}")
    W = fit.W
    names = getattr(W, "index", None)
    values = getattr(W, "values", W)
    bounds = fit.interval(0.9)["W"] if fit.num_draws > 1 else None
    matches = reference_matches(W)
    if matches is not None:
        lines.append("reference: the 65 PCAWG SBS96 signatures (bnmf.datasets."
                     "load_pcawg_signatures), matched one-to-one by cosine")
    for k in range(values.shape[1]):
        order = values[:, k].argsort()[::-1][:top]
        items = []
        for i in order:
            label = names[i] if names is not None else i
            item = f"{label} {values[i, k]:.3f}"
            if bounds is not None:
                lo, hi = (getattr(b, "values", b)[i, k] for b in bounds)
                item += f" [{lo:.3f}, {hi:.3f}]"
            items.append(item)
        name = f"part {k}"
        if matches is not None:
            column = W.columns[k]
            name += (f" [best match {matches.loc[column, 'reference']}, cosine "
                     f"{matches.loc[column, 'cosine']:.3f}]")
        lines.append(f"{name}: " + "; ".join(items))
    return "\n".join(lines)


def _write_outputs(fit, out: Path, plot: Path | None) -> list[Path]:
    """Write the fit (netCDF), W and H (CSV) and, if asked, the plot; return the paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fit.save(out)
    written = [out]
    for name in ("W", "H"):
        table = getattr(fit, name)
        path = out.with_name(f"{out.stem}_{name}.csv")
        (table if hasattr(table, "to_csv") else __import__("pandas").DataFrame(table)).to_csv(path)
        written.append(path)
    if plot is not None:
        from .plotting import plot_parts

        figure = plot_parts(fit)
        figure.savefig(plot, dpi=110)
        written.append(plot)
    return written


def _fit_options(args) -> dict:
    options = {"progress": None if args.progress else False}
    if args.draws is not None:
        options["num_draws"] = args.draws
    return options


def _cmd_fit(args) -> int:
    from . import fit
    from .io import read_matrix

    X = read_matrix(args.data)
    result = fit(X, rank=args.rank, model=args.model, method=args.method, seed=args.seed,
                 missing="mask" if args.missing_as_mask else "error", dtype=args.dtype,
                 **_fit_options(args))
    written = _write_outputs(result, Path(args.out), Path(args.plot) if args.plot else None)
    print(_summary(result))
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def parse_ranks(text: str) -> list[int]:
    """Ranks from ``"2-10"``, ``"2,3,5"`` or ``"2-4,6"``."""
    ranks = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            ranks.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"--ranks must look like 2-10 or 2,3,5, got {text!r}.") from None
    if not ranks:
        raise ValueError(f"--ranks {text!r} names no rank; use e.g. 2-10.")
    return ranks


def _cmd_select_rank(args) -> int:
    from . import select_rank
    from .io import read_matrix

    X = read_matrix(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sel = select_rank(X, ranks=parse_ranks(args.ranks), model=args.model,
                      method=args.method, holdout=args.holdout, folds=args.folds,
                      restarts=args.restarts, seed=args.seed,
                      missing="mask" if args.missing_as_mask else "error", dtype=args.dtype,
                      checkpoint=out / "checkpoint.nc", progress=True if args.progress else None,
                      **({} if args.draws is None else {"num_draws": args.draws}))
    table_path, plot_path = out / "rank_selection.csv", out / "rank_selection.png"
    sel.table.to_csv(table_path)
    sel.plot().savefig(plot_path, dpi=110)
    written = [table_path, plot_path] + _write_outputs(
        sel.fits[sel.best_rank], out / f"fit_rank{sel.best_rank}.nc", None)
    print(sel.table.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"best rank: {sel.best_rank}: {sel.reason}")
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def _read_reference(path):
    """Reference parts from a file: SigProfiler/COSMIC SBS96 layouts (reordered to the
    canonical channels), else any matrix ``read_matrix`` reads (features as rows)."""
    from .datasets import read_sbs96
    from .io import read_matrix

    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv", ".txt")):
        try:
            return read_sbs96(path)
        except ValueError:                      # not SBS96 channels: a generic table
            pass
    return read_matrix(path)


def _cmd_refit(args) -> int:
    import pandas as pd

    from . import refit
    from .io import read_matrix

    X = read_matrix(args.data)
    reference = _read_reference(args.signatures)
    calls = refit(X, reference, method=args.method, seed=args.seed,
                  progress=bool(args.progress))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = calls.table(prob=args.prob, min_fraction=args.min_fraction,
                        active_prob=args.active_prob)
    written = [out / "calls.csv", out / "exposures.csv"]
    table.to_csv(written[0], index=False)
    pd.DataFrame(calls.exposures).to_csv(written[1])
    active = table[table["active"]]
    print(f"{calls!r}: {len(active)} active calls (P(share >= {args.min_fraction:g}) >= "
          f"{args.active_prob:g}) over {table['observation'].nunique()} samples")
    for signature, count in active["signature"].value_counts().head(10).items():
        print(f"  {signature}: active in {count} samples")
    if args.plot:
        from .plotting import plot_exposures

        plot_exposures(calls, prob=args.prob).savefig(args.plot, dpi=110)
        written.append(Path(args.plot))
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def _cmd_demo(args) -> int:
    from . import fit
    from .datasets import BREAST21_CITATION, load_breast21

    X = load_breast21()
    print(f"bnmf demo: {args.rank} mutational signatures of {X.shape[1]} breast cancer genomes "
          f"({X.shape[0]} SBS96 channels, {int(X.values.sum()):,} mutations)")
    print(f"data: {BREAST21_CITATION}")
    result = fit(X, rank=args.rank, model="poisson", method=args.method, seed=args.seed,
                 **_fit_options(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = _write_outputs(result, out / "fit.nc", out / "signatures.png")
    print(_summary(result))
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnmf", description="Bayesian NMF with uncertainty.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--method", choices=["map", "svi", "nuts", "cavi", "gibbs"], default=None,
                       help="inference (default: what bnmf.fit chooses for the model and size, "
                            "printed as 'method: ...')")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--draws", type=int, default=None, help="posterior draws to keep")
        p.add_argument("--progress", action="store_true", help="force a progress bar")

    p_fit = sub.add_parser("fit", help="fit X ≈ W H to a data file")
    p_fit.add_argument("data", help="CSV/TSV (first column = feature names), .npz, .mtx or .h5ad")
    p_fit.add_argument("--rank", "-k", type=int, required=True)
    p_fit.add_argument("--model", choices=MODEL_CHOICES, default=None,
                       help="default: poisson-hierarchical (poisson for --method map/cavi), "
                            "printed as 'model: ...'")
    p_fit.add_argument("--out", default="fit.nc", help="output netCDF file (default fit.nc)")
    p_fit.add_argument("--plot", default=None, help="also write a PNG of the parts")
    p_fit.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p_fit.add_argument("--missing-as-mask", action="store_true",
                       help="treat NaN/empty cells as unobserved entries")
    common(p_fit)
    p_fit.set_defaults(handler=_cmd_fit)

    p_sel = sub.add_parser("select-rank", help="compare ranks: held-out density, ELBO, stability")
    p_sel.add_argument("data", help="CSV/TSV (first column = feature names), .npz, .mtx or .h5ad")
    p_sel.add_argument("--ranks", default="2-10", help="e.g. 2-10 or 2,3,5 (default 2-10)")
    p_sel.add_argument("--model", choices=MODEL_CHOICES, default="poisson")
    p_sel.add_argument("--out", default="sweep", help="output folder (default sweep); its "
                       "checkpoint.nc lets an interrupted sweep resume")
    p_sel.add_argument("--holdout", type=float, default=0.1)
    p_sel.add_argument("--folds", type=int, default=3)
    p_sel.add_argument("--restarts", type=int, default=4)
    p_sel.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p_sel.add_argument("--missing-as-mask", action="store_true",
                       help="treat NaN/empty cells as unobserved entries")
    common(p_sel)
    p_sel.set_defaults(handler=_cmd_select_rank)

    p_refit = sub.add_parser("refit", help="exposures of known signatures, with intervals and "
                             "presence probabilities")
    p_refit.add_argument("data", help="counts: CSV/TSV (first column = feature names), .npz, "
                         ".mtx or .h5ad")
    p_refit.add_argument("--signatures", required=True,
                         help="reference parts, features as rows (SigProfiler/COSMIC SBS96 "
                         "files are reordered to the canonical channels)")
    p_refit.add_argument("--out", default="calls", help="output folder (default calls)")
    p_refit.add_argument("--method", choices=["gibbs", "nuts", "svi"], default=None,
                         help="inference (default: NUTS up to 1,000 exposures, else Gibbs)")
    p_refit.add_argument("--seed", type=int, default=0)
    p_refit.add_argument("--prob", type=float, default=0.9, help="credible interval (0.9)")
    p_refit.add_argument("--min-fraction", type=float, default=0.05,
                         help="share of a sample that counts as present (0.05)")
    p_refit.add_argument("--active-prob", type=float, default=0.95,
                         help="posterior probability needed to call a signature active (0.95)")
    p_refit.add_argument("--plot", default=None, help="also write a PNG of the exposures")
    p_refit.add_argument("--progress", action="store_true", help="show a progress bar")
    p_refit.set_defaults(handler=_cmd_refit)

    p_demo = sub.add_parser("demo", help="signatures of 21 breast cancers (bundled data)")
    p_demo.add_argument("--rank", "-k", type=int, default=5)
    p_demo.add_argument("--out", default="bnmf-demo", help="output folder (default bnmf-demo)")
    common(p_demo)
    p_demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv=None) -> int:
    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"bnmf {args.command}: error: {err}", file=sys.stderr)
        return 2


def console() -> int:
    """The ``bnmf`` command: :func:`main` with JAX's persistent compilation cache on (see
    :func:`enable_compilation_cache`). ``main`` itself leaves JAX's configuration alone, so
    calling it from Python changes nothing for the caller."""
    enable_compilation_cache()
    return main()


if __name__ == "__main__":
    sys.exit(console())
