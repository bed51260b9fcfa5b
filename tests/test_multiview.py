"""Joint multi-view NMF (bnmf.fit with a dict of views; bnmf/models/multiview.py): the MM
objective is the NumPyro program's log density, updates never raise it, the shared H is
recovered, a sample missing from a view is masked there, bad input is refused by name, and
the fit saves and loads exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import log_density

import bnmf
from bnmf.models import GaussianHalfNormal, NegativeBinomial, PoissonGamma
from bnmf.models.base import capability, supported_methods
from bnmf.models.multiview import MultiView, mm_update, multiview_neg_log_joint

RANK = 2
# float64: NumPyro's NB log-density itself is good to ~1e-9 (JAX's log-beta; see test_negbin)
TOLERANCE = {"float32": 2e-5, "float64": 1e-7}


def _model():
    return MultiView((
        ("rna", PoissonGamma(a=1.3, rate_W=0.9)),
        ("atac", NegativeBinomial(a=1.1, rate_W=1.4, dispersion="feature", phi_rate=0.05)),
        ("prot", GaussianHalfNormal(scale_W=1.2, scale_sigma=0.8)),
    ), h_shape=1.5)


def _views(rng, dtype, masked: bool):
    shapes = {"rna": (7, 11), "atac": (5, 11), "prot": (4, 11)}
    X, M = {}, {}
    for name, shape in shapes.items():
        values = rng.gamma(2.0, 1.0, shape) if name == "prot" else rng.poisson(3.0, shape)
        mask = rng.uniform(size=shape) > 0.3 if masked else np.ones(shape, bool)
        X[name] = jnp.asarray(np.where(mask, values, 0.0), dtype)
        M[name] = jnp.asarray(mask)
    return X, M


def _values(rng, dtype):
    g = lambda *shape: jnp.asarray(rng.gamma(2.0, 0.7, shape), dtype)
    return {"H": g(RANK, 11), "W_rna": g(7, RANK), "W_atac": g(5, RANK), "phi_atac": g(5) * 5,
            "W_prot": g(4, RANK), "sigma_prot": jnp.asarray(0.9, dtype)}


@jax.jit
def _compiled_log_joint(model, X, M, values):
    numpyro_values = dict(values, H=values["H"].T)
    return log_density(model.numpyro_model, (X, M, RANK), {}, numpyro_values)[0]


def _log_joint(model, X, M, values):
    """log p(X, sites) of the model's NumPyro program (compiled: one trace instead of many
    eagerly compiled operations); ``values`` in bnmf's layout."""
    return float(_compiled_log_joint(model, X, M, values))


def test_map_objective_in_float32_is_the_programs_log_density():
    rng = np.random.default_rng(4)
    model = _model()
    X, M = _views(rng, "float32", False)
    values = _values(rng, "float32")
    expected = -(_log_joint(model, X, M, values) + float(jnp.sum(jnp.log(values["phi_atac"]))))
    loss = float(jax.jit(multiview_neg_log_joint)(values, X, M, model))
    assert loss == pytest.approx(expected, rel=TOLERANCE["float32"])


