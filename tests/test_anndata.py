"""AnnData round trip: fit.to_anndata / bnmf.tl.nmf write, bnmf.read_anndata reads back exactly."""

import numpy as np
import pandas as pd
import pytest
from helpers import simulate

import bnmf

anndata = pytest.importorskip("anndata")


@pytest.fixture(scope="module")
def cells():
    """40 cells × 30 genes of Poisson counts from 3 known programs, as an AnnData."""
    X, W, _ = simulate(30, 40, rank=3, counts_per_sample=800, seed=5)
    adata = anndata.AnnData(X=X.T.astype(np.float32),
                            obs=pd.DataFrame(index=[f"cell{j}" for j in range(40)]),
                            var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    return adata, W


@pytest.fixture(scope="module")
def svi_fit(cells):
    adata, _ = cells
    return bnmf.fit(adata, 3, method="cavi", seed=0, progress=False, num_draws=200)


def test_round_trip_is_exact_through_h5ad(cells, svi_fit, tmp_path):
    adata = cells[0].copy()
    assert svi_fit.to_anndata(adata, prob=0.8) is adata
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    back = bnmf.read_anndata(anndata.read_h5ad(path))
    interval = svi_fit.interval(0.8)
    pd.testing.assert_frame_equal(back["W"], svi_fit.W, check_exact=True, check_names=False)
    pd.testing.assert_frame_equal(back["H"], svi_fit.H, check_exact=True, check_names=False)
    for name in ("W", "H"):
        for got, expected in zip(back["interval"][name], interval[name]):
            np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    info = back["info"]
    assert info["model"] == "poisson" and info["method"] == "cavi" and info["rank"] == 3
    assert info["prob"] == 0.8 and info["elbo"] == svi_fit.elbo
    # scanpy colours embeddings by obs columns: one per program, a share of each cell's total
    shares = adata.obs[["bnmf_0", "bnmf_1", "bnmf_2"]].to_numpy()
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(shares, (svi_fit.H / svi_fit.H.sum(axis=0)).T.to_numpy(),
                               rtol=1e-6)
    summary = back["summary"]
    assert list(summary["obs_column"]) == ["bnmf_0", "bnmf_1", "bnmf_2"]
    assert summary["top_features"].iloc[0].split(", ")[0] == svi_fit.W[0].idxmax()


def test_programs_written_in_adatas_order_and_recover_truth(cells, svi_fit):
    adata, W_true = cells
    shuffled = adata[adata.obs_names[::-1], adata.var_names[::-1]].copy()
    svi_fit.to_anndata(shuffled)
    back = bnmf.read_anndata(shuffled)
    pd.testing.assert_frame_equal(back["W"], svi_fit.W.loc[shuffled.var_names],
                                  check_names=False)
    pd.testing.assert_frame_equal(back["H"], svi_fit.H[shuffled.obs_names], check_names=False)
    # the programs are the simulated ones (cosine after Hungarian matching)
    from helpers import aligned_cosines

    cos, _ = aligned_cosines(back["W"].loc[adata.var_names].to_numpy(), W_true)
    assert cos.min() > 0.95


def test_tl_nmf_in_scanpy_style_and_map_fit_has_no_interval(cells):
    adata = cells[0].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)               # what scanpy users keep in X
    fit = bnmf.tl.nmf(adata, 3, layer="counts", method="map", seed=0, key="nmf")
    assert adata.obsm["X_nmf"].shape == (40, 3) and adata.varm["nmf_W"].shape == (30, 3)
    assert "X_nmf_lower" not in adata.obsm and "prob" not in adata.uns["nmf"]
    back = bnmf.read_anndata(adata, key="nmf")
    assert back["interval"] is None
    np.testing.assert_array_equal(back["W"].to_numpy(), fit.W.to_numpy())
    # the counts layer was fitted, not log1p(X): the mean reconstructs the counts
    np.testing.assert_allclose((fit.W.to_numpy() @ fit.H.to_numpy()).sum(),
                               adata.layers["counts"].sum(), rtol=0.02)


def test_new_anndata_from_an_unlabelled_fit(svi_fit):
    X, _, _ = simulate(12, 9, rank=2, counts_per_sample=300, seed=1)
    fit = bnmf.fit(X, 2, method="map", seed=0)
    adata = fit.to_anndata()
    assert adata.shape == (9, 12)
    np.testing.assert_array_equal(adata.X, X.T)
    np.testing.assert_array_equal(bnmf.read_anndata(adata)["H"].to_numpy(), fit.H)


def test_bad_input_names_the_problem(cells, svi_fit):
    adata = cells[0]
    with pytest.raises(ValueError, match="adata has 39 obs_names .cells. but the fit has 40"):
        svi_fit.to_anndata(adata[:39].copy())
    with pytest.raises(ValueError, match="adata has 29 var_names .genes. but the fit has 30"):
        svi_fit.to_anndata(adata[:, :29].copy())
    renamed = adata.copy()
    renamed.obs_names = [f"c{j}" for j in range(40)]
    with pytest.raises(ValueError, match=r"obs_names \(cells\) do not match .*\['c0'"):
        svi_fit.to_anndata(renamed)
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        svi_fit.to_anndata(adata.copy(), key="")
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        svi_fit.to_anndata(np.zeros((40, 30)))
    with pytest.raises(ValueError, match="no bnmf result under key 'other'"):
        bnmf.read_anndata(adata, key="other")
    with pytest.raises(ValueError, match="has no layer 'counts'"):
        bnmf.tl.nmf(adata.copy(), 2, layer="counts")


def test_missing_anndata_raises_a_clear_import_error(svi_fit, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "anndata", None)
    with pytest.raises(ImportError, match="need the anndata package: pip install anndata"):
        svi_fit.to_anndata()
