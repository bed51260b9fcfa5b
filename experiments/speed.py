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
* the full posterior: ``bnmf.fit(method="cavi")`` (closed-form gamma factors) at every count
  size, first call and warm, and ``bnmf.fit(method="svi")`` with its default options (default
  priors) where ``Size.svi`` is set (generic SVI is slow on the large sizes);
* sparse input (``Size.sparse_densities``): the same simulated counts, thinned to ~10% (the
  issue's criterion) and ~1% non-zeros, passed dense and as SciPy CSR to ``bnmf.fit`` (MAP and CAVI, fixed iteration counts), to the
  inference function on ``SparseCounts`` alone, and to scikit-learn's MU;
* throughput: achieved GFLOP/s of bnmf's update loop against JAX's float32 matrix-multiply
  peak measured in the same run.

Sizes (full run): 96×2,000 counts (rank 10), 2,000×10,000 counts (rank 12, dense and 10%
sparse) against scikit-learn MU/KL, and 5,000×5,000 non-negative Gaussian data (rank 20)
against scikit-learn CD/Frobenius.

Both objectives are computed here, in float64, from the returned factors, the same way for
both libraries: generalized KL ``Σ X log(X / WH) − X + WH`` and ``½‖X − WH‖²_F``.

Peak memory is the growth of the process's resident set (Linux ``VmHWM``, reset before each
call through ``/proc/self/clear_refs``) over its size just before the call.

Run from the repository root::

    python experiments/speed.py            # full sizes, writes experiments/results/speed.md
    python experiments/speed.py --quick    # small sizes, well under a minute, prints only
    JAX_PLATFORMS=cuda python experiments/speed.py   # bnmf and torchnmf on a CUDA GPU,
                                                     # writes experiments/results/speed_gpu.md
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
from bnmf.inference.common import Problem, to_device  # noqa: E402
from bnmf.inference.driver import compiled_step  # noqa: E402
from bnmf.inference.map import map_start  # noqa: E402
from bnmf.models.base import capability  # noqa: E402
from bnmf.models.poisson import LEAST_SQUARES_WARMUP  # noqa: E402

CHUNK = 10  # bnmf's MAP runs its updates in compiled chunks of 10 (bnmf/inference/map.py)
SEED = 0
# JAX's device: "cpu" here unless JAX_PLATFORMS names an accelerator (cuda, tpu). scikit-learn
# always runs on the host's cores; torchnmf follows JAX onto a CUDA GPU.
ACCELERATOR = jax.default_backend() != "cpu"


@dataclass(frozen=True)
class Size:
    """One benchmark problem: X is n_features × n_samples with the given rank."""

    n_features: int
    n_samples: int
    rank: int
    repeats: int  # warm timings: the median over this many calls
    svi_draws: int | None  # num_draws for SVI and CAVI (None = bnmf's default)
    svi_repeats: int = 1
    kinds: tuple = ("poisson", "gaussian")  # bnmf MAP models compared with scikit-learn
    svi: bool = True  # time generic SVI too (slow on large data)
    sparse_densities: tuple = ()  # also compare dense and sparse input at these densities
    data: str = "counts"  # "counts" (Poisson) or "gaussian" (continuous, non-negative)
    defaults: bool = True  # also time bnmf MAP with its own stopping rule
    restarts: int = 0  # time this many MAP restarts against scikit-learn's loop of as many
    sklearn_loop: bool = True  # run scikit-learn's loop of restarts (else: n × one fit)
    minibatch: bool = False  # also scikit-learn's MiniBatchNMF (KL)

    @property
    def label(self) -> str:
        return f"{self.n_features:,}×{self.n_samples:,}, rank {self.rank}"


FULL = (Size(96, 2_000, 10, repeats=5, svi_draws=None, svi_repeats=2, kinds=("poisson",),
             restarts=8),
        Size(2_000, 10_000, 12, repeats=1, svi_draws=200, kinds=("poisson",), svi=False,
             sparse_densities=(0.1, 0.01), defaults=False, restarts=8, sklearn_loop=False,
             minibatch=True),
        # 3 warm calls: the call after the compiling one is 0.3–0.5 s slower than later ones
        # here, with nothing compiled in it (jax_log_compiles); a median of 1 would be that call
        Size(5_000, 5_000, 20, repeats=3, svi_draws=200, kinds=("gaussian",), svi=False,
             data="gaussian", defaults=False))
QUICK = (Size(48, 300, 5, repeats=3, svi_draws=200, svi_repeats=2, restarts=8),
         Size(200, 1_000, 6, repeats=2, svi_draws=100, kinds=("poisson",), svi=False,
              sparse_densities=(0.1,), restarts=8, sklearn_loop=False, minibatch=True),
         Size(300, 300, 8, repeats=2, svi_draws=100, kinds=("gaussian",), svi=False,
              data="gaussian"))

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


