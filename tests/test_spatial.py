"""Spatially smoothed NMF (``model="spatial"``): the MM objective is the NumPyro program's log
density, the prior smooths, masks, save/load, the generic paths, and bad graphs refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from numpyro.infer.util import log_density

import bnmf
from bnmf.graph import grid_graph, knn_graph, prepare_neighbors
from bnmf.inference import Problem
from bnmf.models import SpatialNMF
from bnmf.models.base import capability
from bnmf.models.spatial import degrees, edge_penalty, neighbor_differences, neighbor_sum

RNG = np.random.default_rng(5)
SIDE, RANK, F = 4, 3, 7          # a 4 × 4 image: 16 samples
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}


def _grid_matrix(side=SIDE):
    g = grid_graph(side, side)
    A = sp.coo_matrix((g.weight, (g.row, g.col)), shape=(g.n_nodes,) * 2)
    return (A + A.T).tocsr()


def _smooth_data(side=16, n_features=20, noise=0.3, seed=0):
    """X (features × pixels) from abundances that vary smoothly over a side × side image,
    the abundances (rank 3, columns sum to 1) and the image's 4-neighbour graph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    A = np.stack([np.exp(-((xx - .2) ** 2 + (yy - .3) ** 2) / .05),
                  np.exp(-((xx - .8) ** 2 + (yy - .6) ** 2) / .05),
                  0.3 + 0 * xx]).reshape(3, -1)
    A /= A.sum(axis=0)
    W = rng.gamma(1.0, 1.0, (n_features, 3))
    mean = W @ A
    X = np.abs(mean + rng.normal(0, noise * mean.mean(), mean.shape))
    return X, A, grid_graph(side, side)


def _log_joint(model, X, mask, values):
    """log p(X, sites) of the model's NumPyro program (compiled: one compile instead of an
    eager dispatch of every operation); ``values`` in bnmf's layout."""
    values = dict(values, H=values["H"].T)
    return float(jax.jit(lambda m, v: log_density(m.numpyro_model, (X, mask, RANK), {}, v)[0])(
        model, values))


def _model(likelihood):
    return SpatialNMF(neighbors=_grid_matrix(), likelihood=likelihood, smoothness=3.0,
                      scale_W=1.1, scale_H=0.9, scale_sigma=0.7)


@pytest.mark.parametrize("kind, dtype, n_updates", [("masked", "float64", 4),
                                                   ("dense", "float32", 0)])
@pytest.mark.parametrize("likelihood", ["gaussian", "poisson"])
def test_map_update_objective_is_the_models_log_density(likelihood, kind, dtype, n_updates):
    """The MM loss is −log p(X, W, H[, σ]) of the NumPyro program, smoothing term included,
    at the start and after updates, which never raise it (float64 with a mask, updates
    included; float32 every entry observed, the objective only: one compile each)."""
    with jax.enable_x64(dtype == "float64"):
        n = SIDE * SIDE
        X = RNG.poisson(4.0, (F, n)).astype(float)
        mask = np.ones((F, n), bool) if kind == "dense" else RNG.uniform(size=(F, n)) > 0.3
        X, mask = jnp.asarray(np.where(mask, X, 0.0), dtype), jnp.asarray(mask)
        model = _model(likelihood)
        W = jnp.asarray(RNG.gamma(2.0, 0.7, (F, RANK)), dtype)
        H = jnp.asarray(RNG.gamma(2.0, 0.7, (RANK, n)), dtype)
        updates = capability(model, "map_update")
        aux = updates.prepare(Problem(X, mask, RANK, model))
        step = jax.jit(updates.step, static_argnums=(4,))   # n_steps traced: one compile
        state = updates.init(W, H, aux, model)
        values = {"W": W, "H": H, **({"sigma": state.sigma} if state.sigma is not None else {})}
        loss = float(step(state, aux, model, 0, True).loss)
        expected = -_log_joint(model, X, mask, values)
        assert loss == pytest.approx(expected, rel=TOLERANCE[dtype])
        smoothing = 0.5 * float(model.precision() * edge_penalty(H, *model.graph()))
        assert smoothing > 1e3 * TOLERANCE[dtype] * abs(expected)  # a dropped term would show
        losses = [loss]
        for _ in range(n_updates):
            state = step(state, aux, model, 3, True)
            losses.append(float(state.loss))
        if n_updates:
            assert float(state.loss) == pytest.approx(
                -_log_joint(model, X, mask, updates.values(state)), rel=TOLERANCE[dtype])
            assert np.all(np.diff(losses) <= 1e-6 * abs(loss))
            assert losses[-1] < losses[0]


