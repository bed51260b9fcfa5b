"""Figures of multi-view parts and of abundance maps: their content is the fit's summary.

Fits with posterior draws are built from known draws through the same containers the
inference paths fill (``build_idata``, ``build_multiview_idata``), so the tests cost no
sampling; MAP fits come from the public ``bnmf.fit``."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

import bnmf
from bnmf.data import prepare
from bnmf.datasets import load_breast21
from bnmf.inference import RawPosterior
from bnmf.models import get_model
from bnmf.models.multiview import MultiView
from bnmf.multiview import MultiViewFit, align_views, build_multiview_idata
from bnmf.plotting import (
    abundance_draws,
    plot_abundance_maps,
    plot_multiview_parts,
)
from bnmf.posterior import Fit, build_idata

RANK, DRAWS = 2, 30


def _gamma(rng, shape):
    return rng.gamma(2.0, 1.0, shape)


def fit_with_draws(n_rows=4, n_cols=5, n_features=7, coords=None, seed=0):
    """A poisson (or spatial, with ``coords``) Fit with DRAWS known posterior draws."""
    rng = np.random.default_rng(seed)
    n = n_rows * n_cols
    data = prepare(rng.poisson(3.0, (n_features, n)).astype(float))
    model = (get_model("poisson") if coords is None
             else get_model("spatial", coords=coords, n_neighbors=4, likelihood="poisson"))
    model = model.resolve(data, RANK)
    draws = {"W": _gamma(rng, (1, DRAWS, n_features, RANK)), "H": _gamma(rng, (1, DRAWS, RANK, n))}
    meta = {"model": model.name, "model_params": dataclasses.asdict(model), "method": "svi",
            "seed": 0, "dtype": "float32"}
    return Fit(build_idata(RawPosterior(draws, np.zeros(3), None), data, RANK, meta))


def multiview_fit_with_draws(seed=0):
    """A two-view MultiViewFit (an SBS96 view and a small labelled one) with known draws."""
    rng = np.random.default_rng(seed)
    sbs = load_breast21().iloc[:, :6]
    other = pd.DataFrame(rng.poisson(2.0, (8, 6)).astype(float), columns=sbs.columns,
                         index=[f"f{i}" for i in range(8)])
    views = align_views({"sbs": prepare(sbs), "other": prepare(other)})
    model = MultiView((("sbs", get_model("poisson")), ("other", get_model("poisson"))))
    model = model.resolve(views, RANK)
    draws = {"H": _gamma(rng, (1, DRAWS, RANK, 6)), "W_sbs": _gamma(rng, (1, DRAWS, 96, RANK)),
             "W_other": _gamma(rng, (1, DRAWS, 8, RANK))}
    meta = {"method": "svi", "seed": 0, "dtype": "float32"}
    raw = RawPosterior(draws, np.zeros(3), None)
    return MultiViewFit(build_multiview_idata(raw, views, model, RANK, meta))


def test_multiview_parts_one_column_per_view_bars_and_whiskers_are_the_view_summary():
    fit = multiview_fit_with_draws()
    figure = plot_multiview_parts(fit, prob=0.8, top=5)
    axes = np.array(figure.axes).reshape(RANK, 2)
    for column, view in enumerate(fit.views):
        view_fit = fit.view_fit(view)
        W = view_fit.W
        lower, upper = view_fit.interval(0.8)["W"]
        for k in range(RANK):
            ax = axes[k, column]
            bars = next(c for c in ax.containers if isinstance(c, BarContainer))
            heights = np.array([bar.get_height() for bar in bars.patches])
            if view == "sbs":                   # all 96 channels, COSMIC order
                assert len(heights) == 96
                np.testing.assert_allclose(np.sort(heights), np.sort(W[k].to_numpy()),
                                           rtol=1e-6)
                assert "best match SBS" in " ".join(t.get_text() for t in ax.texts)
            else:                               # the top 5 features, largest first
                expected = W[k].sort_values(ascending=False)
                np.testing.assert_allclose(heights, expected.to_numpy()[:5], rtol=1e-6)
                ticks = [t.get_text() for t in ax.get_xticklabels()]
                assert ticks == [str(f) for f in expected.index[:5]]
                # whiskers: the bar's interval, from the view's own Fit
                segments = ax.collections[0].get_segments()
                ends = np.array([[s[0][1], s[1][1]] for s in segments])
                np.testing.assert_allclose(ends[:, 0], lower.loc[expected.index[:5], k], rtol=1e-5)
                np.testing.assert_allclose(ends[:, 1], upper.loc[expected.index[:5], k], rtol=1e-5)
    assert "80% credible intervals" in figure._suptitle.get_text()
    only = plot_multiview_parts(fit, views=["other"], components=[1], prob=None)
    assert len(only.axes) == 1 and not only.axes[0].collections
    plt.close("all")


def test_multiview_parts_refuse_bad_input():
    fit = multiview_fit_with_draws()
    with pytest.raises(ValueError, match="views \\['rna'\\] are not in the fit"):
        plot_multiview_parts(fit, views=["rna"])
    with pytest.raises(ValueError, match="components must be integers in 0..1"):
        plot_multiview_parts(fit, components=[2])
    with pytest.raises(ValueError, match="prob must be a number strictly between"):
        plot_multiview_parts(fit, prob=1.5)
    with pytest.raises(TypeError, match="takes a MultiViewFit"):
        plot_multiview_parts(fit.view_fit("sbs"))
    plt.close("all")


@pytest.mark.parametrize("order", ["C", "F"])
def test_abundance_maps_show_the_posterior_mean_share_and_interval_width(order):
    fit = fit_with_draws()
    figure = plot_abundance_maps(fit, (4, 5), prob=0.9, order=order)
    images = [ax for ax in figure.axes if ax.images]
    assert len(images) == 2 * RANK                    # mean and width per component
    H = np.asarray(fit.idata["posterior"]["H"].values).reshape(DRAWS, RANK, 20)
    share = H / H.sum(axis=1, keepdims=True)
    lower, upper = np.quantile(share, [0.05, 0.95], axis=0)
    for k in range(RANK):
        np.testing.assert_allclose(images[2 * k].images[0].get_array(),
                                   share.mean(axis=0)[k].reshape((4, 5), order=order), rtol=1e-6)
        np.testing.assert_allclose(images[2 * k + 1].images[0].get_array(),
                                   (upper - lower)[k].reshape((4, 5), order=order), rtol=1e-6)
    # the posterior mean of the raw H, divided by a scale, without normalizing
    scale = np.array([2.0, 0.5])
    np.testing.assert_allclose(abundance_draws(fit, scale, normalize=False).mean(axis=0),
                               np.asarray(fit.H) / scale[:, None], rtol=1e-6)
    plt.close("all")


def test_abundance_maps_of_a_map_fit_have_one_column_and_coords_draw_a_scatter():
    rng = np.random.default_rng(1)
    coords = np.stack(np.meshgrid(np.arange(4.0), np.arange(5.0), indexing="ij"), -1).reshape(-1, 2)
    point = bnmf.fit(rng.poisson(3.0, (6, 20)).astype(float), RANK, method="map", max_iter=20)
    figure = plot_abundance_maps(point, (4, 5))
    assert len(figure.axes) == 2 * RANK               # RANK maps and their colour bars
    share = np.asarray(point.H) / np.asarray(point.H).sum(axis=0)
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(),
                               share[0].reshape(4, 5), rtol=1e-5)
    spatial = fit_with_draws(coords=coords)               # the model keeps the coords
    scatter = plot_abundance_maps(spatial, components=[1], names=["water"])
    maps = [ax for ax in scatter.axes if ax.collections and not ax.images
            and ax.get_label() != "<colorbar>"]
    assert len(maps) == 2
    np.testing.assert_allclose(maps[0].collections[0].get_offsets(), coords)
    np.testing.assert_allclose(maps[0].collections[0].get_array(),
                               abundance_draws(spatial).mean(axis=0)[1], rtol=1e-6)
    assert "water" in maps[0].get_title()
    plt.close("all")


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (3, 5)}, "n_rows × n_cols = the fit's 20 samples"),
    ({}, "this fit's model keeps no coords"),
    ({"shape": (4, 5), "coords": np.zeros((20, 2))}, "not both"),
    ({"coords": np.zeros((19, 2))}, "coords must be a finite \\(20, 2\\)"),
    ({"shape": (4, 5), "prob": 0.0}, "prob must be a number strictly between"),
    ({"shape": (4, 5), "order": "K"}, "order must be"),
    ({"shape": (4, 5), "components": [5]}, "components must be integers in 0..1"),
    ({"shape": (4, 5), "names": ["a"]}, "one name per drawn component"),
    ({"shape": (4, 5), "scale": [1.0, -1.0]}, "scale must be 2 positive"),
])
def test_abundance_maps_refuse_bad_input(kwargs, message):
    fit = fit_with_draws()
    with pytest.raises(ValueError, match=message):
        plot_abundance_maps(fit, **kwargs)
    plt.close("all")