def simulate_gaussian(size: Size, seed: int = SEED) -> np.ndarray:
    """Non-negative continuous data |W H + noise| (noise sd 10% of the mean), float32."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (size.n_features, size.rank))
    H = rng.gamma(0.5, 1.0, (size.rank, size.n_samples))
    mean = W @ H
    return np.abs(mean + rng.normal(0.0, 0.1 * mean.mean(), mean.shape)).astype(np.float32)


def simulate_sparse(size: Size, density: float, seed: int = SEED) -> np.ndarray:
    """Counts with about ``density`` non-zeros: mean count -log(1 - density)."""
    return simulate(size, mean_count=-np.log1p(-density), seed=seed)


def matmul_peak(n: int = 4096, repeats: int = 3, precision: str = "highest") -> float:
    """float32 GFLOP/s of JAX's n×n matrix product on this machine now (best of ``repeats``).

    ``precision="highest"`` is true float32 arithmetic, what bnmf's fits use; on a GPU
    ``"default"`` lets the matrix units round operands to TF32 (the same on a CPU)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    product = jax.jit(lambda a: jnp.matmul(a, a, precision=precision))
    jax.block_until_ready(product(a))
    best = min(measure(lambda: jax.block_until_ready(product(a)))[1] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def flops_per_iteration(kind: str, size: Size) -> float:
    """Floating-point operations of one bnmf MAP iteration (matrix products only):
    multiplicative KL updates form W H twice and multiply the ratio by H and W (8 F N K);
    HALS forms X Hᵀ and Xᵀ W (4 F N K) plus the rank × rank Gram products."""
    F, N, K = size.n_features, size.n_samples, size.rank
    if kind == "poisson":
        return 8.0 * F * N * K
    return 4.0 * F * N * K + 2.0 * (F + N) * K * K


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
    exact_iterations: int | None = None  # fewest updates to reach the target, where reached

    @property
    def per_iter(self) -> float:
        return self.seconds[-1] / self.iterations[-1]

    @property
    def to_reach(self) -> int:
        """Updates to reach the target (exact where reached, else all that ran)."""
        return self.exact_iterations if self.reached else self.iterations[-1]

    @property
    def update_seconds_to_reach(self) -> float:
        return self.per_iter * self.to_reach

    @property
    def best(self) -> float:
        return min(self.objectives)


def _chunk_function(kind: str, problem: Problem):
    """(state0 builder, step, values) reproducing fit_map's compiled chunk: the model's
    "map_update" capability under the driver's compiled step (over-relaxation and its
    fall-back included); ``step(state, steps)`` -> (state, loss) runs ``steps`` updates (CHUNK
    by default). States are values, so a chunk can be rerun from any earlier state."""
    model = problem.model
    updates = capability(model, "map_update")
    aux = updates.prepare(problem)
    program = compiled_step(updates.step, (True,), False)

    def step(state, steps=CHUNK):
        return program(state, aux, model, steps)

    return (lambda W, H: updates.init(W, H, aux, model)), step, updates.values


def fitted(values, state):
    """(W, H) that fit_map returns from a chunk runner's state (``values`` of the capability:
    the best iterate of the extrapolated HALS iteration, the current one of the Poisson
    updates)."""
    out = values(state)
    return out["W"], out["H"]


def bnmf_trace(X: np.ndarray, rank: int, kind: str, objective: str, target: float,
               max_iter: int) -> Trace:
    """Run bnmf's MAP updates chunk by chunk until the objective is ≤ ``target``.

    Only the update chunks (blocked on) and the starting point are timed; the float64
    objective between chunks is not. The chunk is compiled before the trace starts.
    """
    data = prepare(X, counts=kind == "poisson")
    model = flat_model(kind).resolve(data, rank)
    problem = Problem(X=to_device(data.values, np.float32), mask=to_device(data.mask, bool),
                      rank=rank, model=model)
    warm_start = capability(model, "map_update").warm_start

    def fit_map_start():  # fit_map's start: NNDSVDa, then (Poisson) the least-squares warm-up
        W, H = map_start(problem, "nndsvda", SEED)
        return (W, H) if warm_start is None else warm_start(problem, W, H,
                                                            LEAST_SQUARES_WARMUP)[:2]

    fit_map_start()  # compile what the start compiles
    # median of 3: the first call after a compilation is slower here, with nothing compiled
    starts = [measure(lambda: jax.block_until_ready(fit_map_start()))[:2] for _ in range(3)]
    start, seconds = starts[-1][0], float(np.median([s for _, s in starts]))
    make_state, step, values = _chunk_function(kind, problem)
    state = make_state(*start)
    jax.block_until_ready(step(state))  # compile (warm-up), result discarded
    trace, elapsed, done = Trace(start_seconds=seconds), 0.0, 0
    score = OBJECTIVES[objective]
    while done < max_iter:
        before = state
        t0 = time.perf_counter()
        state = jax.block_until_ready(step(state)[0])
        elapsed += time.perf_counter() - t0
        done += CHUNK
        value = score(X, *fitted(values, state))
        trace.iterations.append(done)
        trace.seconds.append(elapsed)
        trace.objectives.append(value)
        if value <= target:
            trace.reached = True
            trace.exact_iterations = done - CHUNK + _steps_to_reach(step, values, before, X,
                                                                    target, score)
            break
    return trace


def _steps_to_reach(step, values, state, X, target: float, score) -> int:
    """Fewest updates (≤ CHUNK) from ``state`` after which the objective is ≤ ``target``
    (fit_map runs a shorter last chunk the same way)."""
    for steps in range(1, CHUNK):
        candidate = step(state, steps)[0]
        if score(X, *fitted(values, candidate)) <= target:
            return steps
    return CHUNK


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


def time_bnmf_cavi(X, size: Size, repeats: int) -> dict:
    """``bnmf.fit(method="cavi")`` with default options: first call after clearing JAX's
    caches, then warm (median over ``repeats``)."""
    options = {} if size.svi_draws is None else {"num_draws": size.svi_draws}

    def call():
        return bnmf.fit(X, rank=size.rank, model="poisson", method="cavi", seed=SEED,
                        progress=False, **options)

    jax.clear_caches()
    fit, cold, cold_peak = measure(call)
    runs = [measure(call) for _ in range(repeats)]
    return {"cold": cold, "warm": float(np.median([r[1] for r in runs])),
            "peak_mib": max([cold_peak] + [r[2] for r in runs]),
            "iterations": int(fit.info["iterations"]), "converged": bool(fit.info["converged"]),
            "num_draws": fit.num_draws, "kl_of_mean": kl_objective(X, fit.W, fit.H)}


def time_sparse(size: Size, density: float, repeats: int, iterations: int = 50) -> dict:
    """Dense against SciPy CSR input at about ``density``: ``iterations`` MAP updates
    and CAVI sweeps (tol=0), warm, through ``bnmf.fit`` and through the inference function
    alone (where the data stay O(nnz)); scikit-learn MU on the same CSR matrix for reference."""
    import scipy.sparse as sp

    from bnmf.inference import fit_map as inference_map
    from bnmf.models.counts import sparse_counts

    X = simulate_sparse(size, density)
    csr = sp.csr_matrix(X)
    out = {"density": csr.nnz / X.size, "iterations": iterations}
    flat = flat_model("poisson")
    for label, data in (("dense", X), ("sparse", csr)):
        for method, extra in (("map", {}), ("cavi", {"num_draws": 10})):
            model = flat if method == "map" else "poisson"

            def call(data=data, method=method, model=model, extra=extra):
                return bnmf.fit(data, rank=size.rank, model=model, method=method, seed=SEED,
                                progress=False, max_iter=iterations, tol=0.0, **extra)

            call()  # compile
            runs = [measure(call) for _ in range(repeats)]
            out[(label, method)] = (float(np.median([r[1] for r in runs])),
                                    max(r[2] for r in runs))
    # The inference function on SparseCounts: what a sparse fit costs without bnmf.fit's
    # dense copies (validation and the ArviZ observed_data group).
    data = prepare(csr, counts=True)
    problem = Problem(X=sparse_counts(csr, dtype="float32"), mask=None, rank=size.rank,
                      model=flat.resolve(data, size.rank))
    del data

    def inference_call():
        return inference_map(problem, seed=SEED, max_iter=iterations, tol=0.0, progress=False)

    inference_call()
    runs = [measure(inference_call) for _ in range(repeats)]
    out[("sparse", "inference map")] = (float(np.median([r[1] for r in runs])),
                                        max(r[2] for r in runs))
    estimator = NMF(size.rank, solver="mu", beta_loss="kullback-leibler", init="nndsvda",
                    random_state=SEED, max_iter=iterations, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, seconds, peak = measure(lambda: estimator.fit_transform(csr.T.tocsr()))
    out["sklearn_sparse"] = (seconds, peak)
    out["nnz_mib"] = csr.nnz * (4 + 4 + 4) / 2**20
    out["dense_mib"] = X.size * 4 / 2**20
    return out


def time_restarts(X, size: Size, sk: SklearnResult, iterations: int) -> dict:
    """``size.restarts`` MAP fits from random starts (seeds 0, 1, ...) through ``bnmf.fit``,
    one after another, each with ``iterations`` updates (tol=0: the count bnmf's trace needed
    to reach scikit-learn's objective; the objectives of every restart are reported beside
    scikit-learn's so that the comparison is at equal or better fit): the compiled program
    is reused by every restart. Against scikit-learn's own loop of MU fits from random starts
    (``random_state`` 0, 1, ...; default tol), or, where ``size.sklearn_loop`` is False
    (one fit takes most of a minute), ``restarts`` × its measured nndsvda fit."""
    n = size.restarts

    def bnmf_loop():
        return [bnmf.fit(X, rank=size.rank, model=flat_model("poisson"), method="map",
                         init="random", seed=seed, max_iter=iterations, tol=0.0,
                         progress=False)
                for seed in range(n)]

    fits, seconds, peak = measure(bnmf_loop)
    objectives = [kl_objective(X, fit.W, fit.H) for fit in fits]
    out = {"n": n, "bnmf": seconds, "bnmf_peak": peak, "iterations": iterations,
           "bnmf_objectives": (min(objectives), max(objectives))}
    if size.sklearn_loop:
        def sklearn_loop():
            results = []
            for seed in range(n):
                estimator = NMF(size.rank, solver="mu", beta_loss="kullback-leibler",
                                init="random", random_state=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    H_t = estimator.fit_transform(X.T)
                results.append(kl_objective(X, estimator.components_.T, H_t.T))
            return results

        sk_objectives, sk_seconds, _ = measure(sklearn_loop)
        out.update(sklearn=sk_seconds, sklearn_measured=True,
                   sklearn_objectives=(min(sk_objectives), max(sk_objectives)))
    else:
        out.update(sklearn=n * sk.seconds, sklearn_measured=False,
                   sklearn_objectives=(sk.objective, sk.objective))
    return out


def time_vmapped_restarts(X, size: Size, iterations: int, repeats: int = 3) -> dict:
    """``size.restarts`` MAP fits from random starts batched with ``vmap`` into one compiled
    program (``bnmf.inference.batch.fit_map_batch``, as rank selection runs its restarts)
    against a batch of one through the same code; ``iterations`` updates each (tol=0), warm
    medians over ``repeats`` calls, results on the host."""
    from bnmf.inference.batch import batch_starts, fit_map_batch

    data = prepare(X, counts=True)
    model = flat_model("poisson").resolve(data, size.rank)
    X_device = to_device(data.values, np.float32)
    seconds = {}
    for n in (1, size.restarts):
        masks = np.ones((n, *X.shape), bool)
        W0, H0 = batch_starts(data.values, masks, size.rank, ["random"] * n, range(n),
                              np.float32)
        masks = to_device(masks, bool)

        def call(masks=masks, W0=W0, H0=H0):
            fit = fit_map_batch(X_device, masks, size.rank, model, W0, H0,
                                max_iter=iterations, tol=0.0)
            return np.asarray(fit.values["W"]), np.asarray(fit.values["H"])

        call()  # compile
        seconds[n] = float(np.median([measure(call)[1] for _ in range(repeats)]))
    return {"n": size.restarts, "iterations": iterations, "one": seconds[1],
            "batch": seconds[size.restarts]}


def time_to_reach(X, size: Size, trace: Trace, objective: float, max_iter: int) -> float | None:
    """Seconds (start + update chunks) bnmf's warm MAP trace took to get to a peer's KL
    ``objective``; a new trace is run when the given one stopped short of it (at
    scikit-learn's objective)."""
    if trace.objectives[-1] > objective:
        trace = bnmf_trace(X, size.rank, "poisson", "kl", objective, max_iter)
    return next((trace.start_seconds + t for t, value in zip(trace.seconds, trace.objectives)
                 if value <= objective), None)


def time_minibatch_nmf(X, size: Size, trace: Trace, max_iter: int) -> dict:
    """scikit-learn's MiniBatchNMF (KL, nndsvda, default options) against the time bnmf's MAP
    trace (start + update chunks) needed to reach the same objective."""
    from sklearn.decomposition import MiniBatchNMF

    estimator = MiniBatchNMF(size.rank, beta_loss="kullback-leibler", init="nndsvda",
                             random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        H_t, seconds, peak = measure(lambda: estimator.fit_transform(X.T))
    objective = kl_objective(X, estimator.components_.T, H_t.T)
    reach = time_to_reach(X, size, trace, objective, max_iter)
    return {"seconds": seconds, "peak": peak, "objective": objective, "n_steps": estimator.n_steps_,
            "bnmf_to_reach": reach}


def torchnmf_version() -> str | None:
    """torchnmf's version where it (and PyTorch) import, else None."""
    try:
        import torch  # noqa: F401
        import torchnmf
    except ImportError:
        return None
    from importlib.metadata import version

    return f"torchnmf {version('torchnmf')}, torch {torch.__version__}"


def time_torchnmf(X, size: Size, trace: Trace, max_iter: int) -> dict:
    """torchnmf's KL NMF (``NMF(V.shape, rank).fit(V, beta=1)``: multiplicative updates through
    autograd, its random start, default tol/max_iter) on V = X.T in float32, on the CPU with
    PyTorch's threads set to the cores, or on the CUDA GPU when JAX runs on one (after a
    warm-up fit, so that CUDA's start-up is not timed); against the time bnmf's warm MAP trace
    needed to reach the same KL."""
    import torch
    from torchnmf.nmf import NMF as TorchNMF

    device = "cuda" if ACCELERATOR and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    V = torch.from_numpy(np.ascontiguousarray(X.T)).to(device)

    def run(max_iter=200):
        torch.manual_seed(SEED)
        model = TorchNMF(V.shape, rank=size.rank).to(device)
        n_iter = model.fit(V, beta=1, max_iter=max_iter)
        if device == "cuda":
            torch.cuda.synchronize()
        return model, n_iter

    if device == "cuda":
        run(max_iter=5)
    (model, n_iter), seconds, peak = measure(run)
    # V (samples × features) ≈ H Wᵀ with torchnmf's H (samples × rank), W (features × rank)
    W = model.W.detach().cpu().numpy().astype(np.float64)
    H = model.H.detach().cpu().numpy().astype(np.float64).T
    objective = kl_objective(X, W, H)
    reach = time_to_reach(X, size, trace, objective, max_iter)
    return {"seconds": seconds, "peak": peak, "objective": objective, "n_iter": int(n_iter),
            "bnmf_to_reach": reach, "device": device}


# ------------------------------------------------------------------------------ benchmark
def benchmark_size(size: Size, max_iter: int) -> dict:
    """Every measurement for one size."""
    X = simulate(size) if size.data == "counts" else simulate_gaussian(size)
    log(f"{size.label}: X mean {X.mean():.2f}, {np.mean(X == 0):.1%} zeros")
    result = {"size": size, "mean": float(X.mean()), "zeros": float(np.mean(X == 0)), "map": {},
              "load": os.getloadavg()[0]}
    for kind in size.kinds:
        solver, beta_loss, objective = PAIRS[kind]
        sk = run_sklearn(X, size.rank, solver, beta_loss, objective, size.repeats)
        log(f"  sklearn {solver}: {sk.seconds:.2f}s, {sk.n_iter} iterations, {objective} "
            f"{sk.objective:.8g}")
        trace = bnmf_trace(X, size.rank, kind, objective, sk.objective, max_iter)
        log(f"  bnmf {kind} trace: {trace.to_reach} iterations, reached={trace.reached}, "
            f"{trace.seconds[-1]:.2f}s of updates")
        timing = time_bnmf_map(X, size.rank, kind, objective, trace.to_reach, size.repeats)
        log(f"  bnmf {kind} fit: cold {timing.cold_seconds:.2f}s, warm {timing.warm_seconds:.2f}s")
        default = None
        if size.defaults:
            default = time_bnmf_default(X, size.rank, kind, objective, size.repeats)
            log(f"  bnmf {kind} defaults: {default[0]:.2f}s, {default[1]} iterations")
        result["map"][kind] = {"sklearn": sk, "trace": trace, "timing": timing,
                               "default": default, "objective": objective}
    if size.restarts and "poisson" in size.kinds:
        poisson = result["map"]["poisson"]
        result["restarts"] = time_restarts(X, size, poisson["sklearn"],
                                           poisson["trace"].to_reach)
        log(f"  restarts: {result['restarts']}")
        if ACCELERATOR or size.n_samples < 10_000:  # on 2 CPU cores: 8 × one large fit
            result["vmapped"] = time_vmapped_restarts(X, size, poisson["trace"].to_reach)
            log(f"  vmapped restarts: {result['vmapped']}")
    if size.minibatch:
        result["minibatch"] = time_minibatch_nmf(X, size, result["map"]["poisson"]["trace"],
                                                 max_iter)
        log(f"  MiniBatchNMF: {result['minibatch']}")
    if "poisson" in size.kinds and torchnmf_version() is not None:
        result["torchnmf"] = time_torchnmf(X, size, result["map"]["poisson"]["trace"],
                                           max_iter)
        log(f"  torchnmf: {result['torchnmf']}")
    if "poisson" in size.kinds:
        result["cavi"] = time_bnmf_cavi(X, size, size.repeats)
        log(f"  bnmf cavi: cold {result['cavi']['cold']:.2f}s, warm {result['cavi']['warm']:.2f}s,"
            f" {result['cavi']['iterations']} sweeps")
    if size.svi:
        result["svi"] = time_bnmf_svi(X, size)
        log(f"  bnmf svi: {result['svi']['seconds']}")
    if size.sparse_densities:
        result["sparse"] = [time_sparse(size, density, size.repeats)
                            for density in size.sparse_densities]
        for entry in result["sparse"]:
            log(f"  sparse: { {k: v for k, v in entry.items()} }")
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
    device = jax.devices()[0]
    where = (f"{device.platform.upper()} ({device.device_kind})" if ACCELERATOR
             else device.platform.upper())
    return (f"{os.cpu_count()} CPU cores ({cpu}){memory}, {platform.system()} "
            f"{platform.release()}; JAX on {where}")


def versions() -> str:
    import jaxlib
    import numpyro
    import scipy

    return (f"Python {platform.python_version()}, bnmf {bnmf.__version__}, jax {jax.__version__}"
            f" (jaxlib {jaxlib.__version__}), numpyro {numpyro.__version__}, scikit-learn "
            f"{sklearn.__version__}, numpy {np.__version__}, scipy {scipy.__version__}"
            + (f", {torchnmf_version()}" if torchnmf_version() else ""))


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
            reached = f"{trace.to_reach}" if trace.reached else (
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
        "| bnmf start (nndsvda; Poisson: + least-squares warm-up) (s) | bnmf update time to reach (s) | bnmf overhead in fit (s) "
        "| bnmf defaults: time (s), iters, rel. diff of objective "
        "| peak RSS sklearn (MiB) | peak RSS bnmf first / warm (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for result in results:
        for kind, entry in result["map"].items():
            sk, trace, timing = entry["sklearn"], entry["trace"], entry["timing"]
            overhead = timing.warm_seconds - trace.start_seconds - trace.update_seconds_to_reach
            if entry["default"] is None:
                defaults = "not run"
            else:
                seconds, iters, converged, objective = entry["default"]
                stop = "converged" if converged else "hit max_iter"
                defaults = f"{seconds:.3f}, {iters} ({stop}), {_gap(objective, sk.objective)}"
            rows.append(
                f"| {result['size'].label} | {kind} | {sk.objective:.7g} "
                f"| {timing.objective:.7g} ({_gap(timing.objective, sk.objective)}) "
                f"| {trace.start_seconds:.3f} | {trace.update_seconds_to_reach:.3f} | {overhead:.3f} "
                f"| {defaults} "
                f"| {sk.peak_mib:.0f} | {timing.cold_peak_mib:.0f} / {timing.warm_peak_mib:.0f} |")
    return rows


def throughput_table(results: list, peak: float) -> list[str]:
    rows = [
        "| size | bnmf model | bnmf s/iter | GFLOP per iter | achieved GFLOP/s | share of "
        "matmul peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for kind, entry in result["map"].items():
            flops = flops_per_iteration(kind, result["size"])
            rate = flops / entry["trace"].per_iter / 1e9
            rows.append(f"| {result['size'].label} | {kind} | {entry['trace'].per_iter * 1e3:.2f} ms "
                        f"| {flops / 1e9:.3f} | {rate:.1f} | {rate / peak:.0%} |")
    return rows


def _entries(results: list, key: str):
    """(result, result[key]) for the sizes where ``key`` was measured."""
    return ((result, result[key]) for result in results if key in result)


def cavi_table(results: list) -> list[str]:
    rows = [
        "| size | CAVI sweeps (converged) | num_draws | CAVI first call (s) | CAVI warm (s) "
        "| sklearn MU time (s) | ratio first / sklearn | ratio warm / sklearn "
        "| KL of posterior mean, rel. to sklearn's | peak RSS CAVI (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, cavi in _entries(results, "cavi"):
        mu = result["map"]["poisson"]["sklearn"]
        rows.append(
            f"| {result['size'].label} | {cavi['iterations']} "
            f"({'yes' if cavi['converged'] else 'no'}) | {cavi['num_draws']} "
            f"| {cavi['cold']:.2f} | {cavi['warm']:.2f} | {mu.seconds:.2f} "
            f"| {_ratio(cavi['cold'], mu.seconds)} | {_ratio(cavi['warm'], mu.seconds)} "
            f"| {_gap(cavi['kl_of_mean'], mu.objective)} | {cavi['peak_mib']:.0f} |")
    return rows


def done_when_table(results: list) -> list[str]:
    """The issue's "Done when" ratios, each against its threshold."""
    rows = ["| criterion | measured | threshold | met? |", "|---|---:|---:|---|"]

    def add(name, value, limit):
        rows.append(f"| {name} | {value:.3f} | ≤ {limit} | {'yes' if value <= limit else 'no'} |")

    for result in results:
        label, size = result["size"].label, result["size"]
        for kind, entry in result["map"].items():
            sk, timing = entry["sklearn"], entry["timing"]
            limit_warm, limit_first = (0.10, 0.25) if kind == "poisson" else (0.3, None)
            if not entry["trace"].reached:
                rows.append(f"| {label}: {kind} MAP reaches sklearn's objective | not reached "
                            f"| – | no |")
                continue
            add(f"{label}: {kind} MAP time to sklearn's objective, warm / sklearn",
                timing.warm_seconds / sk.seconds, limit_warm)
            if limit_first is not None:
                add(f"{label}: {kind} MAP, first call (compilation) / sklearn",
                    timing.cold_seconds / sk.seconds, limit_first)
        if "cavi" in result and size.n_samples >= 10_000:
            mu = result["map"]["poisson"]["sklearn"]
            add(f"{label}: full posterior (CAVI, warm) / sklearn MU", result["cavi"]["warm"]
                / mu.seconds, 1.0)
            add(f"{label}: full posterior (CAVI, first call) / sklearn MU",
                result["cavi"]["cold"] / mu.seconds, 1.0)
        if "sparse" in result:
            sp_ = result["sparse"][0]  # the ~10% density of the criterion
            for method in ("map", "cavi"):
                add(f"{label}: sparse / dense input, bnmf.fit {method}",
                    sp_[("sparse", method)][0] / sp_[("dense", method)][0], 0.5)
        if "vmapped" in result and size.n_samples < 10_000:
            v = result["vmapped"]
            name = f"{label}: {v['n']} vmapped restarts / one fit"
            if ACCELERATOR:
                add(name, v["batch"] / v["one"], 3.0)
            else:  # the issue sets this threshold for a GPU only
                rows.append(f"| {name} (CPU) | {v['batch'] / v['one']:.3f} | ≤ 3 on a GPU | – |")
        if "restarts" in result and size.n_samples >= 10_000:
            r = result["restarts"]
            add(f"{label}: {r['n']} restarts / sklearn's loop of {r['n']}"
                + ("" if r["sklearn_measured"] else " (estimated)"), r["bnmf"] / r["sklearn"],
                0.12)
    return rows


def restarts_table(results: list) -> list[str]:
    rows = [
        "| size | restarts | iterations each | bnmf loop (s) | scikit-learn loop (s) "
        "| ratio bnmf / sklearn | KL range bnmf | KL range sklearn | peak RSS bnmf (MiB) |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for result, r in _entries(results, "restarts"):
        sk = f"{r['sklearn']:.2f}" + ("" if r["sklearn_measured"] else
                                      f" ({r['n']} × one nndsvda fit, not run)")
        rows.append(
            f"| {result['size'].label} | {r['n']} | {r['iterations']} | {r['bnmf']:.2f} | {sk} "
            f"| {_ratio(r['bnmf'], r['sklearn'])} "
            f"| {r['bnmf_objectives'][0]:.7g}–{r['bnmf_objectives'][1]:.7g} "
            f"| {r['sklearn_objectives'][0]:.7g}–{r['sklearn_objectives'][1]:.7g} "
            f"| {r['bnmf_peak']:.0f} |")
    return rows


def vmapped_table(results: list) -> list[str]:
    rows = [
        "| size | restarts | iterations each | batch of one (s) | vmapped batch (s) "
        "| ratio batch / one | per restart, batch / one |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result, v in _entries(results, "vmapped"):
        ratio = v["batch"] / v["one"]
        rows.append(f"| {result['size'].label} | {v['n']} | {v['iterations']} | {v['one']:.3f} "
                    f"| {v['batch']:.3f} | {ratio:.2f} | {ratio / v['n']:.2f} |")
    return rows


def device_memory() -> str:
    """The accelerator's peak memory in use by JAX over the whole run, as a sentence."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return ""
    return (f" Peak {jax.devices()[0].platform.upper()} memory in use by JAX over the whole "
            f"run (every size and call): {stats['peak_bytes_in_use'] / 2**20:.0f} MiB.")


def _reach_cells(peer: dict) -> tuple[str, str]:
    """Table cells: bnmf's time to reach a peer's objective, and its ratio to the peer's time."""
    if peer["bnmf_to_reach"] is None:
        return "not reached", "–"
    return f"{peer['bnmf_to_reach']:.2f}", _ratio(peer["bnmf_to_reach"], peer["seconds"])


def minibatch_table(results: list) -> list[str]:
    rows = [
        "| size | MiniBatchNMF time (s) | its KL | bnmf MAP time to that KL (s) | ratio "
        "| peak RSS MiniBatchNMF (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for result, m in _entries(results, "minibatch"):
        reach, ratio = _reach_cells(m)
        rows.append(f"| {result['size'].label} | {m['seconds']:.2f} | {m['objective']:.7g} "
                    f"| {reach} | {ratio} | {m['peak']:.0f} |")
    return rows


def torchnmf_table(results: list) -> list[str]:
    rows = [
        "| size | torchnmf time (s) | its iterations | its KL | KL rel. to scikit-learn's "
        "| bnmf MAP time to that KL (s) | ratio bnmf / torchnmf | peak RSS torchnmf (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, t in _entries(results, "torchnmf"):
        sk = result["map"]["poisson"]["sklearn"].objective
        reach, ratio = _reach_cells(t)
        rows.append(f"| {result['size'].label} | {t['seconds']:.2f} | {t['n_iter']} "
                    f"| {t['objective']:.7g} | {(t['objective'] - sk) / sk:+.1e} | {reach} "
                    f"| {ratio} | {t['peak']:.0f} |")
    return rows


def sparse_table(results: list) -> list[str]:
    rows = [
        "| size | density | call | dense input (s) | sparse input (s) | ratio sparse / dense "
        "| peak RSS dense / sparse (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for result, sp_ in ((r, entry) for r in results for entry in r.get("sparse", [])):
        for method in ("map", "cavi"):
            dense, sparse = sp_[("dense", method)], sp_[("sparse", method)]
            rows.append(
                f"| {result['size'].label} | {sp_['density']:.1%} | `bnmf.fit(method="
                f"\"{method}\")`, {sp_['iterations']} iterations | {dense[0]:.2f} "
                f"| {sparse[0]:.2f} | {_ratio(sparse[0], dense[0])} "
                f"| {dense[1]:.0f} / {sparse[1]:.0f} |")
        inference = sp_[("sparse", "inference map")]
        rows.append(
            f"| {result['size'].label} | {sp_['density']:.1%} | `bnmf.inference.fit_map` on "
            f"SparseCounts, {sp_['iterations']} iterations | {sp_[('dense', 'map')][0]:.2f} "
            f"| {inference[0]:.2f} | {_ratio(inference[0], sp_[('dense', 'map')][0])} "
            f"| – / {inference[1]:.0f} |")
        sk = sp_["sklearn_sparse"]
        rows.append(
            f"| {result['size'].label} | {sp_['density']:.1%} | scikit-learn MU on the CSR "
            f"matrix, {sp_['iterations']} iterations | – | {sk[0]:.2f} | – | – / {sk[1]:.0f} |")
    return rows


def svi_table(results: list) -> list[str]:
    rows = [
        "| size | SVI steps (converged) | num_draws | SVI time per call (s) | sklearn MU time (s) "
        "| ratio SVI / sklearn MU | peak RSS SVI (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result, svi in _entries(results, "svi"):
        mu = result["map"]["poisson"]["sklearn"]
        calls = ", ".join(f"{s:.2f}" for s in svi["seconds"])
        ratios = ", ".join(_ratio(s, mu.seconds) for s in svi["seconds"])
        rows.append(
            f"| {result['size'].label} | {svi['steps']} ({'yes' if svi['converged'] else 'no'}) "
            f"| {svi['num_draws']} | {calls} | {mu.seconds:.3f} | {ratios} "
            f"| {svi['peak_mib']:.0f} |")
    return rows


def report(results: list, command: str, total_seconds: float, max_iter: int,
           peak: float) -> str:
    lines = [
        "# Speed: bnmf against scikit-learn's NMF",
        "",
        f"Command (repository root): `{command}`  ",
        f"Machine: {machine_description()}  ",
        f"Versions: {versions()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; whole run {total_seconds / 60:.1f} min.  ",
        "Load average (1 min) at the start of each size: "
        + ", ".join(f"{r['size'].label}: {r['load']:.1f}" for r in results)
        + f"; at the end: {os.getloadavg()[0]:.1f} (above the {os.cpu_count()} cores' count, "
        "other processes competed for them, which slows both libraries but adds noise to "
        "every ratio)." + ("" if not ACCELERATOR else (
            " bnmf and torchnmf ran on the accelerator named above, scikit-learn on the host's "
            f"{os.cpu_count()} CPU cores: these ratios compare the GPU with what a user of "
            "scikit-learn gets on that host, not with the issue's 2-core figures.")),
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
        "MAP is maximum likelihood; N is the fewest updates (for Poisson: MM updates after the "
        f"{LEAST_SQUARES_WARMUP}-update least-squares warm-up, at least 1) after which bnmf's objective is ≤ "
        "scikit-learn's final one, found from a warm trace of bnmf's own update chunks of 10 "
        f"(capped at {max_iter}) and, within the chunk that reached it, single updates. Both objectives are computed here in "
        "float64 from the returned factors: generalized KL Σ X log(X/WH) − X + WH, and "
        "½‖X − WH‖²_F. Times are wall-clock (`time.perf_counter`) of the whole call, results "
        "materialized; *first call* is the first `bnmf.fit` after `jax.clear_caches()` "
        "(compilation included), *warm* the median of later calls. scikit-learn times are "
        "medians over the same number of calls (it has no compilation). Peak RSS: growth of the "
        "process's resident set during the call (Linux VmHWM, reset through "
        "/proc/self/clear_refs, minus VmRSS before the call)."
        + ("" if not ACCELERATOR else " On the accelerator, RSS counts host memory only; "
           "the data and factors live in device memory." + device_memory()),
        "",
        "## The issue's \"Done when\" ratios",
        "",
        *done_when_table(results),
        "",
        "Not measured here: nimfa 1.4.0 (2019, the latest on PyPI) fails on NumPy 2 "
        "(`np.mat` was removed)"
        + ("" if torchnmf_version() else "; torchnmf needs PyTorch, not installed in the "
           "environment that ran this (`pip install torch torchnmf` adds its rows)")
        + (". This run used the CPU only: `JAX_PLATFORMS=cuda python experiments/speed.py` on "
           "a GPU writes speed_gpu.md (GPU figures and the \"8 vmapped restarts ≤ 3× one\" "
           "check)." if not ACCELERATOR else
           ". The CPU figures of the issue's criteria are in speed.md."),
        "",
        "## Time to reach scikit-learn's final objective",
        "",
        *map_table(results),
        "",
        "## Details",
        "",
        "*start* is bnmf's nndsvda starting point (NumPy, in X's float32) followed, for "
        f"Poisson, by fit_map's {LEAST_SQUARES_WARMUP} least-squares HALS updates (the warm-up "
        "that starts its MM updates); *update time* the "
        "compiled updates alone (N × the trace's s/iter); *overhead* the rest of the warm `bnmf.fit` call (validation, "
        "float64 copies, per-chunk loss and convergence check, building the ArviZ result). "
        "*defaults* is a warm `bnmf.fit(..., method=\"map\")` with its own stopping rule "
        "(tol=1e-6 relative change of the loss over 10 iterations, max_iter=2000); rel. diff is "
        "(bnmf − sklearn) / sklearn objective, negative = bnmf fits better.",
        "",
        *detail_table(results),
        "",
        "## Throughput",
        "",
        f"JAX float32 matrix multiply peak measured in this run: {peak:.0f} GFLOP/s "
        "(`precision=\"highest\"`, true float32 as bnmf computes) "
        "(4096 × 4096 operands, best of 3). bnmf s/iter from the warm trace above; flops count "
        "the matrix products only (multiplicative KL: 8·F·N·K per iteration; HALS: 4·F·N·K "
        "+ 2·(F+N)·K²).",
        "",
        *throughput_table(results, peak),
        "",
        "## Restarts",
        "",
        "Independent MAP fits from random starts, as rank selection and consensus clustering "
        "run them: bnmf `bnmf.fit(X, rank, model=flat, method=\"map\", init=\"random\", "
        "seed=s, max_iter=n, tol=0)` for s = 0…7 one after another (n = the iterations "
        "bnmf needed above to reach scikit-learn's objective from its NNDSVDa start; the KL "
        "columns show whether every random restart got at least as far as scikit-learn's "
        "fits; the compiled program is reused, nothing is recompiled), "
        "against scikit-learn's loop `NMF(solver=\"mu\", beta_loss=\"kullback-leibler\", "
        "init=\"random\", random_state=s)`. Where one scikit-learn fit takes most of a minute "
        "its loop was not run and is estimated as 8 × its measured nndsvda fit (MU's time is "
        "proportional to its iterations, and that fit ran to its iteration cap or tolerance "
        "like the loop's would). These restarts are separate `bnmf.fit` calls; the vmapped "
        "batch below is how rank selection runs them.",
        "",
        *restarts_table(results),
        "",
        "### Restarts batched with vmap",
        "",
        "`bnmf.inference.batch.fit_map_batch` (what `select_rank` runs): random starts, all "
        "entries observed, the iterations above each, tol=0, warm medians of 3 calls, against "
        "a batch of one through the same code. On a CPU one fit already fills the cores, so "
        "a batch of 8 costs about 8 fits; on a GPU one small fit leaves most of the chip idle.",
        "",
        *vmapped_table(results),
        "",
        "## scikit-learn's MiniBatchNMF",
        "",
        "`MiniBatchNMF(rank, beta_loss=\"kullback-leibler\", init=\"nndsvda\")` with default "
        "options, on X.T, against the time bnmf's warm MAP trace (start + update chunks, as in "
        "*Details*) needed to reach MiniBatchNMF's final KL.",
        "",
        *minibatch_table(results),
        "",
        *([] if not any("torchnmf" in r for r in results) else [
            "## torchnmf",
            "",
            f"{torchnmf_version()}: `NMF(X.T.shape, rank).fit(X.T, beta=1)` (KL, "
            "multiplicative updates through autograd, its random start, default tol=1e-4 and "
            "max_iter=200), float32 "
            + ("on the CUDA GPU (after a warm-up fit)" if any(
                r.get("torchnmf", {}).get("device") == "cuda" for r in results) else
               "on the CPU with `torch.set_num_threads(os.cpu_count())`")
            + ", one call; against the time bnmf's warm MAP trace (start + update chunks) "
            "needed to reach torchnmf's final KL.",
            "",
            *torchnmf_table(results),
            ""]),
        "## Full posterior (CAVI)",
        "",
        "`bnmf.fit(X, rank, model=\"poisson\", method=\"cavi\", progress=False[, num_draws])`"
        " with default options and default (empirical-Bayes) priors: NNDSVDa start, gamma "
        "factors updated until the bound changes by < 1e-6 relative over 10 sweeps (≤2000), "
        "posterior draws (NumPy gamma sampler) and their alignment, the ArviZ result. *First "
        "call* after `jax.clear_caches()`. The KL column is the generalized KL of the posterior "
        "mean W̄H̄ relative to scikit-learn's final KL (priors shrink it slightly).",
        "",
        *cavi_table(results),
        "",
        "## Sparse input",
        "",
        "Counts simulated as above with the mean lowered until about the stated fraction is "
        "non-zero; the same matrix passed dense (NumPy) and as SciPy CSR. Fixed iteration "
        "counts (tol=0), warm medians. `bnmf.fit` validates sparse input and stores it in "
        "`fit.idata` without densifying it; the inference call on `SparseCounts` shows the "
        "O(nnz) path alone, without validation and the ArviZ result. Sparse memory is "
        "O(nnz + (F + N)·K) for the data; the posterior draws of H (num_draws × K × N) come "
        "on top for CAVI.",
        "",
        *sparse_table(results),
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


# The sweeps timed by --gibbs: (label, model, gibbs_step flags). "latent counts" is the
# split of every count with W and H from their gamma conditionals; "default" is what
# bnmf.fit(X, rank, method="gibbs") runs on dense counts (learned shapes and rates, block
# moves); "orbit moves" adds the option orbit_moves=True.
GIBBS_SWEEPS = (
    ("latent counts (poisson)", bnmf.models.PoissonGamma(a=1.0, rate_W=1.0, rate_H=1.0),
     {"learn": False, "sample_W": True, "block": False, "orbit": False}),
    ("default (poisson-hierarchical, block moves)",
     bnmf.models.HierarchicalPoissonGamma(rate_rate_W=1.0, rate_rate_H=1.0),
     {"learn": True, "sample_W": True, "block": True, "orbit": False}),
    ("default with orbit_moves=True",
     bnmf.models.HierarchicalPoissonGamma(rate_rate_W=1.0, rate_rate_H=1.0),
     {"learn": True, "sample_W": True, "block": True, "orbit": True}),
)


def time_gibbs_sweeps(n_features: int = 96, n_samples: int = 2000, rank: int = 10,
                      counts_per_sample: float = 1000.0, chains=(1, 4), repeats: int = 3) -> dict:
    """Gibbs sweeps (each of :data:`GIBBS_SWEEPS`) against scikit-learn MU/KL iterations on
    the same X, in the same run: Dirichlet(0.5) parts, gamma(0.8) exposures.

    For each sweep and number of chains, the compiled chunk of ``CHUNK`` sweeps that
    ``fit_gibbs`` runs (chains as ``over_chains`` runs them): the first call (compilation
    and one chunk), then the best of ``repeats`` warm calls, per sweep and chain.
    scikit-learn: the best of ``repeats`` fits of 50 iterations (tol=0), per iteration,
    timed between the Gibbs calls."""
    import jax.numpy as jnp

    from bnmf.inference.common import Problem
    from bnmf.inference.gibbs import CHUNK, GibbsData, _draws, _entries, _priors, gibbs_init
    from bnmf.inference.gibbs_poisson import allocation
    from bnmf.models.poisson import poisson_counts

    rng = np.random.default_rng(SEED)
    W = rng.dirichlet(np.full(n_features, 0.5), rank).T
    H = rng.gamma(0.8, counts_per_sample / (0.8 * rank), (rank, n_samples))
    X = rng.poisson(W @ H).astype(np.float32)
    one = {"a_W": np.ones(rank), "b_W": np.ones(rank), "a_H": np.ones(rank), "b_H": np.ones(rank)}

    def mu_iteration() -> float:
        estimator = NMF(rank, solver="mu", beta_loss="kullback-leibler", init="nndsvda",
                        random_state=SEED, max_iter=50, tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            estimator.fit_transform(X.T)
        return (time.perf_counter() - start) / estimator.n_iter_

    mu, rows = [], []
    for label, model, flags in GIBBS_SWEEPS:
        problem = Problem(jnp.asarray(X), jnp.ones(X.shape, bool), rank, model)
        data = GibbsData(allocation(*_entries(problem), jnp.float32), poisson_counts(problem),
                         *_priors(problem, jnp.float32), jnp.zeros(n_samples, jnp.float32))
        for n_chains in chains:
            keys = jax.random.split(jax.random.PRNGKey(0), n_chains)
            states = jax.tree.map(lambda *x: jnp.stack(x), *[
                gibbs_init(k, jnp.asarray(W, jnp.float32), jnp.asarray(H, jnp.float32), one)
                for k in keys])
            start = time.perf_counter()
            jax.block_until_ready(_draws(states, data, 1, **flags))
            first = time.perf_counter() - start
            warm = []
            for _ in range(repeats):
                mu.append(mu_iteration())
                start = time.perf_counter()
                jax.block_until_ready(_draws(states, data, 1, **flags))
                warm.append((time.perf_counter() - start) / CHUNK / n_chains)
            rows.append({"sweep": label, "chains": n_chains, "first_call_s": first,
                         "sweep_ms": 1e3 * min(warm)})
    rows += _time_negbin_sweeps(X, W, H, chains, repeats, mu, mu_iteration)
    mu_ms = 1e3 * min(mu)
    for row in rows:
        row["ratio"] = row["sweep_ms"] / mu_ms
    return {"size": f"{n_features}x{n_samples} r{rank}", "counts": int(X.sum()),
            "nnz": int((X > 0).sum()), "token_slots": int(data.alloc.tokens.entry.size
                                                           * data.alloc.tokens.slots.size),
            "sklearn_mu_iteration_ms": mu_ms, "load": os.getloadavg(), "rows": rows}


def _time_negbin_sweeps(X, W, H, chains, repeats, mu, mu_iteration) -> list[dict]:
    """The ``negbin`` sampler's default sweep (φ per feature, block moves) on the same X, as
    :func:`time_gibbs_sweeps` times the others (scikit-learn iterations appended to ``mu``)."""
    import jax.numpy as jnp

    from bnmf.inference.common import Problem
    from bnmf.inference.gibbs import CHUNK, _entries
    from bnmf.inference.gibbs_negbin import NegBinGibbsData, NegBinGibbsState, _chunk
    from bnmf.inference.gibbs_poisson import allocation

    model = bnmf.models.NegativeBinomial(rate_W=1.0, rate_H=1.0, phi_rate=1e-3)
    Xj = jnp.asarray(X)
    problem = Problem(Xj, jnp.ones(X.shape, bool), W.shape[1], model)
    data = NegBinGibbsData(allocation(*_entries(problem), jnp.float32), Xj,
                           jnp.ones(X.shape, bool))
    rows = []
    for n_chains in chains:
        states = NegBinGibbsState(
            jnp.log(jnp.broadcast_to(jnp.asarray(W, jnp.float32), (n_chains,) + W.shape)),
            jnp.log(jnp.broadcast_to(jnp.asarray(H, jnp.float32), (n_chains,) + H.shape)),
            jnp.full((n_chains, X.shape[0]), 10.0, jnp.float32),
            jax.random.split(jax.random.PRNGKey(0), n_chains))
        start = time.perf_counter()
        jax.block_until_ready(_chunk(states, data, model, 1, sample_W=True, block=True))
        first = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            mu.append(mu_iteration())
            start = time.perf_counter()
            jax.block_until_ready(_chunk(states, data, model, 1, sample_W=True, block=True))
            warm.append((time.perf_counter() - start) / CHUNK / n_chains)
        rows.append({"sweep": "negbin (φ per feature, block moves)", "chains": n_chains,
                     "first_call_s": first, "sweep_ms": 1e3 * min(warm)})
    return rows


def gibbs_section(result: dict) -> str:
    """The ``## Gibbs sweep`` section of speed.md from :func:`time_gibbs_sweeps`."""
    load = ", ".join(f"{v:.1f}" for v in result["load"])
    lines = [
        "## Gibbs sweep",
        "",
        f"`python experiments/speed.py --gibbs`: one sweep of `method=\"gibbs\"` "
        "(*latent counts*: `model=\"poisson\"`, the split of every count, W and H from their "
        "gamma conditionals; *default*: what `bnmf.fit(X, rank, method=\"gibbs\")` runs on "
        "dense counts, `model=\"poisson-hierarchical\"` with its shapes and rates and block "
        f"moves; the same with `orbit_moves=True`; and `model=\"negbin\"`'s sweep, φ per feature, with its block moves) at {result['size']}, {result['counts']:,} counts, {result['nnz']:,} "
        f"non-zero entries ({result['token_slots']:,} token slots), float32, against one "
        "scikit-learn MU/KL iteration on the same X measured between the Gibbs calls (best of "
        f"3 each): {result['sklearn_mu_iteration_ms']:.1f} ms. Per sweep and chain, warm; "
        "*first call* is compilation plus one chunk of 50 sweeps. Several chains run in one "
        "compiled program (`lax.map` over chains on CPU, `vmap` on accelerators). Load "
        f"average at the end (1, 5, 15 min): {load} on {os.cpu_count()} cores, so the "
        "milliseconds are those of a shared machine and the ratio is of two timings under "
        "the same load (scikit-learn's BLAS may suffer more from it than the Gibbs sweep).",
        "",
        "| sweep | chains | ms per sweep and chain | × one MU iteration | first call s |",
        "|---|---|---|---|---|",
        *(f"| {r['sweep']} | {r['chains']} | {r['sweep_ms']:.1f} | {r['ratio']:.1f} | "
          f"{r['first_call_s']:.1f} |"
          for r in result["rows"]),
        "",
    ]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """``text`` with its ``## Gibbs sweep`` section replaced by ``section`` (appended if
    absent); the section runs to the next ``## `` heading."""
    heading = section.split("\n", 1)[0]
    start = text.find(heading + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(heading))
    return text[:start] + section + (text[end + 1:] if end >= 0 else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown output (default: experiments/results/speed.md in full "
                             "mode, speed_gpu.md on an accelerator; none in quick mode)")
    parser.add_argument("--max-iter", type=int, default=2000,
                        help="cap on bnmf iterations when chasing scikit-learn's objective")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated FxN labels to run (e.g. 5000x5000; default all)")
    parser.add_argument("--gibbs", action="store_true",
                        help="only time Gibbs sweeps against scikit-learn MU iterations and "
                             "write the Gibbs section of the results file")
    args = parser.parse_args(argv)
    if args.gibbs:
        result = time_gibbs_sweeps()
        print(result)
        out = args.out or Path(__file__).resolve().parent / "results" / (
            "speed_gpu.md" if ACCELERATOR else "speed.md")
        out.write_text(replace_section(out.read_text() if out.exists() else "",
                                       gibbs_section(result)))
        log(f"wrote the Gibbs section of {out}")
        return
    sizes = QUICK if args.quick else FULL
    if args.sizes:
        wanted = set(args.sizes.split(","))
        sizes = tuple(s for s in sizes if f"{s.n_features}x{s.n_samples}" in wanted)
        if not sizes:
            parser.error(f"--sizes {args.sizes!r} names none of "
                         + ", ".join(f"{s.n_features}x{s.n_samples}" for s in
                                     (QUICK if args.quick else FULL)))
    out = args.out
    if out is None and not args.quick:
        out = Path(__file__).resolve().parent / "results" / (
            "speed_gpu.md" if ACCELERATOR else "speed.md")
    platforms = os.environ.get("JAX_PLATFORMS", jax.default_backend())
    command = (f"JAX_PLATFORMS={platforms} " if ACCELERATOR else "") + (
        "python experiments/speed.py") + (" --quick" if args.quick else "") + (
        f" --max-iter {args.max_iter}" if args.max_iter != 2000 else "") + (
        f" --sizes {args.sizes}" if args.sizes else "")

    start = time.perf_counter()
    peak = matmul_peak()
    log(f"matmul peak {peak:.0f} GFLOP/s"
        + (f" (TF32: {matmul_peak(precision='default'):.0f})" if ACCELERATOR else ""))
    results = [benchmark_size(size, args.max_iter) for size in sizes]
    text = report(results, command, time.perf_counter() - start, args.max_iter, peak)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        previous = out.read_text() if out.exists() else ""
        if "\n## Gibbs sweep\n" in previous:  # measured by --gibbs: kept, not re-measured
            kept = previous[previous.index("## Gibbs sweep\n"):]
            kept = kept[:kept.find("\n## ", 1) + 1] if "\n## " in kept[1:] else kept
            text = replace_section(text, kept)
        out.write_text(text)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
