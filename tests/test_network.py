"""Network NMF (bnmf.fit_network): the model against NumPyro's log density, the Gibbs
conditionals against the complete-data model, the samplers against SciPy, ECM against an
optimizer, Gibbs against NUTS, recovery on the karate club and on planted communities."""


import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats as st
from helpers import aligned_cosines, planted_overlapping_graph
from numpyro.infer.util import log_density

import bnmf
from bnmf.graph import prepare_graph
from bnmf.models import sampling
from bnmf.models.network import (
    NetworkGamma,
    dense_pairs,
    graph_arrays,
    log_joint,
    node_conditional,
    sample_split_ztp,
    sweep,
)

nx = pytest.importorskip("networkx", reason="the network tests need networkx (dev extra)")


def small_graph(n=9, directed=False, likelihood="bernoulli", masked=True, seed=0):
    rng = np.random.default_rng(seed)
    A = (rng.uniform(size=(n, n)) < 0.35).astype(float)
    if likelihood == "poisson":
        A *= rng.integers(1, 4, (n, n))
    np.fill_diagonal(A, 0)
    mask = rng.uniform(size=(n, n)) > 0.2
    if not directed:
        A = np.triu(A, 1) + np.triu(A, 1).T
        mask = np.triu(mask, 1) | np.triu(mask, 1).T
    return A, (mask if masked else None)


def karate():
    G = nx.karate_club_graph()
    factions = np.array([G.nodes[v]["club"] == "Officer" for v in G.nodes], dtype=int)
    return G, factions


@pytest.fixture
def float64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------ the model's mathematics
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_log_joint_matches_numpyro_log_density(float64, directed, likelihood):
    A, mask = small_graph(directed=directed, likelihood=likelihood)
    graph = prepare_graph(A, directed=directed, likelihood=likelihood, mask=mask)
    assert graph.hidden_row.size > 0
    model = NetworkGamma(likelihood=likelihood, directed=directed).resolve(graph, 3)
    rng = np.random.default_rng(1)
    sites = {name: jnp.asarray(rng.gamma(1.0, 0.5, (A.shape[0], 3))) for name in model.sites}
    row, col, value, observed = dense_pairs(graph)
    expected, _ = log_density(model.numpyro_model,
                              (A.shape[0], 3, row, col, jnp.asarray(value), observed), {}, sites)
    np.testing.assert_allclose(log_joint(model, graph_arrays(graph, jnp.float64), sites),
                               expected, rtol=1e-12)


def complete_data_model(model, n, rank, pairs, counts):
    """Memberships and latent per-community counts m_ijk ~ Poisson(W_ik W_jk) of the observed
    pairs: the augmented model whose conditionals the Gibbs sweep draws from."""
    with numpyro.plate("node", n, dim=-1):
        W = numpyro.sample("W", dist.Gamma(model.a, model.rate).expand([n, rank]).to_event(1))
    rate = W[pairs[0]] * W[pairs[1]]
    numpyro.sample("m", dist.Poisson(rate).to_event(2), obs=counts)


def test_node_conditional_is_the_complete_data_conditional(float64):
    """log p(m, W) as a function of W[i] differs from the gamma conditional's log density
    by a constant: the conjugate update is the model's own."""
    A, mask = small_graph(n=8)
    graph = prepare_graph(A, mask=mask)
    model = NetworkGamma().resolve(graph, 2)
    g = graph_arrays(graph, jnp.float64)
    rng = np.random.default_rng(3)
    W = jnp.asarray(rng.gamma(1.0, 0.6, (8, 2)))
    # latent counts: positive on edges, zero on the other observed pairs
    row, col, value, observed = dense_pairs(graph)
    pairs = (row[observed], col[observed])
    counts = np.zeros((pairs[0].size, 2))
    is_edge = value[observed] > 0
    counts[is_edge] = rng.integers(0, 3, (is_edge.sum(), 2)) + np.array([1, 0])
    edge_counts = counts[is_edge]  # edges are listed in the same (row, col) order
    for i in (0, 5):
        shape, rate = node_conditional(model, g, W, jnp.asarray(edge_counts), i)
        diffs = []
        for scale in (0.3, 1.0, 2.7):
            W_i = W.at[i].set(W[i] * scale)
            lp, _ = log_density(complete_data_model, (model, 8, 2, pairs, counts), {},
                                {"W": W_i})
            diffs.append(float(lp) - float(st.gamma.logpdf(W_i[i], shape, scale=1 / rate).sum()))
        np.testing.assert_allclose(diffs, diffs[0], rtol=1e-10)


