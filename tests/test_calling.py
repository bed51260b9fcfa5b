"""Refitting known parts, presence calls, matching, decomposition, SBS96 readers, program
summaries and their plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize, nnls

import bnmf
from bnmf.calling import program_summary, program_usage
from bnmf.cli import main
from bnmf.datasets import (
    SBS96_CHANNELS,
    load_breast21,
    load_pcawg_signatures,
    read_sbs96,
    to_sbs96,
)
from bnmf.plotting import plot_exposures, plot_top_features
from bnmf.posterior import align_permutation, normalize

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FAST = {"num_warmup": 150, "num_samples": 150}


def _cohort(n_samples=20, seed=0, total=2000.0):
    """6 distinct parts over 40 features; each sample uses 2–3 of them, part 5 never."""
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.full(40, 0.3), 6).T
    H = np.zeros((6, n_samples))
    for j in range(n_samples):
        used = rng.choice(5, rng.integers(2, 4), replace=False)
        H[used, j] = rng.dirichlet(np.ones(len(used))) * total
    X = rng.poisson(W @ H)
    features = [f"f{i}" for i in range(40)]
    return (pd.DataFrame(X, index=features, columns=[f"s{j}" for j in range(n_samples)]),
            pd.DataFrame(W, index=features, columns=[f"P{k}" for k in range(6)]), H)


@pytest.fixture(scope="module")
def cohort():
    return _cohort()


@pytest.fixture(scope="module")
def calls(cohort):
    X, W, _ = cohort
    return bnmf.refit(X, W, seed=0, **FAST)


# ------------------------------------------------------------------------------ refit
def test_refit_calls_the_parts_that_are_present(cohort, calls):
    _, _, H = cohort
    truth = H / H.sum(axis=0) >= 0.05
    active = calls.active().to_numpy()
    assert active.shape == truth.shape
    precision = (active & truth).sum() / active.sum()
    recall = (active & truth).sum() / truth.sum()
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    assert not active[5].any()                       # the part no sample uses
    assert calls.probability().to_numpy()[5].max() < 0.5


def test_refit_exposures_and_intervals_cover_the_truth(cohort, calls):
    _, _, H = cohort
    truth = H / H.sum(axis=0) >= 0.05
    mean = calls.exposures.to_numpy()
    lower, upper = (b.to_numpy() for b in calls.interval(0.9))
    assert np.all(np.isfinite(mean)) and np.all(lower <= mean) and np.all(mean <= upper)
    relative = np.abs(mean - H)[truth] / H[truth]
    assert np.median(relative) < 0.1
    coverage = ((H >= lower) & (H <= upper))[truth].mean()
    assert 0.75 <= coverage <= 1.0, coverage
    # Exposures are in counts: they add up to each sample's total.
    X = cohort[0].to_numpy()
    np.testing.assert_allclose(mean.sum(axis=0), X.sum(axis=0), rtol=0.05)


def _poisson_mle(W, x):
    """Maximum-likelihood exposures of one sample under X ~ Poisson(W h), h ≥ 0 (SciPy)."""
    def objective(h):
        rate = np.maximum(W @ h, 1e-300)
        return rate.sum() - x @ np.log(rate), W.sum(axis=0) - W.T @ (x / rate)

    start = nnls(W, x)[0] + 1.0
    return minimize(objective, start, jac=True, method="L-BFGS-B",
                    bounds=[(0, None)] * W.shape[1], options={"ftol": 1e-14, "gtol": 1e-8}).x


@pytest.mark.slow
def test_refit_agrees_with_the_poisson_mle_on_deep_catalogues():
    X, W, _ = _cohort(n_samples=8, seed=3, total=2e5)
    result = bnmf.refit(X, W, seed=1, num_warmup=100, num_samples=60)
    reference = np.stack([_poisson_mle(W.to_numpy(), x) for x in X.to_numpy().T], axis=1)
    big = reference > 0.05 * reference.sum(axis=0)
    # 2% = a few posterior sds at these depths, plus the Monte Carlo error of 60 draws.
    np.testing.assert_allclose(result.exposures.to_numpy()[big], reference[big], rtol=0.02)
    assert (result.exposures.to_numpy() < 0.06 * reference.sum(axis=0))[~big].all()


def test_refit_table_and_labels(calls, cohort):
    X, W, _ = cohort
    assert list(calls.exposures.index) == list(W.columns)
    assert list(calls.exposures.columns) == list(X.columns)
    table = calls.table()
    assert len(table) == W.shape[1] * X.shape[1]
    assert set(table.columns) >= {"observation", "signature", "exposure", "lower", "upper",
                                  "fraction", "probability", "active"}
    assert ((table["probability"] >= 0) & (table["probability"] <= 1)).all()
    np.testing.assert_allclose(calls.fractions.to_numpy().sum(axis=0), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_refit_matches_rows_by_label_and_same_seed_gives_same_result(cohort, calls):
    X, W, _ = cohort
    shuffled = W.iloc[np.random.default_rng(1).permutation(len(W))]
    again = bnmf.refit(X, shuffled, seed=0, **FAST)     # rows matched by label, any order
    np.testing.assert_array_equal(again.draws, calls.draws)


@pytest.mark.slow
def test_refit_svi_runs_in_float64_and_agrees_with_nuts(cohort, calls):
    X, W, _ = cohort
    svi = bnmf.refit(X, W, method="svi", svi_steps=800, seed=0, dtype="float64")
    assert svi.info["method"] == "svi" and np.all(np.isfinite(svi.draws))
    assert svi.draws.dtype == np.float64
    big = calls.exposures.to_numpy() > 200
    np.testing.assert_allclose(svi.exposures.to_numpy()[big], calls.exposures.to_numpy()[big],
                               rtol=0.15)
    assert (svi.active().to_numpy() == calls.active().to_numpy()).mean() > 0.9


def test_refit_refine_keeps_probabilities_and_zeroes_clear_absences(cohort, calls):
    support = calls.draws.max(axis=0) > 0                       # parts in the refined fit
    assert support.sum(axis=0).min() >= 1 and not support[5].any()
    assert calls.info["refine"] and calls.info["mean_support"] < 6
    np.testing.assert_array_equal(np.asarray(calls.probability()),
                                  (calls._fraction_draws(calls.screening_draws) >= 0.05)
                                  .mean(axis=0))
    with pytest.raises(ValueError, match="refine_fraction must be"):
        bnmf.refit(*cohort[:2], refine_fraction=1.5)


@pytest.mark.slow
def test_cli_refit_writes_calls(tmp_path, cohort):
    X, W, H = cohort
    X.iloc[:, :8].to_csv(tmp_path / "X.csv")
    W.iloc[::-1].to_csv(tmp_path / "ref.csv")
    out = tmp_path / "calls"
    code = main(["refit", str(tmp_path / "X.csv"), "--signatures", str(tmp_path / "ref.csv"),
                 "--method", "svi", "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "calls.csv")
    assert len(table) == 8 * W.shape[1]
    assert {"exposure", "lower", "upper", "probability", "active"} <= set(table.columns)
    exposures = pd.read_csv(out / "exposures.csv", index_col=0)
    assert list(exposures.index) == list(W.columns)
    share = H[:, :8] / H[:, :8].sum(axis=0)
    called = exposures[X.columns[:8]].to_numpy() / X.iloc[:, :8].to_numpy().sum(axis=0) >= 0.05
    assert called[share >= 0.3].all() and (called & (share < 0.05)).sum() <= 2


def test_cli_refit_reports_bad_input(tmp_path, cohort, capsys):
    X, W, _ = cohort
    X.to_csv(tmp_path / "X.csv")
    assert main(["refit", str(tmp_path / "X.csv"), "--signatures",
                 str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "no such" in err and "missing.csv" in err
    W.iloc[:-1].to_csv(tmp_path / "short.csv")
    assert main(["refit", str(tmp_path / "X.csv"), "--signatures",
                 str(tmp_path / "short.csv")]) == 2
    assert "do not match X's features" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, message", [
    ({"model": "gaussian"}, ValueError, "supports model='poisson'"),
    ({"method": "map"}, ValueError, "method must be one of"),
    ({"seed": 1.5}, TypeError, "seed must be an integer"),
    ({"num_samples": 0}, ValueError, "num_samples must be a positive integer"),
    ({"dtype": "float16"}, ValueError, "dtype must be"),
])
def test_refit_rejects_bad_options(cohort, kwargs, error, message):
    X, W, _ = cohort
    with pytest.raises(error, match=message):
        bnmf.refit(X, W, **kwargs)


def test_refit_rejects_bad_signatures(cohort):
    X, W, _ = cohort
    with pytest.raises(ValueError, match="do not match X's features"):
        bnmf.refit(X, W.iloc[:-1])
    renamed = W.rename(index={"f0": "nope"})
    with pytest.raises(ValueError, match="do not match X's features"):
        bnmf.refit(X, renamed)
    with pytest.raises(ValueError, match="has 39 rows but X has 40 features"):
        bnmf.refit(X.to_numpy(), W.to_numpy()[:-1])
    with pytest.raises(ValueError, match="contains negative values"):
        bnmf.refit(X, W - 0.5)
    bad = W.copy()
    bad.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        bnmf.refit(X, bad)
    zero = W.copy()
    zero["P0"] = 0.0
    with pytest.raises(ValueError, match="all-zero columns"):
        bnmf.refit(X, zero)
    with pytest.raises(TypeError, match="must be a DataFrame or 2-D array"):
        bnmf.refit(X, "SBS1")
    with pytest.raises(ValueError, match="non-integer values"):
        bnmf.refit(X + 0.5, W)


def test_calls_reject_bad_probabilities(calls):
    with pytest.raises(ValueError, match="prob must be a number strictly between 0 and 1"):
        calls.interval(1.5)
    with pytest.raises(ValueError, match="min_fraction must be"):
        calls.active(min_fraction=0)


# ------------------------------------------------------------------ match and decompose
def test_match_recovers_a_permutation():
    W_ref = load_pcawg_signatures().iloc[:, :10]
    rng = np.random.default_rng(0)
    order = rng.permutation(10)[:6]
    noisy = W_ref.iloc[:, order].to_numpy() * rng.uniform(0.9, 1.1, (96, 6))
    W = pd.DataFrame(noisy, index=W_ref.index[::-1].tolist()[::-1], columns=range(6))
    table = bnmf.match(W.iloc[::-1], W_ref)          # rows in another order: matched by label
    assert list(table["component"]) == list(range(6))
    assert list(table["reference"]) == list(W_ref.columns[order])
    assert (table["cosine"] > 0.98).all()


def test_match_rejects_different_features():
    with pytest.raises(ValueError, match="W has 5 features but W_ref has 6"):
        bnmf.match(np.ones((5, 2)), np.ones((6, 2)))


def test_decompose_finds_a_sparse_mix():
    W_ref = load_pcawg_signatures()
    part = 0.7 * W_ref["SBS2"] + 0.3 * W_ref["SBS13"]
    mix = bnmf.decompose(part, W_ref)
    assert set(mix["reference"]) == {"SBS2", "SBS13"}
    np.testing.assert_allclose(mix.set_index("reference")["weight"][["SBS2", "SBS13"]],
                               [0.7, 0.3], atol=0.02)
    assert mix.attrs["cosine"] > 0.999
    assert len(bnmf.decompose(part, W_ref, max_parts=1)) == 1
    with pytest.raises(ValueError, match="no positive entry"):
        bnmf.decompose(part * 0, W_ref)


# ------------------------------------------------------------------------- SBS96 data
def test_pcawg_signatures_bundled_in_canonical_order():
    W = load_pcawg_signatures()
    assert W.shape == (96, 65) and tuple(W.index) == SBS96_CHANNELS
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=2e-3)
    assert tuple(load_breast21().index) == SBS96_CHANNELS


def test_read_sbs96_reorders_sigprofiler_and_cosmic_v2_layouts(tmp_path):
    W = load_pcawg_signatures().iloc[:, :3]
    shuffled = W.iloc[np.random.default_rng(0).permutation(96)]
    path = tmp_path / "sigs.txt"
    shuffled.rename_axis("Type").reset_index().to_csv(path, sep="\t", index=False)
    pd.testing.assert_frame_equal(read_sbs96(path), W, check_names=False)
    # COSMIC v2 layout: substitution and trinucleotide columns plus a text column.
    legacy = pd.DataFrame({
        "Substitution Type": [c[2:5] for c in shuffled.index],
        "Trinucleotide": [c[0] + c[2] + c[6] for c in shuffled.index],
        "Somatic Mutation Type": list(shuffled.index),
    })
    legacy = pd.concat([legacy, shuffled.reset_index(drop=True)], axis=1)
    path = tmp_path / "legacy.csv"
    legacy.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_sbs96(path), W, check_names=False)


def test_to_sbs96_refuses_incomplete_tables():
    W = load_pcawg_signatures()
    with pytest.raises(ValueError, match="1 SBS96 channels are missing"):
        to_sbs96(W.iloc[1:])
    with pytest.raises(ValueError, match="not SBS96 channels"):
        to_sbs96(W.rename(index={"A[C>A]A": "ACA>AAA"}))


@pytest.mark.skipif(not (SHARED / "cosmic_sbs96").exists(),
                    reason="needs ../shared/data/cosmic_sbs96 (COSMIC signatures)")
def test_read_sbs96_reads_cosmic_files():
    v34 = read_sbs96(SHARED / "cosmic_sbs96" / "COSMIC_v3.4_SBS96_GRCh37.csv.gz")
    assert v34.shape == (96, 86) and tuple(v34.index) == SBS96_CHANNELS
    pcawg = load_pcawg_signatures()
    table = bnmf.match(pcawg[["SBS1", "SBS4", "SBS7a"]], v34)
    assert list(table["reference"]) == ["SBS1", "SBS4", "SBS7a"]


# ------------------------------------------------------------------- programs and plots
@pytest.fixture(scope="module")
def program_fit():
    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.full(25, 0.2), 3).T
    H = rng.gamma(1.0, 100.0, (3, 40))
    X = pd.DataFrame(rng.poisson(W @ H), index=[f"g{i}" for i in range(25)],
                     columns=[f"c{j}" for j in range(40)])
    return bnmf.fit(X, 3, method="svi", max_steps=600, min_steps=200, num_draws=200), W, H


def test_program_summary_and_usage(program_fit):
    fit, W_true, H_true = program_fit
    summary = program_summary(fit, top=5)
    assert len(summary) == 15 and summary.attrs["threshold"] == pytest.approx(1 / 25)
    for _, rows in summary.groupby("component"):
        assert rows["loading"].is_monotonic_decreasing
        assert (rows["lower"] <= rows["loading"]).all() and (rows["loading"] <= rows["upper"]).all()
    assert summary["probability"].between(0, 1).all()
    assert (summary.loc[summary["rank"] == 1, "probability"] > 0.99).all()
    mean, lower, upper = program_usage(fit)
    assert mean.shape == (3, 40)
    np.testing.assert_allclose(mean.sum(axis=0), 1.0, rtol=1e-5)
    assert (lower.to_numpy() <= upper.to_numpy()).all()
    # Usage follows the true share of each cell (components matched to the truth first).
    perm = align_permutation(fit.W.to_numpy(), W_true)
    _, H_scaled = normalize(W_true, H_true)
    share = H_scaled / H_scaled.sum(axis=0)
    estimate = mean.to_numpy()[perm]
    assert np.corrcoef(estimate.ravel(), share.ravel())[0, 1] > 0.95
    assert np.median(np.abs(estimate - share)) < 0.05


def test_program_summary_refuses_a_point_estimate():
    X = pd.DataFrame(np.random.default_rng(0).poisson(5.0, (10, 12)))
    with pytest.raises(ValueError, match="needs posterior draws"):
        program_summary(bnmf.fit(X, 2, method="map"))


def test_plots_return_figures(calls, program_fit):
    fig = plot_exposures(calls, max_observations=3)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    fig = plot_exposures(program_fit[0], observations=["c0", "c1"])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    fig = plot_top_features(program_fit[0], top=5)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    with pytest.raises(ValueError, match="are not in the result"):
        plot_exposures(calls, observations=["nope"])