@pytest.mark.parametrize("dtype, masked", [("float64", True)])
def test_map_objective_is_the_programs_log_density_and_updates_lower_it(dtype, masked):
    """The MM objective is −log p(X, H, W's, σ, φ) − Σ log φ (φ's mode over log φ) of the
    model's own NumPyro program, at random values and after updates; every update lowers it
    (masked entries, float64; float32 in the test above)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(dtype == "float64"):
        model = _model()
        X, M = _views(rng, dtype, masked)
        values = _values(rng, dtype)
        expected = -(_log_joint(model, X, M, values) + float(jnp.sum(jnp.log(values["phi_atac"]))))
        objective, update = jax.jit(multiview_neg_log_joint), jax.jit(mm_update)
        loss = float(objective(values, X, M, model))
        assert loss == pytest.approx(expected, rel=TOLERANCE[dtype])
        unobserved = {k: jnp.zeros_like(m) for k, m in M.items()}
        prior = _log_joint(model, X, unobserved, values)
        assert abs(prior) > 1e3 * TOLERANCE[dtype] * abs(expected)  # a dropped term would show
        previous = loss
        for _ in range(4):
            values = update(values, X, M, model)
            now = float(objective(values, X, M, model))
            assert now <= previous + 1e-6 * abs(previous) * (dtype == "float32")
            previous = now
        updates = capability(model, "map_update")
        aux = updates.prepare(bnmf.inference.Problem(X, M, RANK, model))
        state = updates.init({v: values[f"W_{v}"] for v in model.view_names}, values["H"],
                             aux, model)
        state = state._replace(relaxation=jnp.ones((), dtype))  # the plain, monotone MM
        state = updates.step(state, aux, model, 3, True)
        after = updates.values(state)
        assert float(state.loss) == pytest.approx(
            -(_log_joint(model, X, M, after) + float(jnp.sum(jnp.log(after["phi_atac"])))),
            rel=TOLERANCE[dtype])
        assert float(state.loss) <= previous


def _simulate(seed, n_samples=60, depth=(5.0, 0.5)):
    rng = np.random.default_rng(seed)
    H = rng.gamma(0.7, 1.0, (RANK + 1, n_samples))
    W1, W2 = rng.gamma(0.5, 1.0, (40, RANK + 1)), rng.gamma(0.5, 1.0, (30, RANK + 1))
    W1 *= depth[0] / (W1 @ H).mean()
    W2 *= depth[1] / (W2 @ H).mean()
    X1 = rng.poisson(W1 @ H)
    X2 = rng.poisson(rng.gamma(10.0, (W2 @ H) / 10.0))
    return X1, X2, W1, W2, H


def _matched(A, B):
    return float(bnmf.match(np.asarray(A), np.asarray(B))["cosine"].mean())


def test_shared_H_recovered_and_weak_view_helped():
    """Poisson view at ten times the depth of an NB view: the joint MAP recovers H, and the
    weak view's W better than the weak view fitted alone."""
    X1, X2, _, W2, H = _simulate(0)
    models = {"rna": "poisson", "atac": "negbin"}
    joint = bnmf.fit({"rna": X1, "atac": X2}, RANK + 1, model=models, method="map")
    assert isinstance(joint, bnmf.MultiViewFit)
    assert set(joint.W) == {"rna", "atac"} and joint.H.shape == (RANK + 1, 60)
    assert np.allclose(joint.H.mean(axis=1), 1.0)  # the scale convention
    assert np.all(np.diff(joint.losses) <= 1e-6 * np.abs(joint.losses[:-1]))
    alone = bnmf.fit(X2, RANK + 1, model="negbin", method="map")
    assert _matched(joint.H.T, H.T) > 0.95
    assert _matched(joint.W["atac"], W2) > _matched(alone.W, W2)


def _frames(X1, X2, drop=5):
    samples = [f"s{j}" for j in range(X1.shape[1])]
    rna = pd.DataFrame(X1, index=[f"g{i}" for i in range(X1.shape[0])], columns=samples)
    atac = pd.DataFrame(X2, index=[f"p{i}" for i in range(X2.shape[0])], columns=samples)
    return rna, atac.iloc[:, drop:].iloc[:, ::-1]  # 5 samples missing, the rest reversed


def test_sample_missing_from_a_view_is_masked_not_dropped(tmp_path):
    X1, X2, _, W2, H = _simulate(1)
    rna, atac = _frames(X1, X2)
    # a third, Gaussian view (non-negative levels) measured on the last 50 samples only
    levels = np.abs(W2[:12] @ H + np.random.default_rng(1).normal(0, 0.05, (12, H.shape[1])))
    prot = pd.DataFrame(levels, index=[f"q{i}" for i in range(12)], columns=rna.columns)
    prot = prot.iloc[:, 10:]
    fit = bnmf.fit({"rna": rna, "atac": atac, "prot": prot}, RANK + 1,
                   model={"rna": "poisson", "atac": "negbin", "prot": "gaussian"},
                   method="map")
    assert list(fit.H.columns) == list(rna.columns)  # every sample kept, in rna's order
    assert np.isfinite(fit.posterior_mean("sigma_prot"))
    prot_mask = bnmf.posterior.arviz_group(fit.idata, "constant_data")["mask_prot"].values
    assert not prot_mask[:, :10].any() and prot_mask[:, 10:].all()
    mask = bnmf.posterior.arviz_group(fit.idata, "constant_data")["mask_atac"].values
    assert not mask[:, :5].any() and mask[:, 5:].all()
    observed = bnmf.posterior.arviz_group(fit.idata, "observed_data")["X_atac"]
    assert np.array_equal(observed.sel(observation="s7").values, atac["s7"].values)
    ll = fit.log_likelihood(view="atac")
    assert np.isnan(ll[:, :5]).all() and np.isfinite(ll[:, 5:]).all()
    assert np.isfinite(fit.H.to_numpy()).all()
    assert list(fit.W["atac"].index) == list(atac.index)
    # save and load: exact round trip, and the loaded fit still scores and splits
    path = tmp_path / "multiview.nc"
    fit.save(path)
    back = bnmf.load(path)
    assert isinstance(back, bnmf.MultiViewFit) and back.views == ["rna", "atac", "prot"]
    pd.testing.assert_frame_equal(back.H, fit.H)
    for view in ("rna", "atac", "prot"):
        pd.testing.assert_frame_equal(back.W[view], fit.W[view])
    assert np.array_equal(back.losses, fit.losses) and back.info == fit.info
    assert back.model == fit.model
    np.testing.assert_allclose(back.log_likelihood(view="atac"), ll)
    assert isinstance(back.view_fit("rna"), bnmf.Fit)


