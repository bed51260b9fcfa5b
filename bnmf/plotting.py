"""Plots of fitted parts and activities with their credible intervals (matplotlib)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["SBS96_COLOURS", "is_sbs96", "plot_exposures", "plot_parts", "plot_top_features",
           "reference_matches"]

# The standard colours of the six substitution classes in COSMIC's SBS96 plots.
SBS96_COLOURS = {
    "C>A": "#1EBFF0", "C>G": "#050708", "C>T": "#E62725",
    "T>A": "#CBCACB", "T>C": "#A1CF64", "T>G": "#EDC8C5",
}
_SBS96_PATTERN = re.compile(r"^([ACGT])\[([CT]>[ACGT])\]([ACGT])$")


def is_sbs96(labels) -> bool:
    """Whether ``labels`` are the 96 SBS channels, written like ``A[C>A]A``."""
    labels = [str(label) for label in labels]
    return len(labels) == 96 and all(_SBS96_PATTERN.match(label) for label in labels)


def _sbs96_order(labels) -> np.ndarray:
    """Positions sorting channels as COSMIC plots them: by class, then 5' and 3' base."""
    keys = []
    for label in labels:
        left, substitution, right = _SBS96_PATTERN.match(str(label)).groups()
        keys.append((substitution, left, right))
    return np.array(sorted(range(len(keys)), key=keys.__getitem__))


def _as_frame(value, index, columns) -> pd.DataFrame:
    if isinstance(value, pd.DataFrame):
        return value
    return pd.DataFrame(np.asarray(value), index=index, columns=columns)


def reference_matches(W, reference="auto") -> pd.DataFrame | None:
    """The reference part each column of ``W`` matches best, one-to-one (:func:`bnmf.match`).

    ``reference="auto"`` is the bundled PCAWG SBS96 set
    (:func:`bnmf.datasets.load_pcawg_signatures`) when ``W``'s rows are the 96 SBS channels,
    else no matching (None); a DataFrame (features × reference parts) is matched by row label;
    None turns matching off.

    Returns
    -------
    DataFrame indexed by component with ``reference`` and ``cosine``, or None.
    """
    from .calling import match

    if reference is None:
        return None
    if isinstance(reference, str):
        if reference != "auto":
            raise ValueError(f"reference must be 'auto', None or a DataFrame of reference "
                             f"parts, got {reference!r}.")
        if not is_sbs96(getattr(W, "index", ())):
            return None
        from .datasets import load_pcawg_signatures

        reference = load_pcawg_signatures()
    return match(W, reference).set_index("component")


def _trinucleotide(label) -> str:
    """``ACA`` from ``A[C>A]A``: the 5' base, the reference base and the 3' base."""
    left, substitution, right = _SBS96_PATTERN.match(str(label)).groups()
    return left + substitution[0] + right


def plot_parts(fit, prob: float | None = 0.9, top: int = 20, components=None, reference="auto"):
    """Bar chart of each part (column of W) with ``prob`` credible-interval whiskers.

    SBS96 mutational signatures are drawn over all 96 channels in the six standard class
    colours, with the trinucleotide context of each channel (5'-reference-3', e.g. ``TCA``)
    under its bar as SigProfiler plots do; other parts show their ``top`` features. MAP fits
    (no interval) have no whiskers.

    Parameters
    ----------
    reference : "auto", DataFrame or None
        Reference parts to name each part by (:func:`reference_matches`): each panel is titled
        with its best one-to-one match and the cosine. "auto" matches SBS96 parts to the
        bundled PCAWG signatures and leaves other parts unnamed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    W = fit.W
    W = _as_frame(W, range(W.shape[0]), range(W.shape[1]))
    matches = reference_matches(W, reference)
    lower = upper = None
    if prob is not None and fit.num_draws > 1:
        low, high = fit.interval(prob)["W"]
        lower, upper = _as_frame(low, W.index, W.columns), _as_frame(high, W.index, W.columns)
    components = list(W.columns if components is None else components)
    sbs96 = is_sbs96(W.index)
    fig, axes = plt.subplots(len(components), 1, figsize=(12 if sbs96 else 8, 1.9 * len(components)),
                             squeeze=False, constrained_layout=True)
    for ax, component in zip(axes[:, 0], components):
        column = W[component]
        if sbs96:
            order = _sbs96_order(W.index)
            substitution = [_SBS96_PATTERN.match(str(c)).group(2) for c in W.index[order]]
            colours = [SBS96_COLOURS[s] for s in substitution]
        else:
            order = np.argsort(-column.to_numpy())[:top]
            colours = "tab:blue"
        x = np.arange(len(order))
        heights = column.to_numpy()[order]
        if lower is not None:
            errors = np.vstack([heights - lower[component].to_numpy()[order],
                                upper[component].to_numpy()[order] - heights])
            ax.bar(x, heights, color=colours, yerr=np.maximum(errors, 0), ecolor="0.3",
                   error_kw={"elinewidth": 0.6, "capsize": 0})
        else:
            ax.bar(x, heights, color=colours)
        ax.set_ylabel(f"part {component}")
        if matches is not None and component in matches.index:
            ax.text(0.995, 0.9, f"best match {matches.loc[component, 'reference']} "
                    f"(cosine {matches.loc[component, 'cosine']:.2f})", transform=ax.transAxes,
                    ha="right", va="top", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
        ax.set_xlim(-0.7, len(order) - 0.3)
        if sbs96:
            ax.set_xticks(x, [_trinucleotide(c) for c in W.index[order]], rotation=90,
                          fontsize=5.5, family="monospace")
            for i, (substitution_class, colour) in enumerate(SBS96_COLOURS.items()):
                ax.axvspan(16 * i - 0.5, 16 * i + 15.5, ymin=0.97, ymax=1.0, color=colour,
                           clip_on=False)
                if component == components[0]:
                    ax.text(16 * i + 7.5, 1.04, substitution_class, transform=ax.get_xaxis_transform(),
                            ha="center", va="bottom", fontsize=9)
        else:
            ax.set_xticks(x, [str(label) for label in W.index[order]], rotation=90, fontsize=7)
    title = "parts (columns of W, each summing to 1)"
    if lower is not None:
        title += f" with {round(100 * prob)}% credible intervals"
    fig.suptitle(title)
    return fig


def _exposure_summary(result, prob: float):
    """(mean, lower, upper, probability or None) DataFrames (parts × samples) of a Calls or Fit."""
    from .calling import Calls

    if isinstance(result, Calls):
        mean = _as_frame(result.exposures, result.signatures, result.observation_names)
        lower, upper = (_as_frame(b, mean.index, mean.columns) for b in result.interval(prob))
        probability = _as_frame(result.probability(), mean.index, mean.columns)
        return mean, lower, upper, probability
    H = result.H
    mean = _as_frame(H, range(H.shape[0]), range(H.shape[1]))
    if result.num_draws < 2:
        return mean, None, None, None
    lower, upper = (_as_frame(b, mean.index, mean.columns) for b in result.interval(prob)["H"])
    return mean, lower, upper, None


def plot_exposures(result, observations=None, prob: float = 0.9, min_fraction: float = 0.05,
                   max_observations: int = 12, ncols: int = 4):
    """Exposures per sample with ``prob`` credible-interval whiskers.

    One panel per sample (the first ``max_observations`` unless ``observations`` names them),
    showing the parts whose posterior mean share of the sample is at least ``min_fraction``.
    For :func:`bnmf.refit` results, bars of parts called active (P(share ≥ 5%) ≥ 0.95) are dark
    and the others light, with the presence probability printed next to each bar.

    Parameters
    ----------
    result : Calls (from :func:`bnmf.refit`) or Fit

    Returns
    -------
    matplotlib.figure.Figure
    """
    mean, lower, upper, probability = _exposure_summary(result, prob)
    columns = list(mean.columns[:max_observations] if observations is None else observations)
    missing = [c for c in columns if c not in mean.columns]
    if missing:
        raise ValueError(f"observations {missing[:3]} are not in the result; choose from "
                         f"{list(mean.columns[:5])}...")
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, min(ncols, len(columns)), squeeze=False,
                             figsize=(3.4 * min(ncols, len(columns)), 2.4 * nrows),
                             constrained_layout=True)
    for ax in axes.ravel()[len(columns):]:
        ax.set_visible(False)
    for ax, column in zip(axes.ravel(), columns):
        values = mean[column]
        shown = values.index[(values / max(values.sum(), 1e-300) >= min_fraction).to_numpy()]
        shown = list(values[shown].sort_values().index)
        y = np.arange(len(shown))
        heights = values[shown].to_numpy()
        colours = "tab:blue"
        if probability is not None:
            colours = ["tab:blue" if p >= 0.95 else "lightsteelblue"
                       for p in probability.loc[shown, column]]
        if lower is not None:
            errors = np.vstack([heights - lower.loc[shown, column].to_numpy(),
                                upper.loc[shown, column].to_numpy() - heights])
            ax.barh(y, heights, color=colours, xerr=np.maximum(errors, 0), ecolor="0.3",
                    error_kw={"elinewidth": 0.8, "capsize": 2})
        else:
            ax.barh(y, heights, color=colours)
        if probability is not None:
            for yi, name in zip(y, shown):
                ax.text(1.0, yi, f" p={probability.loc[name, column]:.2f}", va="center",
                        fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_yticks(y, [str(s) for s in shown], fontsize=8)
        ax.set_title(str(column), fontsize=9)
        ax.set_xlabel("exposure (counts)" if probability is not None else "activity", fontsize=8)
    title = "exposures"
    if lower is not None:
        title += f" with {round(100 * prob)}% credible intervals"
    fig.suptitle(title)
    return fig


def plot_top_features(fit, components=None, top: int = 10, threshold: float | None = None):
    """Top features of each program (column of W) with 90% interval whiskers.

    Each bar is annotated with the posterior probability that the loading exceeds
    ``threshold`` (default ``1 / n_features``), from :func:`bnmf.calling.program_summary`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .calling import program_summary

    summary = program_summary(fit, top=top, threshold=threshold)
    components = sorted(summary["component"].unique()) if components is None else list(components)
    ncols = min(4, len(components))
    nrows = -(-len(components) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(3.3 * ncols, 0.25 * top * nrows + 1),
                             constrained_layout=True)
    for ax in axes.ravel()[len(components):]:
        ax.set_visible(False)
    for ax, component in zip(axes.ravel(), components):
        rows = summary[summary["component"] == component].iloc[::-1]
        y = np.arange(len(rows))
        loading = rows["loading"].to_numpy()
        errors = np.vstack([loading - rows["lower"].to_numpy(), rows["upper"].to_numpy() - loading])
        ax.barh(y, loading, color="tab:green", xerr=np.maximum(errors, 0), ecolor="0.3",
                error_kw={"elinewidth": 0.8, "capsize": 2})
        for yi, p in zip(y, rows["probability"]):
            ax.text(1.0, yi, f" {p:.2f}", va="center", fontsize=7,
                    transform=ax.get_yaxis_transform())
        ax.set_yticks(y, [str(f) for f in rows["feature"]], fontsize=8)
        ax.set_title(f"program {component}", fontsize=9)
    fig.suptitle("top features with 90% intervals; P(loading > "
                 f"{summary.attrs['threshold']:.2g}) at right")
    return fig