def test_graph_sums_match_the_dense_laplacian():
    A = _grid_matrix().toarray() * RNG.uniform(0.5, 2.0)
    g = prepare_neighbors(A)
    H = RNG.gamma(2.0, 1.0, (RANK, g.n_nodes))
    L = np.diag(A.sum(1)) - A
    with jax.enable_x64(True):
        args = (jnp.asarray(g.row), jnp.asarray(g.col), jnp.asarray(g.weight))
        assert float(edge_penalty(jnp.asarray(H), *args)) == pytest.approx(
            np.trace(H @ L @ H.T), rel=1e-12)
        np.testing.assert_allclose(neighbor_sum(jnp.asarray(H), *args), H @ A, rtol=1e-12)
        np.testing.assert_allclose(degrees(*args, g.n_nodes), A.sum(1), rtol=1e-12)


def test_knn_graph_of_a_pixel_grid_is_its_four_neighbour_graph():
    side = 6
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"),
                      -1).reshape(-1, 2)
    grid = grid_graph(side, side)
    knn = knn_graph(coords, 4)
    edges = set(zip(knn.row.tolist(), knn.col.tolist()))
    assert set(zip(grid.row.tolist(), grid.col.tolist())) <= edges   # every grid edge
    interior = [i for i in range(side * side) if 0 < i // side < side - 1
                and 0 < i % side < side - 1]
    counts = np.bincount(np.concatenate([knn.row, knn.col]), minlength=side * side)
    # an interior pixel's 4 nearest are its grid neighbours; border pixels borrow diagonals,
    # so a few interior ones gain an edge back from them
    assert counts[interior].min() == 4 and counts.min() >= 4
    f = grid_graph(3, 2, order="F")                    # column-major numbering
    assert (0, 3) in set(zip(f.row.tolist(), f.col.tolist()))


def test_smoothing_reduces_neighbour_differences_and_error():
    """On data whose abundances vary smoothly, the prior gives smoother abundances, closer
    to the truth, than the same model, algorithm and start without it (λ = 0)."""
    X, A, g = _smooth_data()
    fits = {lam: bnmf.fit(X, 3, model="spatial", neighbors=_grid_matrix(16), smoothness=lam,
                          method="map", seed=0) for lam in (0.0, 100.0)}
    rough, err = {}, {}
    for lam, fit in fits.items():
        H = np.asarray(fit.H)
        share = H / H.sum(axis=0)
        rough[lam] = neighbor_differences(share, g.row, g.col)
        cos = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (
            share / np.linalg.norm(share, axis=1, keepdims=True)).T
        from scipy.optimize import linear_sum_assignment

        _, cols = linear_sum_assignment(-cos)
        err[lam] = np.sqrt(np.mean((share[cols] - A) ** 2))
        assert fit.info["algorithm"] == "graph-regularised-mm"
        assert np.all(np.diff(np.asarray(fit.losses).ravel()) <= 0)
    assert rough[100.0] < 0.6 * rough[0.0]
    assert err[100.0] < 0.7 * err[0.0]


def test_coords_build_the_same_fit_as_the_equivalent_graph():
    X, _, _g = _smooth_data(side=8)
    coords = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"),
                      -1).reshape(-1, 2)
    knn = knn_graph(coords, 4)
    M = sp.coo_matrix((knn.weight, (knn.row, knn.col)), shape=(64, 64))
    a = bnmf.fit(X, 3, model="spatial", coords=coords, n_neighbors=4, method="map",
                 max_iter=50)
    b = bnmf.fit(X, 3, model="spatial", neighbors=M + M.T, method="map", max_iter=50)
    np.testing.assert_allclose(np.asarray(a.H), np.asarray(b.H), rtol=1e-6)
    np.testing.assert_array_equal(a.model.coords, coords)


def test_masked_entries_do_not_enter_the_fit_and_round_trip_is_exact(tmp_path):
    X, _, _ = _smooth_data(side=8)
    mask = RNG.uniform(size=X.shape) > 0.2
    other = np.where(mask, X, 1e3)
    kwargs = {"model": "spatial", "neighbors": _grid_matrix(8), "method": "map", "max_iter": 60}
    a = bnmf.fit(X, 3, mask=mask, **kwargs)
    b = bnmf.fit(other, 3, mask=mask, **kwargs)
    np.testing.assert_allclose(np.asarray(a.H), np.asarray(b.H), rtol=1e-5)
    assert a.info["algorithm"] == "graph-regularised-mm"
    a.save(tmp_path / "fit.nc")
    back = bnmf.load(tmp_path / "fit.nc")
    np.testing.assert_array_equal(np.asarray(back.H), np.asarray(a.H))
    assert back.model.n_nodes == 64 and back.model.smoothness == a.model.smoothness
    np.testing.assert_array_equal(back.model.edge_row, a.model.edge_row)
    assert np.isfinite(back.log_likelihood()[mask]).all()


