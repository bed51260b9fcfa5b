"""Plots of fitted parts and activities with their credible intervals (matplotlib)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["plot_parts", "SBS96_COLOURS", "is_sbs96"]

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


def plot_parts(fit, prob: float | None = 0.9, top: int = 20, components=None):
    """Bar chart of each part (column of W) with ``prob`` credible-interval whiskers.

    SBS96 mutational signatures are drawn over all 96 channels in the six standard class
    colours; other parts show their ``top`` features. MAP fits (no interval) have no whiskers.

    Returns
    -------
    matplotlib.figure.Figure
    """
    W = fit.W
    W = _as_frame(W, range(W.shape[0]), range(W.shape[1]))
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
        ax.set_xlim(-0.7, len(order) - 0.3)
        if sbs96:
            ax.set_xticks([])
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
