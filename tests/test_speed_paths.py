"""Fast paths give the generic paths' answers: sparse counts in O(nnz), the HALS noise update."""

from functools import wraps
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import fit_seeing_hidden_values, simulate

import bnmf
from bnmf.inference import Problem, fit_map, fit_svi
from bnmf.inference.driver import clear_compile_cache
from bnmf.models.counts import (
    DenseCounts,
    log_factorial_sum,
    poisson_data_constant,
    mask_left,
    mask_right,
    ratio_left,
    ratio_right,
    sparse_counts,
    sum_rate,
    sum_x_log_rate,
)
from bnmf.models import GaussianHalfNormal, PoissonGamma

RNG = np.random.default_rng(0)
X_SPARSE = sp.random(25, 35, density=0.15, random_state=1, format="csr",
                     data_rvs=lambda n: RNG.integers(1, 30, n).astype(float))
MASK = RNG.uniform(size=X_SPARSE.shape) > 0.1


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("block_entries", [40, 400, 10_000])  # 8 or 11 rows (last block
# overlaps), or one piece
def test_row_blocked_dense_ratios_equal_one_piece(monkeypatch, masked, block_entries):
    from bnmf.models import counts as counts_module

    X = jnp.asarray(X_SPARSE.toarray(), jnp.float32)  # 25 × 35: 25 rows do not divide evenly
    weight = jnp.asarray(MASK, jnp.float32) if masked else None
    A = jnp.asarray(RNG.uniform(0.1, 2.0, (25, 3)), jnp.float32)
    B = jnp.asarray(RNG.uniform(0.1, 2.0, (3, 35)), jnp.float32)
    c = DenseCounts(X, weight)
    ratio = np.asarray((X if weight is None else weight * X) / (A @ B))
    monkeypatch.setattr(counts_module, "BLOCK_ENTRIES", block_entries)
    if block_entries < 10_000:
        assert counts_module._row_block(X.shape) < X.shape[0]
    np.testing.assert_allclose(ratio_right(c, A, B), ratio @ np.asarray(B).T, rtol=2e-5)
    np.testing.assert_allclose(ratio_left(c, A, B), np.asarray(A).T @ ratio, rtol=2e-5)
    Xw = np.asarray(X if weight is None else weight * X)
    np.testing.assert_allclose(sum_x_log_rate(c, A, B), np.sum(Xw * np.log(np.asarray(A @ B))),
                               rtol=2e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_sparse_operations_equal_dense(masked):
    mask = MASK if masked else None
    with jax.enable_x64(True):
        A = jnp.asarray(RNG.gamma(1.0, 1.0, (25, 3)))
        B = jnp.asarray(RNG.gamma(1.0, 1.0, (3, 35)))
        sparse = sparse_counts(X_SPARSE, mask, dtype="float64")
        M = np.ones(X_SPARSE.shape) if mask is None else mask.astype(float)
        dense = DenseCounts(jnp.asarray(X_SPARSE.toarray()), None if mask is None
                            else jnp.asarray(M))
        for op, args in ((ratio_right, (A, B)), (ratio_left, (A, B)), (mask_right, (B,)),
                         (mask_left, (A,)), (sum_x_log_rate, (A, B)), (sum_rate, (A, B))):
            np.testing.assert_allclose(op(sparse, *args), op(dense, *args), rtol=1e-12,
                                       err_msg=op.__name__)
        assert log_factorial_sum(sparse) == pytest.approx(log_factorial_sum(dense), rel=1e-12)
    # O(nnz) storage: only the observed non-zero counts and the unobserved entries.
    assert sparse.values.shape[0] == int(((X_SPARSE.toarray() > 0) & (M > 0)).sum())
    assert sparse.hidden_rows.shape[0] == (0 if mask is None else int((~mask).sum()))


@pytest.mark.parametrize("method", ["map", "cavi"])
@pytest.mark.parametrize("masked", [False, True])
def test_sparse_fit_equals_dense_fit(method, masked):
    mask = MASK if masked else None
    options = {"max_iter": 200, "tol": 0.0, "progress": False, "dtype": "float64"}
    if method == "cavi":
        options["num_draws"] = 20
    dense = bnmf.fit(X_SPARSE.toarray(), 3, method=method, mask=mask, **options)
    sparse = bnmf.fit(X_SPARSE, 3, method=method, mask=mask, **options)
    np.testing.assert_allclose(sparse.losses, dense.losses, rtol=1e-9)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(sparse.H, dense.H, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["map", "cavi"])
def test_sparse_counts_at_unobserved_entries_are_ignored(method):
    options = {"method": method, "progress": False, "dtype": "float64"}
    if method == "cavi":
        options["num_draws"] = 10
    a = bnmf.fit(X_SPARSE, 3, mask=MASK, **options)
    # 1000 stored at every unobserved entry after validation (which drops them): the O(nnz)
    # path itself must drop them
    b = fit_seeing_hidden_values(X_SPARSE, 3, MASK, value=1000.0, **options)
    np.testing.assert_allclose(b.W, a.W, rtol=1e-10)


def test_sparse_problem_refuses_what_it_cannot_do():
    counts = sparse_counts(X_SPARSE)
    gaussian = GaussianHalfNormal(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="O\\(nnz\\) only for model='poisson'"):
        fit_map(Problem(counts, None, 2, gaussian), progress=False)
    poisson = PoissonGamma(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="method='map' and method='cavi' only"):
        fit_svi(Problem(counts, None, 2, poisson), progress=False)


def test_hals_noise_update_from_products_matches_direct_residual():
    """The full-data HALS path gets ‖X − WH‖² from products, not from a pass over X: the noise
    scale it returns must be the mode given the direct residual of the W, H it returns, and
    its loss the exact negative log joint of that iterate."""
    from bnmf.models.gaussian import _gaussian_hals_chunk, gaussian_neg_log_joint, hals_state

    X, _, _ = simulate(30, 40, rank=3, likelihood="gaussian", seed=2)
    with jax.enable_x64(True):
        Xj = jnp.asarray(X)
        W0, H0 = jnp.asarray(RNG.uniform(size=(30, 3))), jnp.asarray(RNG.uniform(size=(3, 40)))
        hyper = jnp.asarray([10.0, 10.0, 10.0])
        state, loss = _gaussian_hals_chunk(hals_state(W0, H0, 1.0), Xj, Xj.T, hyper,
                                           n_steps=5, update_W=True)
        W, H, sigma, best_loss = state.best
        rss = np.sum((X - np.asarray(W) @ np.asarray(H)) ** 2)
        n = X.size
        expected = np.sqrt(2 * rss / (n + np.sqrt(n**2 + 4 * rss / 100.0)))
        np.testing.assert_allclose(sigma, expected, rtol=1e-8)
        exact = gaussian_neg_log_joint(W, H, sigma, Xj, None, hyper)
        np.testing.assert_allclose(loss[0], exact, rtol=1e-12)
        np.testing.assert_allclose(best_loss, exact, rtol=1e-8)


# ------------------------------------------------------------------ sharding over devices
SHARDED_SETUP = """
import jax, numpy as np, bnmf, scipy.sparse as sp
from bnmf.inference.common import shard_problem, Problem
from helpers import simulate

assert len(jax.devices()) == 4, jax.devices()
X, _, _ = simulate(24, 40, rank=3, counts_per_sample=400, seed=5)
mask = np.random.default_rng(0).uniform(size=X.shape) > 0.1
"""

SHARDED_FLOAT64 = """
with jax.enable_x64(True):
    problem = Problem(jax.numpy.asarray(X), jax.numpy.ones(X.shape, bool), 3, None)
    sharded, W, H = shard_problem(problem, jax.numpy.ones((24, 3)), jax.numpy.ones((3, 40)), 4)
assert len(sharded.X.sharding.device_set) == 4 and len(H.sharding.device_set) == 4
for model, method, mask_ in (("poisson", "map", None), ("poisson", "cavi", mask),
                             ("gaussian", "map", None)):
    extra = {"num_draws": 20} if method == "cavi" else {}
    fits = [bnmf.fit(X, 3, model=model, method=method, mask=mask_, dtype="float64",
                     progress=False, max_iter=100, tol=0.0, devices=devices, **extra)
            for devices in (None, 4)]
    np.testing.assert_allclose(fits[1].losses, fits[0].losses, rtol=1e-9)
    np.testing.assert_allclose(fits[1].W, fits[0].W, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fits[1].H, fits[0].H, rtol=1e-7, atol=1e-9)
# Minibatch CAVI: each minibatch split over the devices, sparse X sliced into dense blocks.
fits = [bnmf.fit(sp.csr_matrix(X), 3, method="cavi", batch_size=8, epochs=2, dtype="float64",
                 progress=False, num_draws=20, devices=devices) for devices in (None, 4)]
np.testing.assert_allclose(fits[1].losses, fits[0].losses, rtol=1e-9)
np.testing.assert_allclose(fits[1].W, fits[0].W, rtol=1e-7, atol=1e-12)
assert fits[1].elbo == fits[0].elbo or abs(fits[1].elbo / fits[0].elbo - 1) < 1e-10
print("sharded fits equal")
"""

SHARDED_FLOAT32 = """
# float32: sums over samples reduce in another order on 4 devices, so fits agree to a stated
# tolerance, relative to the largest entry (README, "Several devices"; measured on this data:
# Poisson MAP 1.3e-6, CAVI 3.9e-7, minibatch CAVI 5.7e-7, masked Gaussian MAP 2.5e-7; Gaussian
# MAP with every entry observed 4.0e-4, whose extrapolation accepts or restarts on loss
# comparisons that such rounding can flip; the same fit in float32 and float64 differs by 9%)
def close(a, b, tol):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), (np.max(np.abs(a - b)), tol)

Xg, _, _ = simulate(24, 40, rank=3, likelihood="gaussian", counts_per_sample=400, seed=5)
for data, model, method, mask_, tol in ((X, "poisson", "map", None, 1e-5),
                                        (X, "poisson", "cavi", mask, 1e-5),
                                        (Xg, "gaussian", "map", mask, 1e-5),
                                        (Xg, "gaussian", "map", None, 2e-3)):
    extra = {"num_draws": 20} if method == "cavi" else {}
    fits = [bnmf.fit(data, 3, model=model, method=method, mask=mask_, dtype="float32",
                     progress=False, max_iter=100, tol=0.0, devices=devices, **extra)
            for devices in (None, 4)]
    close(fits[1].W, fits[0].W, tol)
    close(fits[1].H, fits[0].H, tol)
fits = [bnmf.fit(sp.csr_matrix(X), 3, method="cavi", batch_size=8, epochs=2, dtype="float32",
                 progress=False, num_draws=20, devices=devices) for devices in (None, 4)]
close(fits[1].W, fits[0].W, 1e-5)
close(fits[1].H, fits[0].H, 1e-5)
print("sharded fits equal")
"""


@pytest.mark.parametrize("precision", [
    "float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_fits_sharded_over_four_host_devices_equal_one_device(precision):
    """Run in a subprocess: the device count is fixed when JAX starts. float64: equal to
    rounding; float32 (slow): within the README's stated tolerances."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu",
           # the repository first, then whatever the environment already puts on the path
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    script = SHARDED_SETUP + {"float64": SHARDED_FLOAT64, "float32": SHARDED_FLOAT32}[precision]
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tests.parent,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded fits equal" in result.stdout


def test_devices_option_is_checked():
    X, _, _ = simulate(10, 15, rank=2, seed=1)
    with pytest.raises(ValueError, match="devices must be a positive integer"):
        bnmf.fit(X, 2, method="map", devices=0, progress=False)
    with pytest.raises(ValueError, match="JAX sees"):
        bnmf.fit(X, 2, method="cavi", devices=len(jax.devices()) + 1, progress=False)


# ------------------------------------------------------------------------ minibatch CAVI
X_MB, _, _ = simulate(30, 400, rank=3, counts_per_sample=500, seed=1)


@pytest.fixture(scope="module")
def full_cavi():
    return bnmf.fit(X_MB, 3, method="cavi", progress=False, dtype="float64", num_draws=400)


def _sd(fit, name):
    return fit.idata.posterior[name].std(("chain", "draw")).values


def test_minibatch_cavi_approaches_full_cavi(full_cavi):
    """Minibatches of 50 of 400 samples: the N/|B| scaling must give q(W) the full data's
    weight (a wrong scale would change its spread), and the bound must come close."""
    mb = bnmf.fit(X_MB, 3, method="cavi", progress=False, dtype="float64", batch_size=50,
                  epochs=20, num_draws=400)
    assert mb.info["algorithm"] == "cavi-gamma-minibatch" and mb.info["iterations"] == 160
    assert abs(mb.elbo - full_cavi.elbo) < 0.01 * abs(full_cavi.elbo)
    np.testing.assert_allclose(mb.W, full_cavi.W, atol=0.03)
    ratio = np.median(_sd(mb, "W") / _sd(full_cavi, "W"))
    assert 0.8 < ratio < 1.25, ratio


def test_minibatch_cavi_sparse_equals_dense_and_ignores_masked_entries():
    mask = np.random.default_rng(2).uniform(size=X_MB.shape) > 0.1
    options = {"method": "cavi", "progress": False, "dtype": "float64", "batch_size": 100,
               "epochs": 2, "num_draws": 10}
    dense = bnmf.fit(X_MB, 3, mask=mask, **options)
    # 1000 stored at the unobserved entries after validation: minibatches must drop them
    sparse = fit_seeing_hidden_values(sp.csr_matrix(X_MB), 3, mask, value=1000.0, **options)
    np.testing.assert_allclose(sparse.losses, dense.losses, rtol=1e-9)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-8)
    assert sparse.elbo == pytest.approx(dense.elbo, rel=1e-10)


def test_minibatch_options_are_checked():
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        bnmf.fit(X_MB, 3, method="cavi", batch_size=401, progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        bnmf.fit(X_MB, 3, method="cavi", batch_size=40, epochs=0, progress=False)
    with pytest.raises(ValueError, match="must divide batch_size=40"):
        bnmf.fit(X_MB, 3, method="cavi", batch_size=40, devices=3, progress=False)


# ------------------------------------------------------------ sparse input is never densified
def test_sparse_input_too_large_to_densify_fits():
    """1,000 × 2,000,000 would take 16 GB dense (twice that to validate): validation, the MAP fit and the stored
    posterior must stay O(nnz + (features + samples) · rank)."""
    shape, nnz = (1_000, 2_000_000), 20_000
    rng = np.random.default_rng(3)
    X = sp.coo_matrix((rng.integers(1, 20, nnz).astype(float),
                       (rng.integers(0, shape[0], nnz), rng.integers(0, shape[1], nnz))),
                      shape=shape)
    data = bnmf.data.prepare(X, counts=True)
    assert data.shape == shape and data.fully_observed
    mean, std = data.observed_moments()
    assert mean == pytest.approx(X.sum() / (shape[0] * shape[1]))
    fit = bnmf.fit(X.tocsr(), 2, method="map", max_iter=20, progress=False)
    assert fit.H.shape == (2, shape[1]) and np.isfinite(fit.H).all()
    assert fit.idata.observed_data["X_value"].size == data.sparse.nnz


@pytest.mark.parametrize("masked", [False, True])
def test_sparse_fit_scores_and_saves_like_dense(masked, tmp_path):
    mask = MASK if masked else None
    options = {"method": "map", "max_iter": 30, "progress": False, "dtype": "float64",
               "mask": mask}
    dense = bnmf.fit(X_SPARSE.toarray(), 3, **options)
    sparse = bnmf.fit(X_SPARSE, 3, **options)
    np.testing.assert_allclose(sparse.log_likelihood(), dense.log_likelihood(), rtol=1e-6)
    sparse.save(tmp_path / "fit.nc")
    np.testing.assert_array_equal(bnmf.load(tmp_path / "fit.nc").log_likelihood(),
                                  sparse.log_likelihood())


def test_sparse_validation_matches_dense():
    dense_X = X_SPARSE.toarray()
    with_nan = X_SPARSE.copy()
    with_nan[0, with_nan[0].indices[0]] = np.nan
    with pytest.raises(ValueError, match="NaN values .* no mask was given"):
        bnmf.data.prepare(with_nan)
    a = bnmf.data.prepare(with_nan, missing="mask")
    b = bnmf.data.prepare(with_nan.toarray(), missing="mask")
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.observed_moments() == pytest.approx(b.observed_moments(), rel=1e-12)
    negative = X_SPARSE.copy()
    negative.data[3] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        bnmf.data.prepare(negative)
    with pytest.raises(ValueError, match="non-integer values"):
        bnmf.data.prepare(X_SPARSE * 0.5, counts=True)
    hide_row = np.ones(dense_X.shape, bool)
    hide_row[4] = False
    with pytest.raises(ValueError, match="hides every entry of feature 4"):
        bnmf.data.prepare(X_SPARSE, mask=hide_row)


def test_replacing_the_mask_of_sparse_data_uses_the_new_mask():
    """Rank selection swaps in a training mask with dataclasses.replace: the dense arrays then
    rule, not the stale sparse copy."""
    import dataclasses

    data = bnmf.data.prepare(X_SPARSE, counts=True)
    train = dataclasses.replace(data, mask=MASK)
    assert train.sparse is None and not train.fully_observed
    np.testing.assert_array_equal(train.mask, MASK)


@pytest.mark.parametrize("method", ["map", "cavi"])
def test_fits_with_row_blocked_ratios_equal_unblocked_fits(monkeypatch, method):
    from bnmf.models import counts as counts_module

    X = simulate(23, 37, 3, seed=5)[0]
    options = dict(method=method, seed=0, max_iter=60, tol=0.0, progress=False)
    if method == "cavi":
        options["num_draws"] = 20
    jax.clear_caches()  # the block size is read when a function is traced
    whole = bnmf.fit(X, 3, **options)
    monkeypatch.setattr(counts_module, "BLOCK_ENTRIES", 100)
    assert counts_module._row_block(X.shape) == 8  # blocks of 8, 8 and 7 (+1 overlapping) rows
    jax.clear_caches()
    blocked = bnmf.fit(X, 3, **options)
    jax.clear_caches()
    np.testing.assert_allclose(blocked.W, whole.W, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(blocked.H, whole.H, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(blocked.losses, whole.losses, rtol=1e-4)  # float32 sums


def test_fully_observed_gaussian_loss_equals_the_masked_one():
    from bnmf.models.gaussian import gaussian_neg_log_joint

    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.gamma(1.0, 1.0, (30, 40)))
    W, H = jnp.asarray(rng.uniform(0, 1, (30, 4))), jnp.asarray(rng.uniform(0, 1, (4, 40)))
    hyper = jnp.asarray([0.7, 1.3, 2.0])
    masked = gaussian_neg_log_joint(W, H, 0.8, X, jnp.ones(X.shape, bool), hyper)
    np.testing.assert_allclose(gaussian_neg_log_joint(W, H, 0.8, X, None, hyper), masked,
                               rtol=1e-5)


def _mm_loss_after(X, relaxation, iterations, masked):
    """Loss of the Poisson MAP after ``iterations`` (multiples of 10) from one start, and the
    final state: the model's "map_update" capability run by the driver's compiled step."""
    from bnmf.inference.driver import compiled_step
    from bnmf.inference.map import map_start
    from bnmf.models.base import capability

    mask = np.random.default_rng(5).uniform(size=X.shape) > (0.1 if masked else 0.0)
    model = PoissonGamma(a=1.0, rate_W=1e-3, rate_H=1e-3)
    problem = Problem(jnp.asarray(X, jnp.float32), jnp.asarray(mask), 4, model)
    W, H = map_start(problem, "nndsvda", 0)
    updates = capability(model, "map_update")
    aux = updates.prepare(problem)
    state = updates.init(W, H, aux, model)._replace(relaxation=jnp.float32(relaxation))
    program = compiled_step(updates.step, (True,), False)
    losses = []
    for _ in range(iterations // 10):
        state, loss = program(state, aux, model, 10)
        losses.append(float(loss[-1]))
    return np.array(losses), state


@pytest.mark.parametrize("masked", [False, True])
def test_over_relaxed_mm_never_raises_the_loss_and_gets_further(masked):
    X, _, _ = simulate(n_features=60, n_samples=80, rank=4, counts_per_sample=500, seed=3)
    plain, _ = _mm_loss_after(X, 1.0, 100, masked)
    relaxed, state = _mm_loss_after(X, 1.7, 100, masked)
    assert np.all(np.diff(plain) <= 1e-6 * np.abs(plain[1:]))  # plain MM is monotone
    assert np.all(np.diff(relaxed) <= 0)  # the fallback check keeps the relaxed one so
    # further along after the same number of updates (here 100)
    assert relaxed[-1] < plain[-1]
    assert float(state.relaxation) == pytest.approx(1.7)  # it never fell back


class _FakeState(NamedTuple):
    x: jax.Array
    loss: jax.Array
    relaxation: jax.Array


def test_monotone_fallback_redoes_a_chunk_that_raised_the_loss_with_plain_updates():
    """A relaxed chunk whose loss rose is redone from its previous state with relaxation 1,
    which it keeps; members of a batch fall back on their own."""
    from bnmf.inference.driver import monotone_fallback

    def step(state):  # relaxed steps overshoot (loss up), plain ones go down by one
        plain = state.relaxation == 1.0
        return _FakeState(state.x + 1, jnp.where(plain, state.loss - 1, state.loss + 100),
                          state.relaxation)

    guarded = jax.jit(monotone_fallback(step))
    state = guarded(_FakeState(jnp.zeros(2), jnp.asarray([10.0, 10.0]),
                               jnp.asarray([1.5, 1.0])))
    np.testing.assert_array_equal(state.loss, [9.0, 9.0])  # member 0 redone plain
    np.testing.assert_array_equal(state.relaxation, [1.0, 1.0])
    np.testing.assert_array_equal(state.x, [1.0, 1.0])  # one step from the previous state
    start = _FakeState(jnp.zeros(1), jnp.asarray([jnp.inf]), jnp.asarray([1.5]))
    grows = jax.jit(monotone_fallback(lambda s: s._replace(loss=jnp.asarray([5.0]))))(start)
    assert float(grows.relaxation[0]) == 1.5  # a first chunk from inf is kept relaxed


def test_poisson_map_reports_its_relaxation():
    X, _, _ = simulate(n_features=30, n_samples=40, rank=3, seed=4)
    fit = bnmf.fit(X, 3, model="poisson", method="map", max_iter=200, progress=False)
    assert fit.info["relaxation"] == pytest.approx(1.7)
    assert isinstance(fit.info["relaxation_fell_back"], bool)
    assert np.all(np.diff(fit.losses) <= 0)  # the fall-back check keeps the trace monotone


@pytest.mark.parametrize("density", [0.002, 0.05, 0.6])
def test_segments_hold_every_entry_once_with_bounded_padding(density):
    from bnmf.models.counts import MAX_SEGMENT_WIDTH, segments

    X = sp.random(70, 300, density=density, random_state=2, format="coo",
                  data_rvs=lambda n: RNG.integers(1, 50, n).astype(float))
    X = sp.vstack([X, sp.coo_matrix((3, 300))]).tocoo()  # rows without entries too
    for owners, others, n_owners, dense in [(X.row, X.col, X.shape[0], X.toarray()),
                                            (X.col, X.row, X.shape[1], X.toarray().T)]:
        seg = segments(owners, others, X.data, n_owners, "float32")
        owner, index, values = (np.asarray(a) for a in (seg.owner, seg.index, seg.values))
        rebuilt = np.zeros_like(dense)
        np.add.at(rebuilt, (np.repeat(owner, index.shape[1]), index.ravel()), values.ravel())
        np.testing.assert_array_equal(rebuilt, dense)
        assert np.all(np.diff(owner) >= 0)
        assert values.size <= 2 * max(X.nnz, n_owners) and index.shape[1] <= MAX_SEGMENT_WIDTH


@pytest.mark.parametrize("model, method, options", [
    ("poisson", "map", {}), ("gaussian", "map", {}), ("poisson", "cavi", {"num_draws": 20}),
    ("poisson", "map", {"init": "random"}),
])
def test_a_second_fit_of_the_same_shapes_compiles_nothing(caplog, model, method, options):
    """Compiled programs are reused across calls: new data, seed and start, same shapes."""
    rng = np.random.default_rng(3)
    X1, X2 = (rng.poisson(5.0, (23, 31)).astype(float) for _ in range(2))
    bnmf.fit(X1, 3, model=model, method=method, seed=0, max_iter=20, progress=False, **options)
    compiled, _ = compilations(caplog, lambda: bnmf.fit(
        X2, 3, model=model, method=method, seed=1, max_iter=20, progress=False, **options))
    assert compiled == []


@pytest.mark.parametrize("model, method, options", [
    (PoissonGamma(1.0, 1.0, 1.0), "map", {}), (GaussianHalfNormal(5.0, 5.0, 5.0), "map", {}),
    (PoissonGamma(1.0, 1.0, 1.0), "cavi", {"num_draws": 20}),
    ("gaussian", "map", {}),  # hyperparameters from the data: they differ between the fits
])
def test_log_likelihood_compiles_once_per_model_and_shapes(caplog, model, method, options):
    """Fit.log_likelihood compiles once per kind of model and shapes: a second call, and a
    call on a second fit of the same shapes (other data), compile nothing and score their
    own fit."""
    rng = np.random.default_rng(4)
    X1, X2 = (rng.poisson(5.0, (23, 31)).astype(float) for _ in range(2))
    first = bnmf.fit(X1, 3, model=model, method=method, max_iter=20, progress=False, **options)
    second = bnmf.fit(X2, 3, model=model, method=method, max_iter=20, progress=False, **options)
    lpd_first = first.log_likelihood()
    compiled, again = compilations(caplog, first.log_likelihood)
    assert compiled == [] and np.array_equal(again, lpd_first)
    compiled, lpd = compilations(caplog, second.log_likelihood)
    assert compiled == []
    assert lpd.shape == X2.shape and np.all(np.isfinite(lpd))
    assert not np.allclose(lpd, lpd_first)  # its own data and draws


def compilations(caplog, call):
    """(the programs JAX compiles while ``call()`` runs, its result)."""
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level("WARNING"):
            caplog.clear()
            result = call()
    finally:
        jax.config.update("jax_log_compiles", False)
    return [r.getMessage()[:120] for r in caplog.records if "Compiling" in r.getMessage()], result


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_to_device_converts_exactly(dtype):
    from bnmf.inference.common import to_device

    values = RNG.gamma(1.0, 3.0, (7, 13))
    with jax.enable_x64(dtype is np.float64):
        array = to_device(values if dtype is not bool else values > 3.0, dtype)
    expected = values.astype(dtype) if dtype is not bool else values > 3.0
    assert array.dtype == np.dtype(dtype) and array.shape == (7, 13)
    np.testing.assert_array_equal(np.asarray(array), expected)


@pytest.mark.parametrize("shape", [(5, 9), (1030, 517)])  # inside one tile; across tile edges
def test_tiled_transpose_equals_the_transpose(shape):
    from bnmf.inference.common import transposed

    X = jnp.asarray(RNG.uniform(size=shape), jnp.float32)
    XT = transposed(X)
    assert XT.shape == shape[::-1]
    np.testing.assert_array_equal(np.asarray(XT), np.asarray(X).T)


@pytest.mark.parametrize("masked", [False, True])
def test_noise_scale_start_equals_the_masked_residual(masked):
    from bnmf.models.gaussian import rms_residual

    X = RNG.uniform(0.0, 5.0, (40, 30))
    W, H = RNG.uniform(size=(40, 4)), RNG.uniform(size=(4, 30))
    mask = RNG.uniform(size=X.shape) > 0.3 if masked else np.ones(X.shape, bool)
    expected = np.sqrt(np.sum(np.where(mask, X - W @ H, 0.0) ** 2) / mask.sum())
    with jax.enable_x64(True):  # the full-mask identity must agree to float64 rounding
        got = float(rms_residual(jnp.asarray(W), jnp.asarray(H), jnp.asarray(X),
                                 jnp.asarray(mask)))
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("model, method", [("poisson", "map"), ("gaussian", "map"),
                                           ("poisson", "cavi")])
def test_max_iter_runs_exactly_that_many_closed_form_updates(model, method):
    # 25 is not a multiple of the 10-update chunk: the last chunk runs 5 updates, so the final
    # loss lies strictly between those after 20 and after 30 updates (the trace falls).
    X = np.random.default_rng(3).poisson(5.0, size=(30, 40)).astype(float)
    final = {}
    for max_iter in (20, 25, 30):
        result = bnmf.fit(X, 3, model=model, method=method, max_iter=max_iter, tol=0.0,
                          progress=False, **({"num_draws": 10} if method == "cavi" else {}))
        assert result.info["iterations"] == max_iter
        final[max_iter] = float(np.asarray(result.losses)[-1])
    assert final[20] > final[25] > final[30]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("fractional", [False, True])
def test_log_factorial_sum_equals_the_sum_of_log_factorials(masked, fractional):
    from scipy.special import gammaln

    from bnmf.models.counts import _count_frequencies

    X = RNG.poisson(4.0, size=(23, 31)).astype(np.float32)
    if fractional:
        X[3, 5] += 0.5
    weight = (RNG.uniform(size=X.shape) > 0.2).astype(np.float32) if masked else None
    if weight is not None:
        weight[3, 5] = 1.0  # the fractional count is observed (else masking would remove it)
    X = X if weight is None else X * weight  # 0 where unobserved, as in a Problem
    expected = np.sum(gammaln(X.astype(np.float64) + 1.0) * (1.0 if weight is None else weight))
    got = log_factorial_sum(DenseCounts(jnp.asarray(X), None if weight is None
                                        else jnp.asarray(weight)))
    assert got == pytest.approx(expected, rel=1e-6)
    # the histogram a few entries at a time (many blocks, a short last one) equals one piece
    blocked = _count_frequencies(X, weight, block=7)
    if fractional:
        assert blocked is None
    else:
        whole = np.bincount(X.astype(np.int64).ravel(), weights=None if weight is None
                            else weight.ravel())
        np.testing.assert_allclose(blocked, whole)


@pytest.mark.parametrize("kind, method", [("poisson", "map"), ("gaussian", "map"),
                                          ("gaussian", "svi")])
def test_a_second_batch_of_restarts_of_the_same_shapes_compiles_nothing(caplog, kind, method):
    """fit_map_batch and fit_svi_batch (rank selection's restarts) reuse their compiled
    programs across calls: other data (other empirical-Bayes scales), masks and seeds."""
    from bnmf.data import prepare
    from bnmf.inference.batch import batch_starts, fit_map_batch, fit_svi_batch, keys_for
    from bnmf.inference.common import to_device

    model = PoissonGamma() if kind == "poisson" else GaussianHalfNormal()

    def run(seed):
        rng = np.random.default_rng(seed)
        X = (1 + seed) * rng.poisson(5.0, (23, 31)).astype(float)
        data = prepare(X, counts=kind == "poisson")
        masks = rng.uniform(size=(3, 23, 31)) > 0.2
        W0, H0 = batch_starts(data.values, masks, 3, ["random"] * 3, [seed] * 3, np.float32)
        args = (to_device(data.values, np.float32), to_device(masks, bool), 3,
                model.resolve(data, 3), W0, H0)
        if method == "map":
            fit = fit_map_batch(*args, max_iter=20, tol=0.0)
        else:
            fit = fit_svi_batch(*args, keys_for([seed] * 3), max_steps=200, min_steps=200,
                                map_iter=20)
        return np.asarray(fit.values["W"])

    run(0)
    compiled, W = compilations(caplog, lambda: run(1))
    assert compiled == []
    assert np.all(np.isfinite(W)) and W.shape == (3, 23, 3)
    if method == "svi":  # the reused programs give what programs compiled afresh give
        jax.clear_caches()
        clear_compile_cache()
        np.testing.assert_array_equal(run(1), W)


def _precision_recorder(calls: list, function):
    """``function`` wrapped to record JAX's matmul precision setting at each call (trace)."""
    @wraps(function)  # keeps the signature, which bnmf.fit reads to check options
    def wrapped(*args, **kwargs):
        calls.append(jax.config.jax_default_matmul_precision)
        return function(*args, **kwargs)
    return wrapped


def test_entry_points_compute_matrix_products_in_full_precision(monkeypatch):
    """On a GPU JAX rounds float32 matmul operands to TF32 by default (the monotone MM trace
    then rises); bnmf's entry points set full precision, whatever the caller's setting."""
    import bnmf.fitting
    import bnmf.selection

    X, _, _ = simulate(n_features=12, n_samples=15, rank=2, seed=3)
    callers_setting = jax.config.jax_default_matmul_precision
    calls = []
    monkeypatch.setitem(bnmf.fitting.METHODS, "map",
                        _precision_recorder(calls, bnmf.fitting.METHODS["map"]))
    monkeypatch.setattr(bnmf.selection, "fit_map_batch",
                        _precision_recorder(calls, bnmf.selection.fit_map_batch))
    with jax.default_matmul_precision("tensorfloat32"):
        fit = bnmf.fit(X, 2, model="poisson", method="map", max_iter=20, progress=False)
        bnmf.select_rank(X, ranks=[2], model="poisson", method="map", folds=2, restarts=1,
                         max_iter=20, progress=False)
        model_class = type(fit.model)
        monkeypatch.setattr(model_class, "log_likelihood",
                            _precision_recorder(calls, model_class.log_likelihood))
        bnmf.posterior._log_likelihood_per_draw.clear_cache()  # trace it here, whatever ran before
        fit.log_likelihood()
    assert len(calls) == 3 and set(calls) == {"highest"}
    assert jax.config.jax_default_matmul_precision == callers_setting  # restored afterwards


@pytest.mark.parametrize("model, method, options", [
    ("poisson", "svi", {"max_steps": 200, "min_steps": 100, "num_draws": 20}),
    ("gaussian", "svi", {"max_steps": 200, "min_steps": 100, "num_draws": 20}),
    ("horseshoe", "map", {"max_iter": 100, "init": "random"}),
    ("gaussian", "nuts", {"num_warmup": 50, "num_samples": 50}),
])
def test_a_fit_of_other_data_with_the_same_shapes_compiles_nothing(caplog, model, method,
                                                                   options):
    """SVI, Adam MAP and NUTS take the resolved model's hyperparameters as arguments of their
    programs: a fit of other data (other empirical-Bayes scales) with the same shapes reuses
    them, and gives what a fit compiled afresh for that data gives."""
    rng = np.random.default_rng(8)
    X1 = rng.poisson(5.0, (23, 31)).astype(float)
    X2 = 3.0 * rng.poisson(5.0, (23, 31)).astype(float)  # three times the scale
    run = lambda X: bnmf.fit(X, 3, model=model, method=method, seed=1,  # noqa: E731
                             progress=False, **options)
    first = run(X1)
    compiled, second = compilations(caplog, lambda: run(X2))
    assert compiled == []
    assert second.idata.posterior.attrs["model_params"] != first.idata.posterior.attrs[
        "model_params"]
    clear_compile_cache()
    afresh = run(X2)
    np.testing.assert_array_equal(second.losses, afresh.losses)
    np.testing.assert_array_equal(second.W, afresh.W)


def test_sparse_input_with_duplicate_unsorted_entries_fits_as_their_sum():
    """SciPy sums duplicate COO entries; bnmf's stored copy is flagged canonical (sorted,
    summed) so that SciPy does not sort it again: the fit must equal the dense one."""
    dense = RNG.poisson(3.0, (12, 17)).astype(float)
    rows, cols = np.nonzero(dense)
    halves = np.floor(dense[rows, cols] / 2)
    order = RNG.permutation(2 * rows.size)  # split every count in two, shuffled
    coo = sp.coo_matrix((np.concatenate([halves, dense[rows, cols] - halves])[order],
                         (np.tile(rows, 2)[order], np.tile(cols, 2)[order])), shape=dense.shape)
    # float64: in float32 the orders of summation differ enough to flip an extrapolation
    # step of the least-squares warm-up (seen: 0.15% in one entry of W)
    options = dict(model="poisson", method="map", max_iter=30, tol=0.0, progress=False,
                   dtype="float64")
    sparse_fit, dense_fit = bnmf.fit(coo, 2, **options), bnmf.fit(dense, 2, **options)
    np.testing.assert_allclose(sparse_fit.W, dense_fit.W, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sparse_fit.losses, dense_fit.losses, rtol=1e-5)


def _hals_losses(X, steps, monkeypatch, extrapolation_start):
    """Per-update losses of the current iterate and the final state of the full-data HALS
    iteration from one start (``extrapolation_start=0``: plain HALS)."""
    import bnmf.models.gaussian as map_module

    monkeypatch.setattr(map_module, "_EXTRAPOLATION_START", extrapolation_start)
    Xj = jnp.asarray(X)
    rng = np.random.default_rng(1)
    W0 = jnp.asarray(rng.uniform(size=(X.shape[0], 5)))
    H0 = jnp.asarray(rng.uniform(size=(5, X.shape[1])))
    hyper = jnp.asarray([1e3, 1e3, 1e3])
    state, losses = map_module.hals_state(W0, H0, 1.0), []
    for _ in range(steps):  # one update per call, to see every iterate's loss
        state, _ = map_module._gaussian_hals_chunk(state, Xj, Xj.T, hyper, n_steps=1,
                                                   update_W=True)
        losses.append(float(state.loss))
    return np.array(losses), state


def test_extrapolated_hals_gets_further_than_plain_hals_and_returns_its_best(monkeypatch):
    X, _, _ = simulate(120, 150, rank=5, likelihood="gaussian", seed=11)
    with jax.enable_x64(True):
        plain, plain_state = _hals_losses(X, 25, monkeypatch, 0.0)
        extrapolated, state = _hals_losses(X, 25, monkeypatch, 0.25)
    assert np.all(np.diff(plain) <= 1e-12 * np.abs(plain[1:]))  # plain HALS is monotone
    assert float(plain_state.beta) == 0.0  # β = 0 stays 0: no extrapolation at all
    assert extrapolated.min() < plain[-1]  # further along after the same 25 updates
    # the state keeps the best iterate, which is what fit_map returns
    assert float(state.best[3]) == pytest.approx(extrapolated.min(), rel=1e-12)
    best_W, best_H = np.asarray(state.best[0]), np.asarray(state.best[1])
    assert best_W.min() >= 0 and best_H.min() >= 0


def _kl(X, W, H):
    """Generalized KL divergence Σ X log(X / WH) − X + WH, in float64."""
    X, rate = np.asarray(X, np.float64), np.asarray(W, np.float64) @ np.asarray(H, np.float64)
    return float(np.sum(np.where(X > 0, X * np.log(np.where(X > 0, X, 1.0) / rate), 0.0)
                        - X + rate))


def test_least_squares_warmup_reaches_scikit_learns_least_squares_objective():
    """The warm-up is HALS on ½‖X − WH‖²: run long enough, it matches scikit-learn's CD
    solver's objective from the same kind of start, and leaves no exact zeros behind."""
    from sklearn.decomposition import NMF

    from bnmf.inference.common import starting_point
    from bnmf.models.poisson import least_squares_warmup

    X, _, _ = simulate(n_features=40, n_samples=70, rank=3, seed=5)
    reference = NMF(3, solver="cd", init="nndsvda", tol=1e-10, max_iter=2000).fit(X)
    sk_objective = 0.5 * np.sum((X - reference.transform(X) @ reference.components_) ** 2)
    W0, H0 = starting_point(X, np.ones(X.shape, bool), 3, "nndsvda", 0)
    with jax.enable_x64(True):
        W, H = least_squares_warmup(jnp.asarray(X), jnp.asarray(W0), jnp.asarray(H0), 300)
    W, H = np.asarray(W), np.asarray(H)
    assert 0.5 * np.sum((X - W @ H) ** 2) <= sk_objective * (1 + 1e-4)
    assert W.min() > 0 and H.min() > 0  # floored, so multiplicative updates can move them


def test_poisson_map_warmup_gets_further_and_keeps_the_trace_monotone():
    """The least-squares warm-up starts the MM updates near the KL optimum: after 10 MM
    updates the fit is further along than 100 MM updates from NNDSVDa alone."""
    X, _, _ = simulate(n_features=60, n_samples=300, rank=4, counts_per_sample=800, seed=6)
    options = {"model": PoissonGamma(1.0, 1e-10, 1e-10), "method": "map", "tol": 0.0,
               "progress": False, "dtype": "float64"}
    warm = bnmf.fit(X, 4, max_iter=10, **options)
    cold = bnmf.fit(X, 4, max_iter=100, warmup=0, **options)
    assert warm.info["least_squares_warmup"] == 20 and cold.info["least_squares_warmup"] == 0
    assert _kl(X, warm.W, warm.H) < _kl(X, cold.W, cold.H)
    long = bnmf.fit(X, 4, max_iter=300, **options)
    assert np.all(np.diff(long.losses) <= 0)  # the MM updates after it stay monotone


@pytest.mark.parametrize("masked", [False, True])
def test_sparse_least_squares_products_equal_dense(masked):
    from bnmf.models.counts import product_left, product_right

    with jax.enable_x64(True):
        sparse = sparse_counts(X_SPARSE, MASK if masked else None, dtype="float64")
        X = X_SPARSE.toarray() * (MASK if masked else 1)  # unobserved entries hold no count
        A = jnp.asarray(RNG.gamma(1.0, 1.0, (25, 3)))
        B = jnp.asarray(RNG.gamma(1.0, 1.0, (3, 35)))
        np.testing.assert_allclose(product_right(sparse, B), X @ np.asarray(B).T, rtol=1e-12)
        np.testing.assert_allclose(product_left(sparse, A), X.T @ np.asarray(A), rtol=1e-12)


def test_sparse_warmup_equals_dense_warmup():
    from bnmf.inference.common import starting_point
    from bnmf.models.poisson import least_squares_warmup

    X = X_SPARSE.toarray()
    W0, H0 = starting_point(X, np.ones(X.shape, bool), 3, "nndsvda", 0)
    with jax.enable_x64(True):
        W0, H0 = jnp.asarray(W0), jnp.asarray(H0)
        dense = least_squares_warmup(jnp.asarray(X), W0, H0, 20)
        sparse = least_squares_warmup(sparse_counts(X_SPARSE, dtype="float64"), W0, H0, 20)
    for d, s in zip(dense, sparse):
        np.testing.assert_allclose(s, d, rtol=1e-9, atol=1e-12)


def test_warmup_runs_only_where_it_applies_and_is_checked():
    X, _, _ = simulate(n_features=30, n_samples=40, rank=3, seed=7)
    mask = np.ones(X.shape, bool)
    mask[0, 0] = False
    options = {"method": "map", "max_iter": 20, "progress": False}
    assert bnmf.fit(X, 3, mask=mask, **options).info["least_squares_warmup"] == 0
    assert bnmf.fit(sp.csr_matrix(X), 3, mask=mask, **options).info[
        "least_squares_warmup"] == 0
    assert bnmf.fit(X, 3, warmup=5, **options).info["least_squares_warmup"] == 5
    with pytest.raises(ValueError, match="warmup must be a non-negative integer"):
        bnmf.fit(X, 3, warmup=-1, **options)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match="warmup must be an integer"):
            bnmf.fit(X, 3, warmup=bad, **options)



@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("block_entries", [40, 10_000])  # row blocks (the last overlapping)
def test_kl_form_loss_equals_the_poisson_negative_log_joint(monkeypatch, sparse, masked,
                                                             block_entries):
    """The MM loss, the data constant minus the KL divergence, is the exact negative log
    joint (per-entry log-likelihoods summed), dense or sparse, masked or not, in row blocks."""
    from bnmf.models import counts as counts_module
    from bnmf.models.poisson import poisson_counts_neg_log_joint, poisson_neg_log_joint

    monkeypatch.setattr(counts_module, "BLOCK_ENTRIES", block_entries)
    mask = MASK if masked else np.ones(X_SPARSE.shape, bool)
    with jax.enable_x64(True):
        X = jnp.asarray(X_SPARSE.toarray() * mask)
        W = jnp.asarray(RNG.gamma(1.0, 1.0, (25, 3)))
        H = jnp.asarray(RNG.gamma(1.0, 3.0, (3, 35)))
        hyper = jnp.asarray([1.5, 0.1, 0.2])
        counts = (sparse_counts(X_SPARSE, mask if masked else None, dtype="float64") if sparse
                  else DenseCounts(X, jnp.asarray(mask, jnp.float64) if masked else None))
        got = poisson_counts_neg_log_joint(W, H, counts, hyper, poisson_data_constant(counts),
                                           log_space=False)
        expected = poisson_neg_log_joint(W, H, X, jnp.asarray(mask), hyper, log_space=False)
        assert float(got) == pytest.approx(float(expected), rel=1e-12)


def test_float32_poisson_map_trace_is_monotone_at_large_counts():
    """At ~10⁴ counts per entry the log-likelihood's own terms (~10⁹) cancel in float32 by more
    than an update gains; the KL form keeps the MM trace monotone, so the relaxation's check
    does not fall back on rounding noise."""
    X, _, _ = simulate(n_features=40, n_samples=50, rank=3, counts_per_sample=2e6, seed=0)
    fit = bnmf.fit(X, 3, model="poisson", method="map", max_iter=500, tol=0.0, progress=False)
    assert np.all(np.diff(fit.losses) <= 0)
    assert not fit.info["relaxation_fell_back"]