def test_split_zero_truncated_counts_have_the_conditional_law(float64):
    """Independent m_k ~ Poisson(λ_k) given Σ m_k ≥ 1: exact probabilities of small count
    vectors and the means λ_k / (1 − e^{-Σλ})."""
    lam = np.array([0.3, 1.2])
    draws = np.asarray(sample_split_ztp(jax.random.PRNGKey(0), jnp.tile(lam, (200_000, 1))))
    assert draws.sum(axis=1).min() >= 1
    norm = -np.expm1(-lam.sum())
    np.testing.assert_allclose(draws.mean(axis=0), lam / norm, rtol=0.01)
    for vector in ([1, 0], [0, 1], [1, 1], [0, 2]):
        exact = np.prod(st.poisson.pmf(vector, lam)) / norm
        freq = np.mean((draws == vector).all(axis=1))
        assert abs(freq - exact) < 4 * np.sqrt(exact * (1 - exact) / draws.shape[0])


@pytest.mark.parametrize("shape", [0.3, 1.0, 7.5])
def test_gamma_sampler_matches_scipy(shape):
    x = np.asarray(sampling.gamma(jax.random.PRNGKey(1), jnp.full(20_000, shape)))
    assert st.kstest(x, st.gamma(shape).cdf).pvalue > 0.001


@pytest.mark.parametrize("lam", [0.05, 2.0, 60.0])
def test_poisson_sampler_matches_scipy(lam):
    x = np.asarray(sampling.poisson(jax.random.PRNGKey(2), jnp.full(20_000, lam)))
    values, counts = np.unique(x, return_counts=True)
    expected = st.poisson.pmf(values, lam) * x.size
    keep = expected > 5
    chi2 = np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep])
    assert st.chi2.sf(chi2, keep.sum()) > 0.001
    assert x.mean() == pytest.approx(lam, rel=0.03)