def test_poisson_likelihood_fits_counts_by_mm():
    rng = np.random.default_rng(1)
    X, _, _ = _smooth_data(side=8)
    counts = rng.poisson(20 * X)
    fit = bnmf.fit(counts, 3, model="spatial", likelihood="poisson", neighbors=_grid_matrix(8),
                   method="map", max_iter=100)
    assert np.all(np.diff(np.asarray(fit.losses).ravel()) <= 0)
    assert "sigma" not in fit.idata["posterior"]
    with pytest.raises(ValueError, match="integer"):
        bnmf.fit(counts + 0.5, 3, model="spatial", likelihood="poisson",
                 neighbors=_grid_matrix(8))


@pytest.mark.slow
def test_svi_runs_through_the_generic_path():
    X, _, _ = _smooth_data(side=6, n_features=8)
    fit = bnmf.fit(X, 2, model="spatial", neighbors=_grid_matrix(6), max_steps=200,
                   num_draws=20, seed=0)
    assert fit.info["method_choice"].startswith("svi")
    lo, hi = fit.interval(0.9)["H"]
    assert np.all(np.asarray(hi) >= np.asarray(lo))


@pytest.mark.slow
def test_nuts_agrees_with_map_on_a_small_image():
    """NUTS (the reference posterior) on 4 × 4 pixels: its posterior mean reconstruction is
    close to the MAP's, and smoothing lowers its abundance roughness."""
    X, _, g = _smooth_data(side=4, n_features=6, noise=0.2)
    M = _grid_matrix(4)
    rough = {}
    for lam in (0.0, 100.0):
        nuts = bnmf.fit(X, 2, model="spatial", neighbors=M, smoothness=lam, method="nuts",
                        num_warmup=300, num_samples=300, num_chains=1, seed=0)
        fit_map = bnmf.fit(X, 2, model="spatial", neighbors=M, smoothness=lam, method="map")
        WH_nuts = np.asarray(nuts.W) @ np.asarray(nuts.H)
        WH_map = np.asarray(fit_map.W) @ np.asarray(fit_map.H)
        assert np.linalg.norm(WH_nuts - WH_map) < 0.15 * np.linalg.norm(WH_map)
        H = np.asarray(nuts.H)
        rough[lam] = neighbor_differences(H / H.sum(0), g.row, g.col)
    assert rough[100.0] < rough[0.0]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"neighbors": "_small"}, ValueError, "graph has 9 nodes but X has 16 samples"),
    ({"neighbors": "_negative"}, ValueError, "negative weights"),
    ({"neighbors": "_asymmetric"}, ValueError, "not symmetric"),
    ({"neighbors": "_diagonal"}, ValueError, "diagonal"),
    ({"neighbors": np.ones((16, 5))}, ValueError, "square"),
    ({"neighbors": np.zeros((16, 16))}, ValueError, "no edges"),
    ({"neighbors": "x"}, TypeError, "neighbors must"),
    ({}, ValueError, "needs a graph of the samples"),
    ({"coords": np.zeros((9, 2)) + np.arange(9)[:, None]}, ValueError,
     "graph has 9 nodes but X has 16"),
    ({"coords": np.full((16, 2), np.nan)}, ValueError, "coords has NaN"),
    ({"coords": np.arange(32.0).reshape(16, 2), "n_neighbors": 16}, ValueError, "n_neighbors"),
    ({"coords": np.arange(32.0).reshape(16, 2), "n_neighbors": 2.5}, TypeError, "n_neighbors"),
    ({"coords": np.arange(32.0).reshape(16, 2), "neighbors": "_grid"}, ValueError, "not both"),
    ({"neighbors": "_grid", "smoothness": -1.0}, ValueError, "smoothness"),
    ({"neighbors": "_grid", "smoothness": "big"}, TypeError, "smoothness"),
    ({"neighbors": "_grid", "likelihood": "bernoulli"}, ValueError, "unknown likelihood"),
    ({"neighbors": "_grid", "scale_H": 0.0}, ValueError, "scale_H"),
])
def test_bad_graphs_and_options_are_refused(kwargs, error, message):
    grid = _grid_matrix().toarray()
    named = {"_grid": grid, "_small": _grid_matrix(3),
             "_negative": np.where(grid > 0, -1.0, 0.0),
             "_asymmetric": np.triu(grid), "_diagonal": grid + np.eye(16)}
    kwargs = {k: (named[v] if isinstance(v, str) and v in named else v)
              for k, v in kwargs.items()}
    X = RNG.gamma(2.0, 1.0, (F, SIDE * SIDE))
    with pytest.raises(error, match=message):
        bnmf.fit(X, 2, model="spatial", method="map", **kwargs)
