"""Which default stopping rule for the closed-form MAP: iterations and objective at the stop.

For each data set, runs bnmf's MAP updates (the fit's own start, warm-up and compiled chunks of
10 updates) for up to 2,000 updates with no stopping, records the loss after every chunk and
scikit-learn's objective (KL for Poisson, ½‖X − WH‖² for Gaussian, float64) of the iterate,
then applies each candidate rule to the loss trace: where would it stop, and is the objective
there at least as good as scikit-learn's final one (``NMF(init="nndsvda")``, default tol)?
Iterations are deterministic, so a busy machine does not change them; the time a rule costs
is its iterations × the update time (``experiments/results/speed.md``).

Run: ``nice -n 10 python experiments/stopping.py`` (writes experiments/results/stopping.md).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import OBJECTIVES, PAIRS, Size, flat_model, simulate, simulate_gaussian  # noqa: E402

from bnmf.data import prepare  # noqa: E402
from bnmf.inference.common import Problem, to_device  # noqa: E402
from bnmf.inference.driver import compiled_step  # noqa: E402
from bnmf.inference.map import CHUNK, map_start  # noqa: E402
from bnmf.models.base import capability  # noqa: E402
from bnmf.models.poisson import LEAST_SQUARES_WARMUP  # noqa: E402

CASES = [("poisson", Size(96, 2_000, 10, 1, None)), ("poisson", Size(1_000, 2_000, 12, 1, None)),
         ("gaussian", Size(1_000, 1_000, 10, 1, None)), ("gaussian", Size(500, 2_000, 8, 1, None))]
MAX_ITER = 2_000
RULES = [("relative change of the loss < 1e-6 (old default)", "relative", 1e-6),
         ("relative change of the loss < 1e-5", "relative", 1e-5),
         ("chunk decrease ≤ 1e-2 × decrease since the first chunk", "progress", 1e-2),
         ("chunk decrease ≤ 3e-3 × decrease since the first chunk", "progress", 3e-3),
         ("chunk decrease ≤ 1e-3 × decrease since the first chunk", "progress", 1e-3),
         ("chunk decrease ≤ 1e-4 × decrease since the first chunk", "progress", 1e-4),
         ("chunk decrease < 1e-3 nats per observed entry", "per_entry", 1e-3),
         ("chunk decrease < 3e-4 nats per observed entry", "per_entry", 3e-4),
         ("chunk decrease < 1e-4 nats per observed entry (the default)", "per_entry", 1e-4),
         ("chunk decrease < 3e-5 nats per observed entry", "per_entry", 3e-5),
         ("chunk decrease < 1e-5 nats per observed entry", "per_entry", 1e-5)]


def trace(kind: str, X: np.ndarray, rank: int):
    """(losses per chunk, objective per chunk) of bnmf's MAP from its own start."""
    data = prepare(X, counts=kind == "poisson")
    model = flat_model(kind).resolve(data, rank)
    problem = Problem(to_device(data.values, np.float32), to_device(data.mask, bool), rank,
                      model)
    updates = capability(model, "map_update")
    W, H = map_start(problem, "nndsvda", 0)
    if updates.warm_start is not None:
        W, H, _ = updates.warm_start(problem, W, H, LEAST_SQUARES_WARMUP)
    aux = updates.prepare(problem)
    state = updates.init(W, H, aux, model)
    program = compiled_step(updates.step, (True,), False)
    losses, objectives = [], []
    for _ in range(MAX_ITER // CHUNK):
        state, loss = program(state, aux, model, CHUNK)
        values = updates.values(state)
        losses.append(float(loss[-1]))
        objectives.append(OBJECTIVES[PAIRS[kind][2]](X, values["W"], values["H"]))
    return np.array(losses), np.array(objectives)


def stop_at(losses: np.ndarray, rule: str, tol: float, n_entries: int) -> int:
    """Index of the chunk at which the rule stops (the driver's rules, applied offline)."""
    for i in range(1, losses.size):
        change = abs(losses[i - 1] - losses[i])
        if rule == "per_entry" and change < tol * n_entries:
            return i
        if rule == "relative" and change < tol * abs(losses[i]):
            return i
        if rule == "progress" and change <= tol * max(losses[0] - losses[i], 0.0):
            return i
    return losses.size - 1


def sklearn_objective(kind: str, X: np.ndarray, rank: int) -> tuple[float, int]:
    solver, beta, objective = PAIRS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMF(rank, solver=solver, beta_loss=beta, init="nndsvda", random_state=0)
        W = model.fit_transform(X.T)  # scikit-learn factors samples × features
    return OBJECTIVES[objective](X, model.components_.T, W.T), int(model.n_iter_)


def main() -> None:
    lines = ["# Default stopping rule of the closed-form MAP", "",
             "Command: `nice -n 10 python experiments/stopping.py` (CPU). For each data set "
             "(as in speed.py: Poisson counts of gamma(0.5) factors, Gaussian |WH + noise|), "
             "bnmf's MAP updates run 2,000 updates from the fit's own start (NNDSVDa; Poisson: "
             "+ 20 least-squares updates) with the loss read every 10; each rule is applied to "
             "that trace. *vs sklearn*: (bnmf − sklearn) / sklearn of scikit-learn's own "
             "objective (float64) at the stop, against NMF(init='nndsvda') with default tol "
             "(negative = bnmf better); *iters to sklearn*: the first chunk at or below it.", ""]
    for kind, size in CASES:
        X = simulate(size) if kind == "poisson" else simulate_gaussian(size)
        reference, sk_iters = sklearn_objective(kind, X, size.rank)
        losses, objectives = trace(kind, X, size.rank)
        reach = np.flatnonzero(objectives <= reference)
        reach = f"{(reach[0] + 1) * CHUNK}" if reach.size else f"> {MAX_ITER}"
        lines += [f"## {kind}, {size.n_features:,}×{size.n_samples:,}, rank {size.rank}", "",
                  f"scikit-learn: {sk_iters} iterations, objective {reference:.8g}; bnmf "
                  f"reaches it after {reach} updates; best after {MAX_ITER}: "
                  f"{(objectives.min() - reference) / reference:+.2e}.", "",
                  "| rule | stops after (updates) | vs sklearn | ≤ sklearn? |", "|---|---:|---:|---|"]
        for label, rule, tol in RULES:
            i = stop_at(losses, rule, tol, X.size)
            rel = (objectives[i] - reference) / reference
            lines.append(f"| {label} | {(i + 1) * CHUNK} | {rel:+.2e} | "
                         f"{'yes' if objectives[i] <= reference else 'no'} |")
        lines.append("")
        print("\n".join(lines[-len(RULES) - 6:]), flush=True)
    out = Path(__file__).resolve().parent / "results" / "stopping.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    jax.config.update("jax_default_matmul_precision", "highest")
    main()
