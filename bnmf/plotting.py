"""Plots of fitted parts and activities with their credible intervals (matplotlib)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .options import check_prob

__all__ = ["SBS96_COLOURS", "abundance_draws", "is_sbs96", "plot_abundance_maps",
           "plot_bootstrap", "plot_dispersion", "plot_exposures", "plot_memberships",
           "plot_multiview_parts", "plot_parts", "plot_ppc", "plot_top_features",
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


def _part_panel(ax, W: pd.DataFrame, lower, upper, component, matches, top: int,
                class_labels: bool = False) -> None:
    """One part (column ``component`` of ``W``, features × parts) as bars on ``ax``: all 96
    channels in COSMIC order and colours for SBS96, else the ``top`` largest features; with
    ``lower``/``upper`` (DataFrames like ``W``) as whiskers, and the best reference match of
    ``matches`` (from :func:`reference_matches`) written in the corner."""
    column = W[component]
    sbs96 = is_sbs96(W.index)
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
            if class_labels:
                ax.text(16 * i + 7.5, 1.04, substitution_class, transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=9)
    else:
        ax.set_xticks(x, [str(label) for label in W.index[order]], rotation=90, fontsize=7)


def _parts_summary(fit, prob: float | None):
    """(W, lower, upper) of a Fit as DataFrames (features × parts, columns summing to 1); the
    bounds are None for a point estimate or ``prob=None``."""
    W = fit.W
    W = _as_frame(W, range(W.shape[0]), range(W.shape[1]))
    if prob is None or fit.num_draws < 2:
        return W, None, None
    low, high = fit.interval(prob)["W"]
    return W, _as_frame(low, W.index, W.columns), _as_frame(high, W.index, W.columns)


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
    W, lower, upper = _parts_summary(fit, prob)
    matches = reference_matches(W, reference)
    components = list(W.columns if components is None else components)
    sbs96 = is_sbs96(W.index)
    fig, axes = plt.subplots(len(components), 1, figsize=(12 if sbs96 else 8, 1.9 * len(components)),
                             squeeze=False, constrained_layout=True)
    for ax, component in zip(axes[:, 0], components):
        _part_panel(ax, W, lower, upper, component, matches, top,
                    class_labels=component == components[0])
        ax.set_ylabel(f"part {component}")
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


def _with_replicates(fit):
    """``fit`` itself when it has a posterior_predictive group, else with one of 100 draws."""
    from .posterior import arviz_group_names

    if "posterior_predictive" in arviz_group_names(fit.idata):
        return fit
    return fit.posterior_predictive(100, seed=0)


def plot_ppc(fit, features=None, groups=None, prob: float = 0.9, max_panels: int = 6,
             ncols: int = 3):
    """Posterior predictive check: observed values against their predictive intervals.

    One panel per feature (``features``, else the ``max_panels`` features with the largest
    totals). Without ``groups`` the panel has one position per sample, sorted by the observed
    value: the observed count (dot) and the ``prob`` interval and median of the replicated
    count (bar). With ``groups`` (one label per sample, e.g. cell types or cohorts) the
    values are summed within each group, one position per group. Observed points outside
    their interval are red; about ``1 - prob`` of them should be if the model fits.
    Replicates come from the fit's ``posterior_predictive`` group, made (100 draws, seed 0)
    if it has none.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .posterior import _training_data, arviz_group

    fit = _with_replicates(fit)
    replicated = fit.replicated_data().astype(np.float64)       # (draws, F, N)
    X, mask = _training_data(fit.idata)
    posterior = arviz_group(fit.idata, "posterior")
    names = pd.Index(posterior["feature"].values)
    observed = np.where(mask, X, 0.0)
    replicated = np.where(mask, replicated, 0.0)      # compare like with like: observed entries
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (X.shape[1],):
            raise ValueError(f"groups must give one label per sample ({X.shape[1]}), got "
                             f"shape {labels.shape}.")
        levels = pd.unique(labels)
        member = labels[None, :] == np.asarray(levels)[:, None]        # (G, N)
        observed, replicated = observed @ member.T, replicated @ member.T
        columns = [str(level) for level in levels]
    else:
        columns = None
    if features is None:
        chosen = np.argsort(-observed.sum(axis=1))[:max_panels]
    else:
        positions = names.get_indexer(list(features))
        if (positions < 0).any():
            raise ValueError(f"features {[f for f, p in zip(features, positions) if p < 0][:3]} "
                             f"are not in the fit; choose from {list(names[:5])}...")
        chosen = positions
    tails = [(1 - prob) / 2, 0.5, (1 + prob) / 2]
    ncols = min(ncols, len(chosen))
    nrows = -(-len(chosen) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(4.2 * ncols, 2.8 * nrows),
                             constrained_layout=True)
    for ax in axes.ravel()[len(chosen):]:
        ax.set_visible(False)
    outside_total = count_total = 0
    for ax, i in zip(axes.ravel(), chosen):
        values = observed[i]
        lower, median, upper = np.quantile(replicated[:, i], tails, axis=0)
        order = np.argsort(values) if columns is None else np.arange(len(values))
        x = np.arange(len(order))
        ax.vlines(x, lower[order], upper[order], color="0.6", linewidth=3,
                  label=f"{round(100 * prob)}% predictive interval")
        ax.scatter(x, median[order], marker="_", color="0.3", s=30, label="predictive median")
        outside = (values < lower) | (values > upper)
        ax.scatter(x, values[order], s=12, zorder=3,
                   c=np.where(outside[order], "tab:red", "tab:blue"), label="observed")
        outside_total += int(outside.sum())
        count_total += len(values)
        ax.set_title(f"{names[i]}: {outside.sum()} of {len(values)} outside", fontsize=9)
        if columns is None:
            ax.set_xlabel("samples, by observed value", fontsize=8)
            ax.set_xticks([])
        else:
            ax.set_xticks(x, columns, rotation=45, ha="right", fontsize=7)
    fig.legend(*axes.ravel()[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=3, fontsize=8)
    fig.suptitle(f"posterior predictive check ({fit.model.name} model): {outside_total} of "
                 f"{count_total} observed values outside their {round(100 * prob)}% interval "
                 f"(about {round(100 * (1 - prob))}% expected)")
    return fig


def plot_dispersion(fit, prob: float = 0.9):
    """Dispersion check: observed variance / mean of each feature against the model's.

    x: each feature's observed mean; y: its variance / mean across the observed samples.
    Grey bars are the ``prob`` interval of the same ratio over replicated data sets
    (:meth:`bnmf.Fit.dispersion_check`); features whose observed ratio is above theirs are
    red. Many red features mean the counts are overdispersed for the fitted likelihood: a
    negative binomial model (``model="negbin"``) allows for that extra variance.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fit = _with_replicates(fit)
    table = fit.dispersion_check(prob).dropna(subset=["observed"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    x = table["mean"].to_numpy()
    ax.vlines(x, table["lower"], table["upper"], color="0.65", linewidth=2.5,
              label=f"replicated, {round(100 * prob)}% interval")
    above = table["above"].to_numpy()
    ax.scatter(x[~above], table["observed"][~above], s=14, color="tab:blue", zorder=3,
               label="observed, within or below")
    ax.scatter(x[above], table["observed"][above], s=18, color="tab:red", zorder=3,
               label="observed, above: overdispersed")
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1, label="variance = mean")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("observed mean of the feature over samples")
    ax.set_ylabel("variance / mean over samples")
    ax.legend(fontsize=8)
    fraction = table.attrs["fraction_above"]
    verdict = ("overdispersed for this likelihood: consider model='negbin'"
               if fraction > 2 * (1 - prob) else "consistent with the fitted likelihood")
    ax.set_title(f"{fit.model.name} model: {int(above.sum())} of {len(table)} features above "
                 f"their interval ({100 * fraction:.0f}%; {100 * (1 - prob) / 2:.0f}% expected)"
                 f"\n{verdict}", fontsize=9)
    return fig


def plot_bootstrap(result, components=None, top: int = 15):
    """Each part's top features: the posterior interval of the full-data fit beside the
    cohort-bootstrap interval (:func:`bnmf.bootstrap`), at the bootstrap's ``prob``.

    Wider bootstrap bars mean that another cohort drawn like this one would give a different
    part than this cohort's posterior allows; a panel title gives the part's stability (share
    of resamples reproducing it) and the ratio of the mean interval widths.

    Returns
    -------
    matplotlib.figure.Figure
    """
    reference = result.reference
    prob = result.settings["prob"]
    W = reference.W
    W = _as_frame(W, range(W.shape[0]), range(W.shape[1]))
    boot_low, boot_high = (_as_frame(b, W.index, W.columns) for b in result.interval(prob))
    posterior = None
    if reference.num_draws > 1:
        posterior = [_as_frame(b, W.index, W.columns) for b in reference.interval(prob)["W"]]
    components = list(W.columns if components is None else components)
    ncols = min(3, len(components))
    nrows = -(-len(components) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(4.4 * ncols, 0.22 * top * nrows + 1.2),
                             constrained_layout=True)
    for ax in axes.ravel()[len(components):]:
        ax.set_visible(False)
    for ax, component in zip(axes.ravel(), components):
        order = np.argsort(-W[component].to_numpy())[:top][::-1]
        y = np.arange(len(order))
        mean = W[component].to_numpy()[order]
        ax.barh(y, mean, color="0.85", height=0.8)
        if posterior is not None:
            ax.hlines(y + 0.15, posterior[0][component].to_numpy()[order],
                      posterior[1][component].to_numpy()[order], color="tab:blue",
                      linewidth=2, label="posterior (this cohort)")
        ax.hlines(y - 0.15, boot_low[component].to_numpy()[order],
                  boot_high[component].to_numpy()[order], color="tab:orange", linewidth=2,
                  label="bootstrap (another cohort)")
        ax.set_yticks(y, [str(label) for label in W.index[order]], fontsize=7)
        row = result.table.loc[list(W.columns).index(component)]
        ax.set_title(f"part {component}: stability {row['stability']:.2f}, "
                     f"width ratio {row['width_ratio']:.2g}", fontsize=9)
    fig.legend(*axes.ravel()[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=2, fontsize=8)
    fig.suptitle(f"{round(100 * prob)}% intervals of each part's top loadings: posterior vs "
                 f"{result.W.shape[0]} cohort bootstrap refits ({result.settings['method']})")
    return fig


def plot_memberships(fit, prob: float = 0.9, groups=None, which: str | None = None):
    """Community memberships of a :func:`bnmf.fit_network` fit as a heatmap: each node's
    posterior mean share of each community (left), the width of its ``prob`` interval
    (middle) and the posterior probability of its main community (right, ambiguous nodes
    marked). Nodes are sorted by main community, then by that share.

    Parameters
    ----------
    fit : NetworkFit
    prob : float
        Interval probability; nodes with P(main community) < (1 + prob) / 2 are marked
        ambiguous, as :meth:`NetworkFit.ambiguous` lists them.
    groups : array-like of shape (n_nodes,), optional
        Known labels (e.g. factions), written beside each node's name.
    which : {"W_out", "W_in"}, optional
        For a directed fit: which memberships (default their sum).

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_prob(prob)
    fit._check_spread()
    shares = fit.shares(which)                                   # (draws, nodes, rank)
    mean = shares.mean(axis=0)
    lower, upper = np.quantile(shares, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    main = mean.argmax(axis=1)
    p_main = fit.assignment_probability(which).to_numpy()
    order = np.lexsort((-mean[np.arange(len(main)), main], main))
    names = [str(n) for n in fit.nodes]
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(names),):
            raise ValueError(f"groups must have one label per node ({len(names)}), got shape "
                             f"{groups.shape}.")
        names = [f"{n} ({g})" for n, g in zip(names, groups)]
    fig, axes = plt.subplots(1, 3, figsize=(3.0 + 0.9 * fit.rank * 2 + 1.5,
                                            0.2 * len(names) + 1.4),
                             gridspec_kw={"width_ratios": [fit.rank, fit.rank, 1.2]},
                             constrained_layout=True)
    y = np.arange(len(order))
    for ax, value, title, cmap in [(axes[0], mean, "mean share", "viridis"),
                                   (axes[1], upper - lower, f"{round(100 * prob)}% interval width",
                                    "magma_r")]:
        image = ax.imshow(value[order], aspect="auto", cmap=cmap, vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_xticks(range(fit.rank), [f"c{k}" for k in range(fit.rank)])
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.6)
    axes[0].set_yticks(y, [names[i] for i in order], fontsize=7)
    axes[1].set_yticks([])
    ambiguous = p_main[order] < (1 + prob) / 2
    axes[2].barh(y, p_main[order], color=np.where(ambiguous, "tab:orange", "tab:blue"))
    axes[2].axvline((1 + prob) / 2, color="0.4", linestyle=":", linewidth=1)
    axes[2].set_ylim(len(order) - 0.5, -0.5)
    axes[2].set_xlim(0, 1)
    axes[2].set_yticks([])
    axes[2].set_title("P(main)", fontsize=9)
    fig.suptitle(f"{len(names)} nodes × {fit.rank} communities ({fit.method}); orange: "
                 f"ambiguous at {round(100 * prob)}%", fontsize=10)
    return fig


def _check_prob(prob) -> None:
    """``prob`` of an interval, or None for no intervals (:func:`check_prob`'s rule)."""
    if prob is not None:
        check_prob(prob)


def plot_multiview_parts(fit, prob: float | None = 0.9, top: int = 20, components=None,
                         views=None, reference="auto"):
    """The parts of a joint multi-view fit side by side: one panel column per view, one row
    per component (component k of every view shares the row k of H).

    Each view's part is drawn as :func:`plot_parts` draws one (SBS96 views over all 96
    channels in the class colours, other views their ``top`` features), normalized to sum 1
    within the view (:meth:`MultiViewFit.view_fit`), with ``prob`` credible-interval whiskers
    where the fit has draws.

    Parameters
    ----------
    fit : MultiViewFit
    prob : float or None
        Interval probability; None (or a MAP fit) draws no whiskers.
    components : list of int, optional
        Rows to draw (default all).
    views : list of str, optional
        Columns to draw, in order (default all views).
    reference : "auto", DataFrame, None, or dict {view: one of those}
        Reference parts per view (:func:`reference_matches`); "auto" names SBS96 views'
        parts by the bundled PCAWG signatures.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .multiview import MultiViewFit

    if not isinstance(fit, MultiViewFit):
        raise TypeError(f"plot_multiview_parts takes a MultiViewFit (bnmf.fit with a dict of "
                        f"views), got {type(fit).__name__}; use plot_parts for one matrix.")
    _check_prob(prob)
    views = list(fit.views if views is None else views)
    unknown = [v for v in views if v not in fit.views]
    if unknown or not views:
        raise ValueError(f"views {unknown} are not in the fit; it has views {fit.views}.")
    references = reference if isinstance(reference, dict) else {v: reference for v in views}
    components = list(range(fit.rank) if components is None else components)
    bad = [k for k in components if not (isinstance(k, (int, np.integer)) and 0 <= k < fit.rank)]
    if bad or not components:
        raise ValueError(f"components must be integers in 0..{fit.rank - 1}, got {bad or components}.")
    summaries = {v: _parts_summary(fit.view_fit(v), prob) for v in views}
    widths = [12 if is_sbs96(summaries[v][0].index) else 5 for v in views]
    fig, axes = plt.subplots(len(components), len(views), squeeze=False,
                             figsize=(sum(widths) * 0.8, 1.9 * len(components)),
                             gridspec_kw={"width_ratios": widths}, constrained_layout=True)
    for column, view in enumerate(views):
        W, lower, upper = summaries[view]
        matches = reference_matches(W, references.get(view, "auto"))
        for row, component in enumerate(components):
            ax = axes[row, column]
            _part_panel(ax, W, lower, upper, component, matches, top, class_labels=row == 0)
            if column == 0:
                ax.set_ylabel(f"part {component}")
            if row == 0:
                ax.set_title(f"view {view!r} ({W.shape[0]} features)", fontsize=10, pad=18)
    title = f"{fit.rank} components shared by {len(fit.views)} views ({fit.method})"
    if summaries[views[0]][1] is not None:
        title += f", {round(100 * prob)}% credible intervals"
    fig.suptitle(title)
    return fig


def abundance_draws(fit, scale=None, normalize: bool = True) -> np.ndarray:
    """Per posterior draw, each sample's abundances: ``H`` (draws, rank, n_samples), each
    row divided by ``scale`` (rank,) first when given (e.g. the endmembers' column sums, to
    read H in the endmembers' units rather than in those of W's columns summing to 1), and
    with ``normalize`` divided by its sum over components per sample (shares summing to 1).
    """
    from .posterior import arviz_group

    H = np.asarray(arviz_group(fit.idata, "posterior")["H"].values, dtype=np.float64)
    H = H.reshape((-1,) + H.shape[2:])
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float64)
        if scale.shape != (H.shape[1],) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"scale must be {H.shape[1]} positive finite numbers (one per "
                             f"component), got shape {scale.shape}.")
        H = H / scale[:, None]
    if normalize:
        H = H / np.maximum(H.sum(axis=1, keepdims=True), 1e-300)
    return H


def _sample_layout(fit, n_samples: int, shape, coords):
    """("grid", (n_rows, n_cols)) or ("coords", (n_samples, 2) array) for the maps."""
    if shape is not None and coords is not None:
        raise ValueError("give shape= (samples on a grid) or coords= (sample positions), not "
                         "both.")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[0] * shape[1] != n_samples:
            raise ValueError(f"shape must be (n_rows, n_cols) with n_rows × n_cols = the fit's "
                             f"{n_samples} samples, got {shape}.")
        return "grid", shape
    if coords is None:
        coords = getattr(fit.model, "coords", None)
        if coords is None:
            raise ValueError("give shape=(n_rows, n_cols) for samples that are pixels of an "
                             "image, or coords= (n_samples, 2); this fit's model keeps no "
                             "coords.")
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (n_samples, 2) or not np.all(np.isfinite(coords)):
        raise ValueError(f"coords must be a finite ({n_samples}, 2) array of sample positions, "
                         f"got shape {coords.shape}.")
    return "coords", coords


def plot_abundance_maps(fit, shape=None, prob: float | None = 0.9, components=None, *,
                        coords=None, order: str = "C", scale=None, normalize: bool = True,
                        names=None, point_size: float = 12.0):
    """Maps of each component's abundance over samples that are pixels or spots: per
    component (one row each) the posterior mean abundance (left) and the width of its
    ``prob`` credible interval (right; omitted for a MAP fit or ``prob=None``).

    Abundances are :func:`abundance_draws` (by default each sample's shares of the
    components, summing to 1), summarized over draws: mean, and upper minus lower
    equal-tailed ``prob`` quantile.

    Parameters
    ----------
    fit : Fit
        Samples (columns of X) are the pixels or spots.
    shape : (n_rows, n_cols), optional
        The image's shape, for samples that are its pixels numbered in ``order`` ("C":
        row-major, "F": column-major as MATLAB stores images).
    coords : array of shape (n_samples, 2), optional
        Sample positions, drawn as a scatter; default ``fit.model.coords`` (a
        ``model="spatial"`` fit given ``coords=``) when ``shape`` is not given.
    components : list of int, optional
    scale, normalize
        As for :func:`abundance_draws`.
    names : list of str, optional
        A name per drawn component (e.g. the matched material), for the row labels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_prob(prob)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' (row-major) or 'F' (column-major), got {order!r}.")
    draws = abundance_draws(fit, scale, normalize)           # (draws, rank, n_samples)
    rank, n_samples = draws.shape[1:]
    layout, where = _sample_layout(fit, n_samples, shape, coords)
    components = list(range(rank) if components is None else components)
    bad = [k for k in components if not (isinstance(k, (int, np.integer)) and 0 <= k < rank)]
    if bad or not components:
        raise ValueError(f"components must be integers in 0..{rank - 1}, got {bad or components}.")
    if names is not None and len(names) != len(components):
        raise ValueError(f"names must give one name per drawn component ({len(components)}), "
                         f"got {len(names)}.")
    mean = draws.mean(axis=0)
    width = None
    if prob is not None and draws.shape[0] > 1:
        lower, upper = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        width = upper - lower
    panels = [("posterior mean" if draws.shape[0] > 1 else "point estimate", mean, "viridis")]
    if width is not None:
        panels.append((f"{round(100 * prob)}% interval width", width, "magma_r"))
    if layout == "grid":
        aspect = where[1] / where[0]
    else:
        span = np.ptp(where, axis=0)
        aspect = span[0] / span[1] if span[1] > 0 else 1.0
    fig, axes = plt.subplots(len(components), len(panels), squeeze=False,
                             figsize=(3.2 * len(panels) * min(max(aspect, 0.5), 2.0) + 1.0,
                                      2.9 * len(components)), constrained_layout=True)
    top = 1.0 if normalize else float(mean[components].max())
    for row, k in enumerate(components):
        label = f"component {k}" + (f": {names[row]}" if names is not None else "")
        for column, (title, value, cmap) in enumerate(panels):
            ax = axes[row, column]
            vmax = top if column == 0 else max(float(width[components].max()), 1e-12)
            if layout == "grid":
                image = ax.imshow(value[k].reshape(where, order=order), cmap=cmap, vmin=0,
                                  vmax=vmax, interpolation="nearest")
            else:
                image = ax.scatter(where[:, 0], where[:, 1], c=value[k], cmap=cmap, vmin=0,
                                   vmax=vmax, s=point_size, marker="s", linewidths=0)
                ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}, {title}" if column == 0 else title, fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8)
    what = "shares (summing to 1 per sample)" if normalize else "activities"
    fig.suptitle(f"{fit.model.name} model ({fit.method}): abundance {what}, {n_samples} samples")
    return fig
