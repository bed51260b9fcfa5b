"""Rank selection: held-out masks, stability measures, the decision rule, batching, resume."""

import warnings

import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd
import pytest
from helpers import simulate
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import poisson

import bnmf
from bnmf import selection
from bnmf.data import prepare
from bnmf.fitting import default_method
from bnmf.inference.batch import batch_starts, fit_map_batch
from bnmf.inference.common import Problem
from bnmf.inference.map import fit_map
from bnmf.models import GaussianHalfNormal, PoissonGamma, get_model
from bnmf.posterior import arviz_group
from bnmf.selection import (
    TABLE_COLUMNS,
    choose_rank,
    cophenetic_correlation,
    heldout_masks,
    restart_stability,
)

matplotlib.use("Agg")


# ------------------------------------------------------------------------------ masks
@st.composite
def mask_problems(draw):
    n_features = draw(st.integers(2, 12))
    n_samples = draw(st.integers(2, 12))
    folds = draw(st.integers(1, 4))
    holdout = draw(st.floats(0.01, 1.0 / folds, exclude_max=True))
    seed = draw(st.integers(0, 2**31 - 1))
    # An observed-entry mask as prepare() accepts it: every row and column observed somewhere.
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(n_features, n_samples)) < draw(st.floats(0.3, 1.0))
    mask[np.arange(n_features), rng.integers(n_samples, size=n_features)] = True
    mask[rng.integers(n_features, size=n_samples), np.arange(n_samples)] = True
    return mask, holdout, folds, seed


@settings(max_examples=150, deadline=None)
@given(mask_problems())
def test_heldout_masks_are_disjoint_observed_and_never_empty_a_row_or_column(problem):
    mask, holdout, folds, seed = problem
    held = heldout_masks(mask, holdout, folds, seed)
    assert held.shape == (folds,) + mask.shape and held.dtype == bool
    assert held.sum(axis=0).max() <= 1                       # disjoint across folds
    assert not (held & ~mask).any()                          # only observed entries
    target = int(round(holdout * mask.sum()))
    for f in range(folds):
        train = mask & ~held[f]
        assert train.any(axis=1).all() and train.any(axis=0).all()
        assert held[f].sum() <= target                       # repairs only give entries back
    np.testing.assert_array_equal(held, heldout_masks(mask, holdout, folds, seed))


def test_heldout_masks_hold_out_the_asked_fraction_when_no_repair_is_needed():
    mask = np.ones((50, 60), bool)
    held = heldout_masks(mask, 0.1, 3, seed=1)
    np.testing.assert_array_equal(held.sum(axis=(1, 2)), [300, 300, 300])
    assert held.any(axis=0).sum() == 900
    # Different seeds, different entries.
    assert (held != heldout_masks(mask, 0.1, 3, seed=2)).any()


@pytest.mark.parametrize("holdout, folds, match", [
    (0.0, 3, "holdout must be a fraction"),
    (1.5, 1, "holdout must be a fraction"),
    (0.4, 3, "folds × holdout"),
    (0.1, 0, "folds must be a positive integer"),
])
def test_heldout_masks_reject_bad_settings(holdout, folds, match):
    with pytest.raises(ValueError, match=match):
        heldout_masks(np.ones((5, 5), bool), holdout, folds)


# ---------------------------------------------------------------------- stability measures
def test_cophenetic_is_one_for_perfectly_separated_clusters():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    runs = np.stack([labels, (labels + 1) % 3, 2 - labels, labels])  # relabelled, same partition
    assert cophenetic_correlation(runs) == pytest.approx(1.0, abs=1e-12)
    assert cophenetic_correlation(labels[None]) == pytest.approx(1.0)


def test_cophenetic_drops_when_restarts_disagree():
    rng = np.random.default_rng(0)
    runs = rng.integers(0, 3, size=(6, 30))
    value = cophenetic_correlation(runs)
    assert value < 0.9