def test_bad_input_refused_with_a_message_naming_the_problem():
    X1, X2, *_ = _simulate(2, n_samples=20)
    rna, atac = _frames(X1, X2, drop=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        bnmf.fit({"rna": X1, "atac": X2[:, :15]}, 2, method="map")
    with pytest.raises(ValueError, match=r"\['rna'\] have sample labels"):
        bnmf.fit({"rna": rna, "atac": X2}, 2, method="map")
    other = atac.set_axis([f"t{j}" for j in range(atac.shape[1])], axis=1)
    with pytest.raises(ValueError, match="shares no sample label"):
        bnmf.fit({"rna": rna, "atac": other}, 2, method="map")
    with pytest.raises(ValueError, match=r"no model for \['atac'\]"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, model={"rna": "poisson"}, method="map")
    with pytest.raises(ValueError, match="view 'atac'.*must be one of"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, model={"rna": "poisson", "atac": "horseshoe"})
    with pytest.raises(ValueError, match="view 'atac'.*negative"):
        bnmf.fit({"rna": X1, "atac": -X2}, 2, method="map")
    with pytest.raises(ValueError, match="at least two views"):
        bnmf.fit({"rna": X1}, 2)
    with pytest.raises(ValueError, match="view names"):
        bnmf.fit({"rna": X1, "a/b": X2}, 2)
    with pytest.raises(ValueError, match="rate_H is set"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, model=PoissonGamma(rate_H=1.0))
    with pytest.raises(ValueError, match=r"supports method= \['map', 'svi', 'nuts'\]"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, method="gibbs")
    with pytest.raises(ValueError, match="h_shape must be a finite number"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, method="map", h_shape=0.0)
    with pytest.raises(TypeError, match="unknown option"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, method="map", max_steps=10)
    with pytest.raises(ValueError, match="unknown view"):
        bnmf.fit({"rna": X1, "atac": X2}, 2, method="map", max_iter=5).log_likelihood(view="x")
    assert supported_methods(MultiView((("a", PoissonGamma()),))) == ("map", "svi", "nuts")


@pytest.mark.slow
def test_svi_and_nuts_through_the_generic_paths(tmp_path):
    """SVI and NUTS on the model's NumPyro program (started at the MAP): intervals of every
    view's W and of H, NUTS agreeing with SVI's posterior mean of H, save/load of draws."""
    X1, X2, *_ = _simulate(3, n_samples=25)
    X1, X2 = X1[:15], X2[:10]
    models = {"rna": "poisson", "atac": "negbin"}
    svi = bnmf.fit({"rna": X1, "atac": X2}, RANK + 1, model=models, method="svi",
                   num_draws=200)
    nuts = bnmf.fit({"rna": X1, "atac": X2}, RANK + 1, model=models, method="nuts",
                    num_warmup=200, num_samples=200)
    for fit in (svi, nuts):
        bounds = fit.interval(0.9)
        assert bounds["W"]["atac"][0].shape == (10, RANK + 1)
        assert np.all(bounds["H"][0] <= fit.H) and np.all(fit.H <= bounds["H"][1])
    assert _matched(svi.H.T, nuts.H.T) > 0.9
    assert "rhat_max_H" in nuts.info["diagnostics"]
    nuts.save(tmp_path / "nuts.nc")
    back = bnmf.load(tmp_path / "nuts.nc")
    np.testing.assert_array_equal(back.interval()["H"][0], nuts.interval()["H"][0])


@pytest.mark.slow
def test_breast_sbs_and_dbs_views():
    """Real data: SBS96 of 21 breast genomes with DBS78 of 6 of them (bundled from
    SigProfilerExtractor's wheel); the DBS view is masked for the other 15 samples, and the
    joint H agrees with the SBS-only fit's."""
    from bnmf.datasets import load_breast21, load_breast_dbs78

    sbs, dbs = load_breast21(), load_breast_dbs78()
    fit = bnmf.fit({"sbs": sbs, "dbs": dbs}, 3, method="map")
    assert list(fit.H.columns) == list(sbs.columns)
    mask = bnmf.posterior.arviz_group(fit.idata, "constant_data")["mask_dbs"]
    assert int(mask.values.any(axis=0).sum()) == 6
    alone = bnmf.fit(sbs, 3, method="map")
    assert _matched(fit.H.T, alone.H.T) > 0.9