@pytest.mark.parametrize("directed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_ecm_never_lowers_the_log_joint_and_reaches_a_mode(float64, directed):
    from scipy.optimize import minimize

    A, mask = small_graph(n=12, directed=directed)
    graph = prepare_graph(A, directed=directed, mask=mask)
    model = NetworkGamma(directed=directed).resolve(graph, 2)
    g = graph_arrays(graph, jnp.float64)
    rng = np.random.default_rng(0)
    sites = {name: jnp.asarray(rng.gamma(1.0, 0.5, (12, 2))) for name in model.sites}
    step = jax.jit(lambda s: sweep(jax.random.PRNGKey(0), model, g, s, "ecm"))
    trace = [float(log_joint(model, g, sites))]
    for _ in range(200):
        sites = step(sites)
        trace.append(float(log_joint(model, g, sites)))
    assert np.all(np.diff(trace) >= -1e-9 * abs(trace[-1]))
    # an optimizer on log W started at the ECM answer finds nothing better
    names = model.sites
    unflat = lambda v: {n: jnp.exp(v.reshape(len(names), 12, 2)[k]) for k, n in enumerate(names)}
    objective = jax.jit(jax.value_and_grad(lambda v: -log_joint(model, g, unflat(v))))
    x0 = np.log(np.stack([np.asarray(sites[n]) for n in names])).ravel()
    result = minimize(lambda v: [np.asarray(t, float) for t in objective(jnp.asarray(v))],
                      x0, jac=True, method="L-BFGS-B")
    assert -result.fun <= trace[-1] + 1e-4 * abs(trace[-1])


# ------------------------------------------------------------------------ the public entry
def test_karate_club_factions_and_ambiguous_members():
    G, factions = karate()
    from sklearn.metrics import adjusted_rand_score

    fit = bnmf.fit_network(G, 2, seed=0, num_warmup=200, num_samples=200)
    assert fit.method == "gibbs" and fit.num_draws == 400
    assert adjusted_rand_score(factions, fit.assignments()) >= 0.8
    ambiguous = fit.ambiguous(0.9)
    assert 0 not in ambiguous and 33 not in ambiguous  # the two leaders are certain
    probability = fit.assignment_probability()
    assert set(ambiguous) == set(probability.index[probability < 0.95])
    lower, upper = fit.interval(0.9)["W"]
    W = fit.W
    assert W.shape == (34, 2) and (lower <= W).all().all() and (W <= upper).all().all()
    communities = fit.communities(prob=0.9)
    leaders = {k for k, members in communities.items() if 0 in members or 33 in members}
    assert leaders == {0, 1}
    # The membership heatmap marks exactly the ambiguous nodes, sorted by main community.
    import matplotlib
    matplotlib.use("Agg")
    from bnmf.plotting import plot_memberships

    figure = plot_memberships(fit, prob=0.9, groups=factions)
    bars = figure.axes[2].patches
    orange = [bar for bar in bars if bar.get_facecolor()[:3] == matplotlib.colors.to_rgb(
        "tab:orange")]
    assert len(bars) == 34 and len(orange) == len(ambiguous)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    main = fit.assignments().to_numpy()
    assert np.all(np.diff([main[int(label.split()[0])] for label in labels]) >= 0)
    with pytest.raises(ValueError, match="one label per node"):
        plot_memberships(fit, groups=factions[:3])


def test_same_seed_same_result_and_exact_round_trip(tmp_path):
    G, _ = karate()
    first = bnmf.fit_network(G, 2, method="map", seed=3)
    second = bnmf.fit_network(G, 2, method="map", seed=3)
    np.testing.assert_array_equal(first.W, second.W)
    path = tmp_path / "karate.nc"
    first.save(path)
    loaded = bnmf.load(path)
    assert isinstance(loaded, bnmf.NetworkFit)
    np.testing.assert_array_equal(loaded.W, first.W)
    assert loaded.model == first.model and loaded.info == first.info
    assert list(loaded.nodes) == list(G.nodes)


def test_map_float32_and_float64_agree():
    G, _ = karate()
    W32 = bnmf.fit_network(G, 2, method="map", seed=0).W
    W64 = bnmf.fit_network(G, 2, method="map", seed=0, dtype="float64").W
    np.testing.assert_allclose(W32, W64, rtol=2e-3, atol=1e-4)


def test_held_out_pairs_are_predicted():
    """Pairs hidden by the mask do not enter the fit; the fit still ranks hidden edges above
    hidden non-edges (link prediction)."""
    G, _ = karate()
    A = nx.to_numpy_array(G, weight=None)
    rng = np.random.default_rng(0)
    hide = np.triu(rng.uniform(size=A.shape) < 0.15, 1)
    hide |= hide.T
    fit = bnmf.fit_network(A, 2, method="map", mask=~hide, seed=0)
    P = fit.edge_probability()
    iu = np.triu_indices_from(A, 1)
    held = hide[iu]
    scores, labels = P[iu][held], A[iu][held]
    auc = np.mean(scores[labels == 1][:, None] > scores[labels == 0][None, :])
    assert auc > 0.7
    # the same fit with the hidden pairs set to anything else is unchanged
    B = A.copy()
    B[hide] = 1.0 - B[hide]
    np.fill_diagonal(B, 0)
    again = bnmf.fit_network(B, 2, method="map", mask=~hide, seed=0)
    np.testing.assert_allclose(again.W, fit.W, rtol=1e-5)


def test_planted_overlapping_communities_beat_sklearn_nmf():
    from sklearn.decomposition import NMF

    # a sparse graph (~900 edges among 200 nodes), where least squares on the zeros of A
    # blurs the communities (dense graphs: both reach ~0.96, experiments/results/network.md)
    A, W_true = planted_overlapping_graph(n_nodes=200, rank=4, strength=0.4, seed=0)
    fit = bnmf.fit_network(A, 4, method="map", seed=0)
    ours = aligned_cosines(fit.W, W_true)[0]
    W_nmf = NMF(4, init="nndsvda", max_iter=1000, random_state=0).fit_transform(A)
    theirs = aligned_cosines(W_nmf, W_true)[0]
    assert ours.mean() > theirs.mean() + 0.1
    assert ours.mean() > 0.9


def test_directed_memberships_are_recovered():
    rng = np.random.default_rng(0)
    n = 80
    senders, receivers = rng.integers(2, size=n), rng.integers(2, size=n)
    U = np.eye(2)[senders] * 0.9
    V = np.eye(2)[receivers] * 0.9
    A = (rng.uniform(size=(n, n)) < 1 - np.exp(-U @ V.T)).astype(float)
    np.fill_diagonal(A, 0)
    fit = bnmf.fit_network(A, 2, directed=True, method="map", seed=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(senders, np.asarray(fit.W_out).argmax(1)) > 0.9
    assert adjusted_rand_score(receivers, np.asarray(fit.W_in).argmax(1)) > 0.9
    with pytest.raises(AttributeError, match="W_out and W_in"):
        _ = fit.W


def test_poisson_counts_of_interactions():
    G, factions = karate()
    from sklearn.metrics import adjusted_rand_score

    fit = bnmf.fit_network(G, 2, likelihood="poisson", weight="weight", method="map", seed=0)
    assert fit.model.likelihood == "poisson"
    assert adjusted_rand_score(factions, fit.assignments()) >= 0.6


@pytest.mark.slow
def test_gibbs_agrees_with_nuts_on_a_small_graph():
    rng = np.random.default_rng(1)
    W = np.zeros((10, 2))
    W[:6, 0] = W[4:, 1] = 1.2
    A = np.triu((rng.uniform(size=(10, 10)) < 1 - np.exp(-W @ W.T)).astype(float), 1)
    A += A.T
    gibbs = bnmf.fit_network(A, 2, seed=0, num_samples=2000)
    nuts = bnmf.fit_network(A, 2, method="nuts", seed=0, num_samples=1000)
    assert nuts.info["divergences"] == 0
    iu = np.triu_indices(10, 1)
    # edge probabilities do not depend on the labelling of the communities
    np.testing.assert_allclose(gibbs.edge_probability()[iu], nuts.edge_probability()[iu],
                               atol=0.03)
    sd_gibbs = gibbs.shares()[..., 0].std(axis=0)
    sd_nuts = nuts.shares()[..., 0].std(axis=0)
    np.testing.assert_allclose(sd_gibbs, sd_nuts, atol=0.05)


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("A, kwargs, message", [
    (np.ones((3, 4)), {}, "square adjacency matrix"),
    (np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0.0]]), {}, "not symmetric"),
    (np.array([[0, -1], [-1, 0.0]]), {}, "negative weights"),
    (np.array([[0, np.nan], [np.nan, 0.0]]), {}, "NaN at observed pair"),
    (np.array([[1, 1], [1, 0.0]]), {}, "self-loops"),
    (np.array([[0, 2], [2, 0.0]]), {}, "values other than 0 and 1"),
    (np.array([[0, 1.5], [1.5, 0.0]]), {"likelihood": "poisson"}, "non-integer"),
    (np.zeros((3, 3)), {}, "no observed edges"),
    (np.array([[0, 1], [1, 0.0]]), {"likelihood": "gauss"}, "unknown likelihood"),
    (np.array([[0, 1], [1, 0.0]]), {"mask": np.array([[1, 0], [1, 1]], bool)},
     "mask is not symmetric"),
])
def test_bad_graphs_are_refused(A, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bnmf.fit_network(A, 1, method="map", **kwargs)


def test_bad_options_are_refused():
    A = np.array([[0, 1], [1, 0.0]])
    with pytest.raises(ValueError, match="out of range for a graph of 2 nodes"):
        bnmf.fit_network(A, 3)
    with pytest.raises(TypeError, match="rank must be an integer"):
        bnmf.fit_network(A, 1.5)
    with pytest.raises(ValueError, match="unknown method 'svi' for fit_network"):
        bnmf.fit_network(A, 1, method="svi")
    with pytest.raises(TypeError, match="A must be a NumPy array"):
        bnmf.fit_network("graph.csv", 1)
    with pytest.raises(ValueError, match="at most 300 nodes"):
        bnmf.fit_network(nx.to_scipy_sparse_array(nx.cycle_graph(400)), 2, method="nuts")
    with pytest.raises(ValueError, match="point estimate"):
        bnmf.fit_network(A, 1, method="map").interval()