def test_cophenetic_matches_a_hand_computation():
    """Three samples: a pair always together, the third joins them in half of the runs."""
    runs = np.array([[0, 0, 1], [0, 0, 0]])
    # distances (1-2, 1-3, 2-3) = (0, .5, .5); average linkage reproduces them exactly.
    assert cophenetic_correlation(runs) == pytest.approx(1.0)
    runs = np.array([[0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    consensus = selection.consensus_matrix(runs)
    np.testing.assert_allclose(consensus[0], [1, 2 / 3, 0, 1 / 3])
    # Distances of pairs (01, 02, 03, 12, 13, 23); average linkage joins {0,1} and {2,3} at
    # 1/3, then the two at the mean of the four cross distances, 5/6.
    d = np.array([1 / 3, 1, 2 / 3, 2 / 3, 1, 1 / 3])
    c = np.array([1 / 3, 5 / 6, 5 / 6, 5 / 6, 5 / 6, 1 / 3])
    assert cophenetic_correlation(runs) == pytest.approx(np.corrcoef(d, c)[0, 1])


def test_restart_stability_is_one_for_permuted_copies_and_lower_otherwise():
    rng = np.random.default_rng(1)
    W = rng.gamma(0.5, 1.0, (40, 4))
    Ws = np.stack([W, W[:, [2, 0, 3, 1]], W[:, ::-1]])
    mean, least = restart_stability(Ws, best=0)
    assert mean == pytest.approx(1.0) and least == pytest.approx(1.0)
    noisy = np.stack([W, rng.gamma(0.5, 1.0, (40, 4))])
    assert restart_stability(noisy, best=0)[1] < 0.9
    assert np.isnan(restart_stability(W[None], best=0)[0])


# ------------------------------------------------------------------------- decision rule
def _rule_inputs(means, spread=0.5, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(-2.0, spread, n)
    noise = {k: rng.normal(0, 0.05, n) for k in means}
    pointwise = {k: base + m + noise[k] - noise[k].mean() for k, m in means.items()}
    table = pd.DataFrame({c: np.nan for c in TABLE_COLUMNS}, index=list(means))
    table["heldout_lpd"] = [pointwise[k].mean() for k in means]
    return table, pointwise


def test_rule_takes_the_smallest_rank_within_one_standard_error_of_the_best():
    table, pointwise = _rule_inputs({2: -0.3, 3: -0.0005, 4: 0.0, 5: -0.02})
    best, reason, table = choose_rank(table, pointwise)
    assert best == 3
    assert "within one standard error" in reason and "rank 4" in reason
    assert table.loc[4, "heldout_lpd_diff"] == 0.0
    assert table.loc[2, "heldout_lpd_diff"] < -3 * table.loc[2, "heldout_lpd_diff_se"]


def test_rule_takes_the_best_rank_when_every_smaller_one_is_clearly_worse():
    table, pointwise = _rule_inputs({2: -0.3, 3: -0.1, 4: 0.0, 5: -0.01})
    best, reason, _ = choose_rank(table, pointwise)
    assert best == 4 and "highest held-out" in reason
    assert "extend `ranks`" not in reason


def test_rule_says_when_the_best_rank_is_the_largest_tried():
    table, pointwise = _rule_inputs({2: -0.3, 3: -0.1, 4: 0.0})
    best, reason, _ = choose_rank(table, pointwise)
    assert best == 4 and "largest rank tried (4)" in reason and "extend `ranks`" in reason


# ------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("model", [PoissonGamma(), GaussianHalfNormal()])
def test_batched_map_member_equals_the_single_masked_fit(model):
    """A member of a vmapped batch runs exactly fit_map's masked algorithm."""
    X, _, _ = simulate(30, 40, 3, counts_per_sample=500, seed=2)
    data = prepare(X, counts=True)
    resolved = model.resolve(data, 3)
    held = heldout_masks(data.mask, 0.2, 2, seed=0)
    masks = np.stack([data.mask & ~held[0], data.mask & ~held[1]])
    W0, H0 = batch_starts(X, masks, 3, ["nndsvda", "random"], [0, 1], "float32")
    batch = fit_map_batch(jnp.asarray(X, "float32"), jnp.asarray(masks), 3, resolved, W0, H0,
                          max_iter=200, tol=0.0)
    for b in range(2):
        problem = Problem(jnp.asarray(np.where(masks[b], X, 0), "float32"),
                          jnp.asarray(masks[b]), 3, resolved)
        single = fit_map(problem, max_iter=200, tol=0.0, progress=False,
                         W_start=W0[b], H_start=H0[b])
        np.testing.assert_allclose(batch.values["W"][b], single.draws["W"][0, 0], rtol=2e-3,
                                   atol=1e-6)
        np.testing.assert_allclose(batch.losses[b], single.losses, rtol=1e-4)


def test_held_out_values_never_reach_a_fit():
    """Changing the values of masked entries leaves the batched fits unchanged."""
    X, _, _ = simulate(20, 30, 2, counts_per_sample=300, seed=4)
    data = prepare(X, counts=True)
    model = PoissonGamma().resolve(data, 2)
    held = heldout_masks(data.mask, 0.2, 1, seed=0)
    masks = (data.mask & ~held)
    X_changed = np.where(held[0], 10_000.0, X)
    W0, H0 = batch_starts(X, masks, 2, ["nndsvda"], [0], "float32")
    a = fit_map_batch(jnp.asarray(X, "float32"), jnp.asarray(masks), 2, model, W0, H0,
                      max_iter=100)
    b = fit_map_batch(jnp.asarray(X_changed, "float32"), jnp.asarray(masks), 2, model, W0, H0,
                      max_iter=100)
    np.testing.assert_array_equal(a.values["W"], b.values["W"])
    np.testing.assert_array_equal(a.losses, b.losses)


# ---------------------------------------------------------------------------- select_rank
X_SMALL, _, _ = simulate(30, 40, 2, counts_per_sample=800, seed=5)
QUICK = dict(method="map", restarts=2, folds=2, holdout=0.2, progress=False)


def test_select_rank_table_fits_and_plot():
    sel = bnmf.select_rank(X_SMALL, ranks=[1, 2, 3], seed=0, **QUICK)
    assert list(sel.table.index) == [1, 2, 3]
    assert list(sel.table.columns) == [*TABLE_COLUMNS, "method"]   # and what ran at each rank
    assert np.isfinite(sel.table[["heldout_lpd", "heldout_lpd_se", "reconstruction_error",
                                  "cophenetic", "stability"]].to_numpy()).all()
    assert sel.table["elbo"].isna().all()          # MAP has no ELBO
    assert sel.best_rank == 2 and str(sel.best_rank) in sel.reason
    assert {k: f.rank for k, f in sel.fits.items()} == {1: 1, 2: 2, 3: 3}
    assert sel.table["reconstruction_error"].is_monotonic_decreasing
    figure = sel.plot()
    assert len(figure.axes) == 4


def test_select_rank_svi_scores_with_the_posterior_predictive_density():
    sel = bnmf.select_rank(X_SMALL, ranks=[2], method="svi", restarts=2, folds=2, holdout=0.2,
                           seed=1, max_steps=100, min_steps=100, num_draws=50, map_iter=100,
                           progress=False)
    row = sel.table.loc[2]
    assert np.isfinite(row[["elbo", "elbo_sd", "heldout_lpd"]].astype(float)).all()
    fit = sel.fits[2]
    assert fit.method == "svi" and fit.num_draws == 50 and fit.elbo == pytest.approx(
        row["elbo"], abs=3 * row["elbo_sd"] + 1e-6)
    # The table's score is the mean over folds of the per-entry mean of the pointwise scores.
    held = heldout_masks(prepare(X_SMALL).mask, 0.2, 2, seed=1)
    sizes = held.sum(axis=(1, 2))
    pointwise = sel.pointwise[2]
    assert pointwise.size == sizes.sum()
    fold_means = [pointwise[:sizes[0]].mean(), pointwise[sizes[0]:].mean()]
    assert row["heldout_lpd"] == pytest.approx(np.mean(fold_means), rel=1e-6)
    # Each entry's score is log mean_s p(x | θ_s) over posterior draws (SciPy), which exceeds
    # the mean plug-in log density (Jensen) since the draws differ.
    lpd = fit.log_likelihood(X_SMALL, mask=held[0])
    assert np.isfinite(lpd[held[0]]).all() and np.isnan(lpd[~held[0]]).all()
    W = arviz_group(fit.idata, "posterior")["W"].values[0].astype(float)
    H = arviz_group(fit.idata, "posterior")["H"].values[0].astype(float)
    per_draw = poisson.logpmf(X_SMALL[held[0]], (W @ H)[:, held[0]])   # (draws, entries)
    np.testing.assert_allclose(lpd[held[0]], logsumexp(per_draw, axis=0) - np.log(50),
                               rtol=1e-4)
    assert np.all(lpd[held[0]] >= per_draw.mean(axis=0) - 1e-6)


def test_resume_does_not_refit_finished_ranks(tmp_path, monkeypatch):
    checkpoint = tmp_path / "sweep.nc"
    fitted = []
    real = selection.fit_rank

    def interrupted(data, rank, *args, **kwargs):
        if rank == 2:
            raise KeyboardInterrupt
        fitted.append(rank)
        return real(data, rank, *args, **kwargs)

    monkeypatch.setattr(selection, "fit_rank", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bnmf.select_rank(X_SMALL, ranks=[1, 2, 3], checkpoint=checkpoint, **QUICK)
    assert fitted == [1] and checkpoint.exists()

    def recording(data, rank, *args, **kwargs):
        fitted.append(rank)
        return real(data, rank, *args, **kwargs)

    monkeypatch.setattr(selection, "fit_rank", recording)
    fitted.clear()
    resumed = bnmf.select_rank(X_SMALL, ranks=[1, 2, 3], checkpoint=checkpoint, **QUICK)
    assert fitted == [2, 3]
    fitted.clear()
    again = bnmf.select_rank(X_SMALL, ranks=[1, 2, 3], checkpoint=checkpoint, **QUICK)
    assert fitted == []
    pd.testing.assert_frame_equal(resumed.table, again.table)
    assert again.best_rank == resumed.best_rank
    np.testing.assert_array_equal(again.fits[2].W, resumed.fits[2].W)
    monkeypatch.setattr(selection, "fit_rank", real)
    fresh = bnmf.select_rank(X_SMALL, ranks=[1, 2, 3], **QUICK)
    pd.testing.assert_frame_equal(fresh.table.drop(columns="seconds"),
                                  again.table.drop(columns="seconds"))


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    checkpoint = tmp_path / "sweep.nc"
    bnmf.select_rank(X_SMALL, ranks=[1], checkpoint=checkpoint, **QUICK)
    with pytest.raises(ValueError, match=r"other settings or data \(differs in \['seed'\]\)"):
        bnmf.select_rank(X_SMALL, ranks=[1], checkpoint=checkpoint, seed=3, **QUICK)
    with pytest.raises(ValueError, match=r"differs in \['data'\]"):
        bnmf.select_rank(X_SMALL + 1, ranks=[1], checkpoint=checkpoint, **QUICK)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ranks=[]), ValueError, "ranks is empty"),
    (dict(ranks=[2, 2]), ValueError, "repeated values"),
    (dict(ranks=[2, 31]), ValueError, r"rank=31 is out of range"),
    (dict(ranks=3), TypeError, "ranks must be a sequence of integers"),
    (dict(ranks=[2.5]), TypeError, "rank must be an integer"),
    (dict(method="lbfgs"), ValueError, r"method must be one of \['cavi', 'gibbs'"),
    (dict(holdout=0.6, folds=2), ValueError, "folds × holdout"),
    (dict(restarts=0), ValueError, "restarts must be a positive integer"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
    (dict(max_stepz=10), TypeError, r"unknown option\(s\) \['max_stepz'\]"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
])
def test_select_rank_rejects_bad_input(kwargs, error, match):
    args = dict(ranks=[1, 2], method="svi", progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        bnmf.select_rank(X_SMALL, **args)


def test_select_rank_rejects_bad_data():
    with pytest.raises(ValueError, match="negative values"):
        bnmf.select_rank(-X_SMALL - 1, ranks=[1], **QUICK)
    with pytest.raises(ValueError, match="non-integer values"):
        bnmf.select_rank(X_SMALL + 0.5, ranks=[1], **QUICK)


def test_select_rank_respects_a_user_mask():
    mask = np.ones(X_SMALL.shape, bool)
    mask[:5, :5] = False
    X = np.where(mask, X_SMALL, np.nan)
    sel = bnmf.select_rank(X, ranks=[2], mask=mask, **QUICK)
    seen = arviz_group(sel.fits[2].idata, "constant_data")["mask"].values
    np.testing.assert_array_equal(seen, mask)
    assert np.isfinite(sel.table.loc[2, "heldout_lpd"])


# ---------------------------------------------------------------- recovery (slow, defaults)
@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
def test_true_rank_is_recovered_on_clear_simulated_data(likelihood):
    X, _, _ = simulate(60, 80, 4, counts_per_sample=3000, likelihood=likelihood, seed=7)
    sel = bnmf.select_rank(X, ranks=range(2, 7), model=likelihood, method="svi",
                           progress=False)
    assert sel.best_rank == 4, sel.table
    assert sel.table.loc[4, "stability_min"] > 0.95


# ----------------------------------------------------------------------------------- CLI
def test_cli_select_rank_writes_table_plot_and_fit(tmp_path, capsys):
    from bnmf.cli import main

    path = tmp_path / "counts.csv"
    pd.DataFrame(X_SMALL, index=[f"f{i}" for i in range(X_SMALL.shape[0])]).to_csv(path)
    out = tmp_path / "sweep"
    args = ["select-rank", str(path), "--ranks", "1-3", "--method", "map", "--restarts", "2",
            "--folds", "2", "--holdout", "0.2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best rank: 2" in printed
    table = pd.read_csv(out / "rank_selection.csv", index_col=0)
    assert list(table.index) == [1, 2, 3] and "heldout_lpd_se" in table
    assert (out / "rank_selection.png").stat().st_size > 0
    assert bnmf.load(out / "fit_rank2.nc").rank == 2
    assert (out / "checkpoint.nc").exists()
    assert main(args) == 0                                   # resumes from the checkpoint
    pd.testing.assert_frame_equal(pd.read_csv(out / "rank_selection.csv", index_col=0), table)


@pytest.mark.parametrize("text, expected", [("2-5", [2, 3, 4, 5]), ("2,4", [2, 4]),
                                            ("2-3,6", [2, 3, 6])])
def test_cli_parses_rank_ranges(text, expected):
    from bnmf.cli import parse_ranks

    assert parse_ranks(text) == expected


def test_cli_rejects_bad_ranks(tmp_path, capsys):
    from bnmf.cli import main

    path = tmp_path / "counts.csv"
    pd.DataFrame(X_SMALL).to_csv(path)
    assert main(["select-rank", str(path), "--ranks", "two-ten"]) == 2
    assert "--ranks must look like 2-10" in capsys.readouterr().err


def test_select_rank_default_method_is_bnmf_fits_and_the_table_says_it():
    # 10 × 12 at ranks 1 and 2: bnmf.fit's default is NUTS there; options go to every fit
    X = X_SMALL[:10, :12]
    options = {"restarts": 1, "folds": 2, "holdout": 0.2, "progress": False,
               "num_warmup": 30, "num_samples": 30, "num_chains": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # chains this short do not mix
        sel = bnmf.select_rank(X, ranks=[1, 2], method=None, **options)
    expected = [default_method(get_model("poisson"), X.shape, k, {})[0] for k in (1, 2)]
    assert expected == ["nuts", "nuts"]
    assert list(sel.table["method"]) == expected
    fit = sel.fits[2]
    assert fit.method == "nuts" and fit.num_draws == 30
    # held-out entries scored from the posterior draws: log of the mean density over draws
    held = heldout_masks(prepare(X).mask, 0.2, 2, seed=0)
    assert sel.pointwise[2].size == held.sum()
    assert np.all(np.isfinite(sel.table["heldout_lpd"].astype(float)))


@pytest.mark.parametrize("method", ["cavi"])  # NUTS: above; Gibbs goes the same loop
def test_select_rank_runs_every_fit_method(method):
    options = {"cavi": {"max_iter": 50, "num_draws": 20}}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # short chains
        sel = bnmf.select_rank(X_SMALL[:12, :15], ranks=[1, 2], method=method, restarts=2,
                               folds=2, holdout=0.2, progress=False, **options)
    assert list(sel.table["method"]) == [method, method]
    assert sel.fits[2].method == method
    if method == "cavi":  # it has a bound
        assert np.isfinite(sel.table["elbo"]).all()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_stepz'\]"):
        bnmf.select_rank(X_SMALL, ranks=[1], method=method, max_stepz=1, progress=False)


def test_select_rank_puts_the_ard_answer_beside_its_own():
    X, _, _ = simulate(40, 60, rank=2, counts_per_sample=2000, seed=11)
    sel = bnmf.select_rank(X, ranks=[1, 2, 3], method="map", restarts=1, folds=2,
                           progress=False, ard={"num_warmup": 300, "num_samples": 100,
                                                "num_chains": 1})
    assert sel.best_rank == 2
    assert sel.ard.model.name == "ard" and sel.ard.rank == 3 and sel.ard.method == "gibbs"
    posterior = sel.ard_rank_posterior
    assert posterior.idxmax() == 2 and posterior[2] >= 0.5
    assert "ARD (model='ard', method='gibbs', from 3 components) finds 2 active" in sel.reason
    with pytest.raises(TypeError, match="ard must be True, False or a dict"):
        bnmf.select_rank(X, ranks=[1, 2], method="map", ard="yes", progress=False)
    with pytest.raises(ValueError, match="takes no 'model' key"):
        bnmf.select_rank(X, ranks=[1, 2], method="map", ard={"model": "poisson"},
                         progress=False)
