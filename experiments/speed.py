"""Speed benchmark: bnmf MAP and SVI against scikit-learn's NMF, on simulated counts.

For each size, on the same simulated float32 count matrix X (features × samples):

* scikit-learn ``NMF(solver="mu", beta_loss="kullback-leibler", init="nndsvda")`` and
  ``NMF(solver="cd", beta_loss="frobenius", init="nndsvda")``, default ``tol``/``max_iter``, fitted
  on ``X.T`` (scikit-learn's samples × features layout);
* bnmf MAP with near-flat priors (so the MAP is the maximum-likelihood NMF): ``model="poisson"``
  (multiplicative MM updates of the KL objective) against MU/KL, ``model="gaussian"``
  (ridge-HALS) against CD/Frobenius. A warm per-iteration trace (bnmf's own jitted chunk of 10
  updates) gives the number of iterations bnmf needs to reach scikit-learn's final objective;
  then ``bnmf.fit(max_iter=that, tol=0)`` is timed end to end, once after ``jax.clear_caches()``
  (first call, compilation included) and again warm;
* bnmf with its default stopping rule (``tol=1e-6``, ``max_iter=2000``), warm;
* the full posterior: ``bnmf.fit(method="svi")`` with its default options (default priors).

Both objectives are computed here, in float64, from the returned factors, the same way for
both libraries: generalized KL ``Σ X log(X / WH) − X + WH`` and ``½‖X − WH‖²_F``.

Peak memory is the growth of the process's resident set (Linux ``VmHWM``, reset before each
call through ``/proc/self/clear_refs``) over its size just before the call.

Run from the repository root::

    python experiments/speed.py            # full sizes, writes experiments/results/speed.md
    python experiments/speed.py --quick    # small sizes, well under a minute, prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from scipy.special import xlogy  # noqa: E402
from sklearn.decomposition import NMF  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

import bnmf  # noqa: E402
from bnmf.data import prepare  # noqa: E402
from bnmf.inference.common import Problem  # noqa: E402
from bnmf.inference.map import _gaussian_mm_chunk, _poisson_mm_chunk, map_start  # noqa: E402

CHUNK = 10  # bnmf's MAP runs its updates in compiled chunks of 10 (bnmf/inference/map.py)
SEED = 0


@dataclass(frozen=True)
class Size:
    """One benchmark problem: X is n_features × n_samples counts with the given rank."""

    n_features: int
    n_samples: int
    rank: int
    repeats: int  # warm timings: the median over this many calls
    svi_draws: int | None  # num_draws for SVI (None = bnmf's default)
    svi_repeats: int = 1

    @property
    def label(self) -> str:
        return f"{self.n_features:,}×{self.n_samples:,}, rank {self.rank}"


FULL = (Size(96, 2_000, 10, repeats=5, svi_draws=None, svi_repeats=2),
        Size(2_000, 10_000, 12, repeats=1, svi_draws=200))
QUICK = (Size(48, 300, 5, repeats=3, svi_draws=200, svi_repeats=2),
         Size(200, 1_000, 6, repeats=2, svi_draws=100))

# Pairs compared: bnmf model → (scikit-learn solver, beta loss, objective name)
PAIRS = {
    "poisson": ("mu", "kullback-leibler", "kl"),
    "gaussian": ("cd", "frobenius", "frobenius"),
}


def flat_model(kind: str):
    """bnmf model with near-flat priors, whose MAP is the maximum-likelihood NMF."""
    if kind == "poisson":
        return bnmf.models.PoissonGamma(a=1.0, rate_W=1e-10, rate_H=1e-10)
    return bnmf.models.GaussianHalfNormal(scale_W=1e10, scale_H=1e10, scale_sigma=1e10)


# ------------------------------------------------------------------------------------ data
def simulate(size: Size, mean_count: float = 10.0, seed: int = SEED) -> np.ndarray:
    """Poisson counts X ~ Poisson(W H), W and H gamma(0.5)-distributed (sparse-ish), float32.

    H is scaled so that the mean count is about ``mean_count``.
    """
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (size.n_features, size.rank))
    H = rng.gamma(0.5, 4.0 * mean_count / size.rank, (size.rank, size.n_samples))
    return rng.poisson(W @ H).astype(np.float32)


# ------------------------------------------------------------------------------ objectives
def kl_objective(X, W, H) -> float:
    """Generalized KL divergence Σ X log(X / WH) − X + WH, in float64."""
    X = np.asarray(X, np.float64)
    WH = np.asarray(W, np.float64) @ np.asarray(H, np.float64)
    return float(np.sum(xlogy(X, X) - xlogy(X, WH) - X + WH))


def frobenius_objective(X, W, H) -> float:
    """½‖X − WH‖²_F, in float64."""
    R = np.asarray(X, np.float64) - np.asarray(W, np.float64) @ np.asarray(H, np.float64)
    return float(0.5 * np.sum(R * R))


OBJECTIVES = {"kl": kl_objective, "frobenius": frobenius_objective}


# ----------------------------------------------------------------------- timing and memory
def _status_kib(key: str) -> int:
    """A ``Vm*`` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure(fn):
    """Run ``fn()``; return (result, seconds, peak resident-set growth in MiB or NaN).

    The peak is VmHWM after the call minus VmRSS before it, VmHWM having been reset to the
    current RSS by writing 5 to /proc/self/clear_refs. Results are blocked on by ``fn``.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) / 1024 if before is not None else float("nan")
    return result, seconds, peak


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- scikit-learn
@dataclass
class SklearnResult:
    solver: str
    seconds: float
    n_iter: int
    max_iter: int
    objective: float
    peak_mib: float

    @property
    def per_iter(self) -> float:
        return self.seconds / self.n_iter


def run_sklearn(X: np.ndarray, rank: int, solver: str, beta_loss: str, objective: str,
                repeats: int) -> SklearnResult:
    """Fit scikit-learn's NMF on X.T (default tol/max_iter); median time over ``repeats``."""
    times, peaks = [], []
    for _ in range(repeats):
        estimator = NMF(rank, solver=solver, beta_loss=beta_loss, init="nndsvda",
                        random_state=SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            H_t, seconds, peak = measure(lambda: estimator.fit_transform(X.T))
        times.append(seconds)
        peaks.append(peak)
    W, H = estimator.components_.T, H_t.T  # sklearn's H is our W.T, its W our H.T
    return SklearnResult(solver, float(np.median(times)), int(estimator.n_iter_),
                         int(estimator.max_iter), OBJECTIVES[objective](X, W, H), max(peaks))


# ------------------------------------------------------------------------------ bnmf trace
@dataclass
class Trace:
    """Warm per-chunk trace of bnmf's MAP updates from bnmf's own starting point."""

    start_seconds: float
    iterations: list = field(default_factory=list)
    seconds: list = field(default_factory=list)  # cumulative update time, start excluded
    objectives: list = field(default_factory=list)
    reached: bool = False

    @property
    def per_iter(self) -> float:
        return self.seconds[-1] / self.iterations[-1]

    @property
    def best(self) -> float:
        return min(self.objectives)


def _chunk_function(kind: str, problem: Problem):
    """(state0 builder, step) reproducing fit_map's compiled chunk of CHUNK updates."""
    X, M, model = problem.X, problem.mask, problem.model
    if kind == "poisson":
        hyper = jnp.asarray([model.a, model.rate_W, model.rate_H], X.dtype)

        def step(state):
            W, H, _ = _poisson_mm_chunk(*state, X, M, hyper, n_steps=CHUNK, update_W=True,
                                        full=True, log_space=False)
            return W, H

        return (lambda W, H: (W, H)), step
    hyper = jnp.asarray([model.scale_W, model.scale_H, model.scale_sigma], X.dtype)

    def step(state):
        W, H, sigma, _ = _gaussian_mm_chunk(*state, X, M, hyper, n_steps=CHUNK, update_W=True,
                                            full=True)
        return W, H, sigma

    return (lambda W, H: (W, H, model.init_extras(W, H, X, M)["sigma"])), step


def bnmf_trace(X: np.ndarray, rank: int, kind: str, objective: str, target: float,
               max_iter: int) -> Trace:
    """Run bnmf's MAP updates chunk by chunk until the objective is ≤ ``target``.

    Only the update chunks (blocked on) and the starting point are timed; the float64
    objective between chunks is not. The chunk is compiled before the trace starts.
    """
    data = prepare(X, counts=kind == "poisson")
    model = flat_model(kind).resolve(data, rank)
    problem = Problem(X=jnp.asarray(data.values, jnp.float32), mask=jnp.asarray(data.mask),
                      rank=rank, model=model)
    start, seconds = measure(lambda: jax.block_until_ready(map_start(problem, "nndsvda", SEED)))[:2]
    make_state, step = _chunk_function(kind, problem)
    state = make_state(*start)
    jax.block_until_ready(step(state))  # compile (warm-up), result discarded
    trace, elapsed, done = Trace(start_seconds=seconds), 0.0, 0
    score = OBJECTIVES[objective]
    while done < max_iter:
        t0 = time.perf_counter()
        state = jax.block_until_ready(step(state))
        elapsed += time.perf_counter() - t0
        done += CHUNK
        value = score(X, state[0], state[1])
        trace.iterations.append(done)
        trace.seconds.append(elapsed)
        trace.objectives.append(value)
        if value <= target:
            trace.reached = True
            break
    return trace


# ------------------------------------------------------------------------- bnmf public API
@dataclass
class FitTiming:
    cold_seconds: float
    warm_seconds: float
    cold_peak_mib: float
    warm_peak_mib: float
    objective: float
    iterations: int


def fit_map(X, rank, kind, **options):
    return bnmf.fit(X, rank=rank, model=flat_model(kind), method="map", seed=SEED,
                    progress=False, **options)


def time_bnmf_map(X, rank, kind, objective, max_iter, repeats) -> FitTiming:
    """Time ``bnmf.fit(method="map", max_iter=max_iter, tol=0)``: first call after clearing
    JAX's compilation caches, then warm (median over ``repeats``)."""
    jax.clear_caches()
    _, cold, cold_peak = measure(lambda: fit_map(X, rank, kind, max_iter=max_iter, tol=0.0))
    runs = [measure(lambda: fit_map(X, rank, kind, max_iter=max_iter, tol=0.0))
            for _ in range(repeats)]
    fit = runs[-1][0]
    return FitTiming(cold, float(np.median([r[1] for r in runs])), cold_peak,
                     max(r[2] for r in runs), OBJECTIVES[objective](X, fit.W, fit.H),
                     int(fit.info["iterations"]))


def time_bnmf_default(X, rank, kind, objective, repeats):
    """Warm ``bnmf.fit(method="map")`` with its default stopping rule: (seconds, iters, obj)."""
    runs = [measure(lambda: fit_map(X, rank, kind)) for _ in range(repeats)]
    fit = runs[-1][0]
    return (float(np.median([r[1] for r in runs])), int(fit.info["iterations"]),
            bool(fit.info["converged"]), OBJECTIVES[objective](X, fit.W, fit.H))


def time_bnmf_svi(X, size: Size) -> dict:
    """Time ``bnmf.fit(method="svi")`` with default options (``svi_repeats`` calls in a row)."""
    options = {} if size.svi_draws is None else {"num_draws": size.svi_draws}
    runs = [measure(lambda: bnmf.fit(X, rank=size.rank, model="poisson", method="svi",
                                     seed=SEED, progress=False, **options))
            for _ in range(size.svi_repeats)]
    fit = runs[0][0]
    return {"seconds": [r[1] for r in runs], "peak_mib": max(r[2] for r in runs),
            "steps": int(fit.info["iterations"]), "converged": bool(fit.info["converged"]),
            "num_draws": fit.num_draws}


# ------------------------------------------------------------------------------ benchmark
def benchmark_size(size: Size, max_iter: int) -> dict:
    """Every measurement for one size."""
    X = simulate(size)
    log(f"{size.label}: X mean {X.mean():.2f}, {np.mean(X == 0):.1%} zeros")
    result = {"size": size, "mean": float(X.mean()), "zeros": float(np.mean(X == 0)), "map": {}}
    for kind, (solver, beta_loss, objective) in PAIRS.items():
        sk = run_sklearn(X, size.rank, solver, beta_loss, objective, size.repeats)
        log(f"  sklearn {solver}: {sk.seconds:.2f}s, {sk.n_iter} iterations, {objective} "
            f"{sk.objective:.8g}")
        trace = bnmf_trace(X, size.rank, kind, objective, sk.objective, max_iter)
        log(f"  bnmf {kind} trace: {trace.iterations[-1]} iterations, reached={trace.reached}, "
            f"{trace.seconds[-1]:.2f}s of updates")
        timing = time_bnmf_map(X, size.rank, kind, objective, trace.iterations[-1], size.repeats)
        log(f"  bnmf {kind} fit: cold {timing.cold_seconds:.2f}s, warm {timing.warm_seconds:.2f}s")
        default = time_bnmf_default(X, size.rank, kind, objective, size.repeats)
        log(f"  bnmf {kind} defaults: {default[0]:.2f}s, {default[1]} iterations")
        result["map"][kind] = {"sklearn": sk, "trace": trace, "timing": timing,
                               "default": default, "objective": objective}
    result["svi"] = time_bnmf_svi(X, size)
    log(f"  bnmf svi: {result['svi']['seconds']}")
    return result


# -------------------------------------------------------------------------------- report
def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = ""
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} "
            f"{platform.release()}; JAX on {jax.devices()[0].platform.upper()}")


