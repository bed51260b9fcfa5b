"""``bnmf.refit``: exposures of fixed reference parts through bnmf's inference pipeline.

The model is :class:`~bnmf.models.refit.RefitPoisson` (W fixed, cohort-level share prior);
it is fitted like every other model (:func:`bnmf.fitting.run_inference`: its Gibbs sampler,
the generic NUTS or SVI), in two stages: a screening fit over every part gives the presence
probabilities, a refined fit without the parts each sample clearly lacks gives the exposures.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..data import prepare
from ..fitting import default_method, run_inference
from ..models.refit import RefitPoisson
from .calls import Calls
from .reference import as_reference, check_prob

__all__ = ["REFIT_METHODS", "refined_support", "refit"]

REFIT_METHODS = ("gibbs", "nuts", "svi")
# Per-method defaults of num_warmup, num_samples, num_chains (None in refit's signature).
# NUTS: the former refit's settings (chains one after another). Gibbs: sweeps cost
# milliseconds, so longer chains, two of them for R-hat.
RUN_DEFAULTS = {"nuts": (300, 300, 1), "gibbs": (500, 500, 2), "svi": (None, None, None)}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _method_options(method: str, num_warmup, num_samples, num_chains, thin, target_accept,
                    max_tree_depth, svi_steps, learning_rate, progress) -> dict:
    """refit's keyword options as the options of ``method``'s inference function."""
    defaults = RUN_DEFAULTS[method]
    if method == "svi":
        return {"max_steps": svi_steps, "min_steps": min(2000, svi_steps),
                "learning_rate": learning_rate, "num_draws": 1000, "progress": bool(progress)}
    options = {"num_warmup": defaults[0] if num_warmup is None else num_warmup,
               "num_samples": defaults[1] if num_samples is None else num_samples,
               "num_chains": defaults[2] if num_chains is None else num_chains,
               "progress": bool(progress)}
    if method == "nuts":
        options.update(target_accept=target_accept, max_tree_depth=max_tree_depth)
    else:
        options["thin"] = thin
    return options


def refit(X, signatures, model: str = "poisson", method: str | None = None, seed: int = 0,
          mask=None, *, missing: str = "error", num_warmup: int | None = None,
          num_samples: int | None = None, num_chains: int | None = None, thin: int = 1,
          target_accept: float = 0.95, max_tree_depth: int = 7, svi_steps: int = 3000,
          learning_rate: float = 0.02, refine: bool = True, refine_fraction: float = 0.01,
          dtype: str = "float32", progress: bool = False) -> Calls:
    r"""Infer exposures of fixed reference parts, with a presence probability for each.

    The model (:class:`~bnmf.models.refit.RefitPoisson`): each part's typical share of a
    sample and how evenly it spreads over samples are learned across the cohort, so a part no
    sample needs shrinks towards zero everywhere while a common one keeps its weight.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame, sparse matrix or AnnData
        Counts, features as rows (e.g. 96 SBS channels × tumours).
    signatures : DataFrame or array of shape (n_features, K), or a Fit
        The reference parts, kept fixed. A DataFrame's index must hold exactly X's feature
        labels, in any order (they are matched by label); an array must have X's row order.
        Columns are rescaled to sum to 1, so exposures are in counts.
    model : {"poisson"}
        Likelihood; refitting is implemented for counts.
    method : {"gibbs", "nuts", "svi"}, optional
        ``"gibbs"``: the model's exact latent-count Gibbs sampler (chains in one compiled
        program). ``"nuts"``: NUTS on the same model. The two agree (same calls and coverage
        in ``experiments/results/calling.md``); at 65 signatures NUTS was still 1.7–1.8×
        faster at 150 samples and 1.14× at 300, the gap closing with the cohort. ``"svi"``: mean-field log-normal approximation,
        with intervals that are too narrow. None (default) picks what :func:`bnmf.fit` would
        for K · n_samples latent exposures: NUTS up to 1,000 of them, Gibbs above
        (``calls.info["method_choice"]``); see ``experiments/results/calling.md``.
    seed : int
    mask : array-like of bool, optional
        True where X is observed.
    num_warmup, num_samples, num_chains : int, optional
        Sampler settings (NUTS: 300, 300, 1 chain; Gibbs: 500, 500, 2 chains run together).
    thin : int
        Gibbs: sweeps between kept draws.
    target_accept, max_tree_depth
        NUTS settings.
    svi_steps, learning_rate
        SVI settings (Adam); 1,000 draws are taken from the fitted guide.
    refine : bool
        Two stages (default). The *screening* fit over every part gives the presence
        probabilities. Each sample's exposures and intervals then come from a second fit in
        which the parts with P(share ≥ ``refine_fraction``) < 1/2 are held at zero (plus,
        always, the sample's most probable part). Without it a flat signature (SBS5) leaks
        ~10% of the counts into dozens of similar absent ones, and the active exposures fall
        below their intervals (``experiments/results/calling.md``).
    refine_fraction : float
        Share below which a part is dropped from a sample's refined fit (when it is below it
        with posterior probability above 1/2).
    dtype : {"float32", "float64"}

    Returns
    -------
    Calls
        ``exposures`` (K, n_samples), ``interval(prob)``, ``probability(min_fraction)``,
        ``active(min_fraction, prob)``, ``table()``.

    Examples
    --------
    >>> import numpy as np, bnmf
    >>> rng = np.random.default_rng(0)
    >>> W = rng.dirichlet(np.ones(20), 3).T               # 20 features × 3 parts
    >>> X = rng.poisson(W @ np.array([[300.0] * 8, [100.0] * 8, [0.0] * 8]))
    >>> calls = bnmf.refit(X, W, num_warmup=100, num_samples=100)
    >>> calls.exposures.shape
    (3, 8)
    """
    if model != "poisson":
        raise ValueError(f"refit supports model='poisson' (counts), got {model!r}.")
    if method is not None and method not in REFIT_METHODS:
        raise ValueError(f"method must be one of {REFIT_METHODS} or None, got {method!r}.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    for name, value in (("num_warmup", num_warmup), ("num_samples", num_samples),
                        ("num_chains", num_chains)):
        if value is not None:
            _positive_int(name, value)
    for name, value in (("thin", thin), ("svi_steps", svi_steps),
                        ("max_tree_depth", max_tree_depth)):
        _positive_int(name, value)
    check_prob(target_accept, "target_accept")
    refine_fraction = check_prob(refine_fraction, "refine_fraction")
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"refine must be True or False, got {refine!r}.")
    data = prepare(X, mask=mask, missing=missing, counts=True)
    reference = as_reference(signatures, data)
    has_labels = data.has_labels or isinstance(signatures, pd.DataFrame)
    K = reference.shape[1]
    W = reference.to_numpy()
    start = time.perf_counter()
    choice = None
    if method is None:
        method, choice = default_method(RefitPoisson(), data.shape, K, {}, fixed_W=True)
    options = _method_options(method, num_warmup, num_samples, num_chains, thin, target_accept,
                              max_tree_depth, svi_steps, learning_rate, progress)

    def run(model, seed):
        raw, _, _ = run_inference(data, K, model, method, seed=seed, dtype=dtype, W_fixed=W,
                                  **options)
        return raw

    screen = run(RefitPoisson(), int(seed))
    H_screen = _flat(screen.draws["H"])
    draws, info = H_screen, _run_info(screen)
    if refine:
        support = refined_support(H_screen, refine_fraction)
        refined = run(RefitPoisson(support=support), int(seed) + 1)
        draws = np.where(support, _flat(refined.draws["H"]), 0.0)
        info = {**_run_info(refined), "screening": _run_info(screen),
                "refine_fraction": refine_fraction,
                "mean_support": float(support.sum(axis=0).mean())}
    info.update(method=method, refine=bool(refine), seconds=time.perf_counter() - start)
    if choice is not None:
        info["method_choice"] = choice
    # the screening fit's shares: in the refined fit an absent part's share sees no exposures
    info["cohort_share"] = dict(zip(map(str, reference.columns),
                                    _flat(screen.draws["share"]).mean(axis=0).tolist()))
    return Calls(draws=draws, screening_draws=H_screen, signatures=pd.Index(reference.columns),
                 observation_names=data.observation_names, has_labels=has_labels, info=info)


def _flat(draws) -> np.ndarray:
    """(chain, draw, ...) draws as (chain · draw, ...) float64."""
    draws = np.asarray(draws, dtype=np.float64)
    return draws.reshape((-1,) + draws.shape[2:])


def _run_info(raw) -> dict:
    """The parts of an inference run's ``info`` that a Calls reports."""
    keep = ("algorithm", "num_chains", "num_warmup", "num_samples", "thin", "divergences",
            "iterations", "map_iterations")
    return {k: v for k, v in (raw.info or {}).items() if k in keep}


def refined_support(H_draws, min_fraction: float) -> np.ndarray:
    """(K, n_samples) True where P(share ≥ ``min_fraction``) ≥ 1/2, plus each sample's most
    probable part so that no sample is left empty. ``H_draws`` is (n_draws, K, n_samples)."""
    H = np.asarray(H_draws)
    share = H / np.maximum(H.sum(axis=1, keepdims=True), np.finfo(H.dtype).tiny)
    probability = (share >= min_fraction).mean(axis=0)
    support = probability >= 0.5
    support[probability.argmax(axis=0), np.arange(support.shape[1])] = True
    return support