def versions() -> str:
    import jaxlib
    import numpyro
    import scipy

    return (f"Python {platform.python_version()}, bnmf {bnmf.__version__}, jax {jax.__version__}"
            f" (jaxlib {jaxlib.__version__}), numpyro {numpyro.__version__}, scikit-learn "
            f"{sklearn.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}"


def _gap(value: float, target: float) -> str:
    return f"{(value - target) / abs(target):+.1e}"


def map_table(results: list) -> list[str]:
    rows = [
        "| size | bnmf model vs scikit-learn | sklearn time (s) | sklearn iters | sklearn s/iter "
        "| bnmf iters to reach | bnmf s/iter | bnmf first call (s) | bnmf warm (s) "
        "| ratio first / sklearn | ratio warm / sklearn |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for kind, entry in result["map"].items():
            sk, trace, timing = entry["sklearn"], entry["trace"], entry["timing"]
            reached = f"{trace.iterations[-1]}" if trace.reached else (
                f"not reached in {trace.iterations[-1]} (gap {_gap(trace.best, sk.objective)})")
            rows.append(
                f"| {result['size'].label} | {kind} MAP vs {sk.solver.upper()} "
                f"({entry['objective']}) | {sk.seconds:.3f} | {sk.n_iter}/{sk.max_iter} "
                f"| {sk.per_iter * 1e3:.2f} ms | {reached} | {trace.per_iter * 1e3:.2f} ms "
                f"| {timing.cold_seconds:.3f} | {timing.warm_seconds:.3f} "
                f"| {_ratio(timing.cold_seconds, sk.seconds)} "
                f"| {_ratio(timing.warm_seconds, sk.seconds)} |")
    return rows


def detail_table(results: list) -> list[str]:
    rows = [
        "| size | bnmf model | sklearn objective | bnmf objective at that point (rel. diff) "
        "| bnmf start (nndsvda) (s) | bnmf update time to reach (s) | bnmf overhead in fit (s) "
        "| bnmf defaults: time (s), iters, rel. diff of objective "
        "| peak RSS sklearn (MiB) | peak RSS bnmf first / warm (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for result in results:
        for kind, entry in result["map"].items():
            sk, trace, timing = entry["sklearn"], entry["trace"], entry["timing"]
            seconds, iters, converged, objective = entry["default"]
            overhead = timing.warm_seconds - trace.start_seconds - trace.seconds[-1]
            stop = "converged" if converged else "hit max_iter"
            rows.append(
                f"| {result['size'].label} | {kind} | {sk.objective:.7g} "
                f"| {timing.objective:.7g} ({_gap(timing.objective, sk.objective)}) "
                f"| {trace.start_seconds:.3f} | {trace.seconds[-1]:.3f} | {overhead:.3f} "
                f"| {seconds:.3f}, {iters} ({stop}), {_gap(objective, sk.objective)} "
                f"| {sk.peak_mib:.0f} | {timing.cold_peak_mib:.0f} / {timing.warm_peak_mib:.0f} |")
    return rows


def svi_table(results: list) -> list[str]:
    rows = [
        "| size | SVI steps (converged) | num_draws | SVI time per call (s) | sklearn MU time (s) "
        "| ratio SVI / sklearn MU | peak RSS SVI (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        svi, mu = result["svi"], result["map"]["poisson"]["sklearn"]
        calls = ", ".join(f"{s:.2f}" for s in svi["seconds"])
        ratios = ", ".join(_ratio(s, mu.seconds) for s in svi["seconds"])
        rows.append(
            f"| {result['size'].label} | {svi['steps']} ({'yes' if svi['converged'] else 'no'}) "
            f"| {svi['num_draws']} | {calls} | {mu.seconds:.3f} | {ratios} "
            f"| {svi['peak_mib']:.0f} |")
    return rows


def report(results: list, command: str, total_seconds: float, max_iter: int) -> str:
    lines = [
        "# Speed: bnmf against scikit-learn's NMF",
        "",
        f"Command (repository root): `{command}`  ",
        f"Machine: {machine_description()}  ",
        f"Versions: {versions()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; whole run {total_seconds / 60:.1f} min.",
        "",
        "Data: X ~ Poisson(W H) with W, H gamma(0.5)-distributed (seed 0), float32 for every "
        "method. " + "; ".join(f"{r['size'].label}: mean count {r['mean']:.1f}, "
                               f"{r['zeros']:.0%} zeros" for r in results) + ".",
        "",
        "scikit-learn: `NMF(solver=\"mu\", beta_loss=\"kullback-leibler\", init=\"nndsvda\")` "
        "and `NMF(solver=\"cd\", beta_loss=\"frobenius\", init=\"nndsvda\")`, default "
        "tol/max_iter, fitted on X.T. bnmf MAP: `bnmf.fit(X, rank, model=M, method=\"map\", "
        "max_iter=N, tol=0, progress=False)` with near-flat priors "
        "(`PoissonGamma(a=1, rate_W=rate_H=1e-10)`, `GaussianHalfNormal(scale_*=1e10)`), so the "
        "MAP is maximum likelihood; N is the first multiple of 10 iterations (bnmf's chunk) at "
        "which bnmf's objective is ≤ scikit-learn's final one, found from a warm trace of "
        f"bnmf's own update chunks (capped at {max_iter}). Both objectives are computed here in "
        "float64 from the returned factors: generalized KL Σ X log(X/WH) − X + WH, and "
        "½‖X − WH‖²_F. Times are wall-clock (`time.perf_counter`) of the whole call, results "
        "materialized; *first call* is the first `bnmf.fit` after `jax.clear_caches()` "
        "(compilation included), *warm* the median of later calls. scikit-learn times are "
        "medians over the same number of calls (it has no compilation). Peak RSS: growth of the "
        "process's resident set during the call (Linux VmHWM, reset through "
        "/proc/self/clear_refs, minus VmRSS before the call).",
        "",
        "## Time to reach scikit-learn's final objective",
        "",
        *map_table(results),
        "",
        "## Details",
        "",
        "*start* is bnmf's nndsvda starting point (NumPy, float64); *update time* the compiled "
        "update chunks alone; *overhead* the rest of the warm `bnmf.fit` call (validation, "
        "float64 copies, per-chunk loss and convergence check, building the ArviZ result). "
        "*defaults* is a warm `bnmf.fit(..., method=\"map\")` with its own stopping rule "
        "(tol=1e-6 relative change of the loss over 10 iterations, max_iter=2000); rel. diff is "
        "(bnmf − sklearn) / sklearn objective, negative = bnmf fits better.",
        "",
        *detail_table(results),
        "",
        "## Full posterior (SVI)",
        "",
        "`bnmf.fit(X, rank, model=\"poisson\", method=\"svi\", progress=False[, num_draws])` "
        "with default options and default (empirical-Bayes) priors: MAP start (≤500 "
        "iterations), mean-field log-normal guide, ≥1000 and ≤3000 Adam steps, final ELBO "
        "estimate, posterior draws and their alignment. Several calls in a row are listed "
        "when more than one was made.",
        "",
        *svi_table(results),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown output (default: experiments/results/speed.md in full "
                             "mode; none in quick mode)")
    parser.add_argument("--max-iter", type=int, default=2000,
                        help="cap on bnmf iterations when chasing scikit-learn's objective")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).resolve().parent / "results" / "speed.md"
    command = "python experiments/speed.py" + (" --quick" if args.quick else "") + (
        f" --max-iter {args.max_iter}" if args.max_iter != 2000 else "")

    start = time.perf_counter()
    results = [benchmark_size(size, args.max_iter) for size in sizes]
    text = report(results, command, time.perf_counter() - start, args.max_iter)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
