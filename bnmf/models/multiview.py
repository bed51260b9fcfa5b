r"""Joint multi-view NMF: several data types measured on the same samples, one shared H.

Views ``v = 1..V`` (e.g. RNA counts, ATAC counts, protein levels) share the sample axis and
the activities H; each has its own parts W⁽ᵛ⁾, its own likelihood and that likelihood's own
scale (NB dispersion φ⁽ᵛ⁾, Gaussian noise σ⁽ᵛ⁾):

.. math::

    H_{kj} \sim \mathrm{Gamma}(a_H, a_H), \qquad
    W^{(v)}_{ik} \sim p_v(W), \qquad
    X^{(v)}_{ij} \sim \mathrm{Lik}_v\big((W^{(v)} H)_{ij}, \theta_v\big)

with ``Lik_v`` Poisson, negative binomial or Gaussian (the likelihood of the view's own
single-view model, :class:`~bnmf.models.PoissonGamma`, :class:`~bnmf.models.NegativeBinomial`
or :class:`~bnmf.models.GaussianHalfNormal`, whose W prior and scale priors the view takes).
H has prior mean 1, so each W⁽ᵛ⁾ carries its view's units; left unset, the view's W prior has
mean :math:`\bar X^{(v)} / K` (empirical Bayes, so :math:`E[(W^{(v)}H)_{ij}] = \bar X^{(v)}`).

Sites (bnmf layout): ``H`` (component, observation), ``W_<view>`` (feature_<view>,
component), and each view's scale ``phi_<view>`` / ``sigma_<view>``. The NumPyro program has
one plate per axis name: ``observation`` (shared; every view's likelihood sits in it) and
``feature_<view>`` per view.

Capabilities registered here (:mod:`bnmf.models.base`):

* ``"map_update"``: majorize–minimize updates. Each view's negative log-likelihood is
  majorized entrywise in the factor being updated, as its single-view MM does (Jensen for
  x log μ, a tangent for NB's (x + φ) log(φ + μ), Lee–Seung's quadratic bound for the
  Gaussian), giving per-entry terms ``L f + Q f²/2 − P log f``; the shared H's majorizer is
  the *sum* of the views' terms plus its prior's, and its exact minimizer is the positive root
  of ``Q f² + L f − P = 0``. Each update lowers the negative log joint; the scales move by
  their exact mode (σ) or a safeguarded Newton step (φ), both monotone. The factor updates
  are over-relaxed as the Poisson MAP's (ω = 1.7), with the driver's fallback to the
  monotone ω = 1 where a chunk's objective rose.
(``"posterior_start"``, the MAP that SVI and NUTS start from, is registered by
:mod:`bnmf.inference.multiview`, which holds the inference code it needs.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax

from .base import H_SITE, MapUpdate, Site, observed_mean, register_capability, sample_H
from .gaussian import GaussianHalfNormal, _noise_mode, half_normal_scale_for_mean
from .negbin import (
    PHI_DIMS,
    NegativeBinomial,
    broadcast_dispersion,
    gamma_log_density,
    negbin_mean,
    negbin_update_dispersion,
)
from .poisson import RELAXATION, PoissonGamma, relaxed_update

__all__ = ["VIEW_MODELS", "MultiView", "check_view_name", "multiview_neg_log_joint"]

# Entries of a factor are kept at least this fraction of their prior mean: a multiplicative
# update cannot move an exact zero, and the Gaussian bound divides by the current value.
_FLOOR = 1e-10
_VIEW_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def check_view_name(name) -> str:
    """A view name is a non-empty string of letters, digits and underscores (it names the
    sites ``W_<view>`` and the dims ``feature_<view>``)."""
    if not isinstance(name, str) or not _VIEW_NAME.match(name):
        raise ValueError(f"view names must be non-empty strings of letters, digits and '_' "
                         f"(they name the sites W_<view>), got {name!r}.")
    return name


# ------------------------------------------------------------------ per-likelihood pieces
class ViewFamily(NamedTuple):
    """What the multi-view model needs of one single-view model family.

    * ``w_prior(sub) -> dist``: the prior of one entry of W;
    * ``w_prior_mean(sub) -> float``; ``resolve_w(sub, mean) -> sub`` with W's prior mean set;
    * ``extras(sub, view) -> ((site name, dims), ...)``: the view's scale sites;
    * ``sample_extras(sub, view, n_features, n_samples) -> {own name: value}`` (NumPyro);
    * ``likelihood_T(sub, W, H_T, extras) -> dist`` with batch shape (n_samples, n_features);
    * ``terms(sub, X, Mf, W, H, extras) -> ((L, Q, P) of W, (L, Q, P) of H)``: the per-entry
      coefficients of the view's majorizer ``L f + Q f²/2 − P log f`` in each factor;
    * ``w_prior_terms(sub, W) -> (L, Q, P)``: the same for −log p(W);
    * ``update_step(sub, X, M, W, H, extras) -> extras``: the scale's monotone update within
      an MM update (σ's exact mode), ``update_chunk`` the same once per chunk (φ's Newton
      step, whose special functions cost several factor updates);
    * ``prior_loss(sub, W, extras) -> float``: −log p(W) − log p(scales) in the MAP's space.
    """

    w_prior: Callable
    w_prior_mean: Callable
    resolve_w: Callable
    extras: Callable
    sample_extras: Callable
    likelihood_T: Callable
    terms: Callable
    w_prior_terms: Callable
    update_step: Callable
    update_chunk: Callable
    prior_loss: Callable


def _ratio_terms(X, Mf, W, H, weight):
    """Majorizer terms of a Poisson-type likelihood (−x log μ by Jensen, plus a term linear in
    μ with per-entry ``weight``): ((L, 0, P) of W, (L, 0, P) of H)."""
    ratio = Mf * X / negbin_mean(W, H)
    zero_W, zero_H = jnp.zeros_like(W), jnp.zeros_like(H)
    return ((weight @ H.T, zero_W, W * (ratio @ H.T)),
            (W.T @ weight, zero_H, H * (W.T @ ratio)))


def _gamma_w_terms(sub, W):
    power = jnp.where(sub.a < 1.0, sub.a, sub.a - 1.0)  # mode over log W below shape 1
    return (jnp.full_like(W, sub.rate_W), jnp.zeros_like(W), jnp.full_like(W, power))


def _gamma_w_loss(sub, W):
    return -gamma_log_density(W, sub.a, sub.rate_W, sub.a < 1.0)


def _no_update(sub, X, M, W, H, extras):
    return extras


def _poisson_family() -> ViewFamily:
    return ViewFamily(
        w_prior=lambda sub: dist.Gamma(sub.a, sub.rate_W),
        w_prior_mean=lambda sub: sub.a / sub.rate_W,
        resolve_w=lambda sub, mean: dataclasses.replace(sub, rate_W=sub.a / mean),
        extras=lambda sub, view: (),
        sample_extras=lambda sub, view, n_features, n_samples: {},
        likelihood_T=lambda sub, W, H_T, extras: dist.Poisson(negbin_mean(W, H_T.T).T),
        terms=lambda sub, X, Mf, W, H, extras: _ratio_terms(X, Mf, W, H, Mf),
        w_prior_terms=_gamma_w_terms,
        update_step=_no_update, update_chunk=_no_update,
        prior_loss=lambda sub, W, extras: _gamma_w_loss(sub, W),
    )


def _phi_dims(sub, view):
    return tuple(f"feature_{view}" if d == "feature" else d for d in PHI_DIMS[sub.dispersion])


def _negbin_sample_phi(sub, view, n_features, n_samples):
    prior = dist.Gamma(sub.phi_shape, sub.phi_rate)
    if sub.dispersion == "shared":
        return {"phi": numpyro.sample(f"phi_{view}", prior)}
    plate, size = ((f"feature_{view}", n_features) if sub.dispersion == "feature"
                   else ("observation", n_samples))
    with numpyro.plate(plate, size, dim=-1):
        return {"phi": numpyro.sample(f"phi_{view}", prior)}


def _negbin_likelihood_T(sub, W, H_T, extras):
    phi = broadcast_dispersion(extras["phi"], sub.dispersion)
    phi_T = phi if sub.dispersion == "shared" else phi.T
    return dist.NegativeBinomial2(negbin_mean(W, H_T.T).T, phi_T)


def _negbin_terms(sub, X, Mf, W, H, extras):
    phi = broadcast_dispersion(extras["phi"], sub.dispersion)
    weight = Mf * (X + phi) / (phi + negbin_mean(W, H))
    return _ratio_terms(X, Mf, W, H, weight)


def _negbin_update_chunk(sub, X, M, W, H, extras):
    return {"phi": negbin_update_dispersion(W, H, extras["phi"], X, M, sub)[0]}


def _negbin_prior_loss(sub, W, extras):
    # φ's mode is taken over log φ (as model="negbin" does): its density gains the Jacobian φ
    return _gamma_w_loss(sub, W) - gamma_log_density(extras["phi"], sub.phi_shape,
                                                     sub.phi_rate, True)


def _negbin_family() -> ViewFamily:
    return _poisson_family()._replace(
        extras=lambda sub, view: ((f"phi_{view}", _phi_dims(sub, view)),),
        sample_extras=_negbin_sample_phi,
        likelihood_T=_negbin_likelihood_T,
        terms=_negbin_terms,
        update_chunk=_negbin_update_chunk,
        prior_loss=_negbin_prior_loss,
    )


def _half_normal_log_density(x, scale):
    return jnp.sum(dist.HalfNormal(scale).log_prob(x))


def _gaussian_terms(sub, X, Mf, W, H, extras):
    """Lee–Seung's bound of ½ Σ M (X − WH)² / σ²: Q = (M ∘ WH) Hᵀ / (W σ²) for W, and
    L = −(M ∘ X) Hᵀ / σ² (the same transposed for H)."""
    var = extras["sigma"] ** 2
    fitted, data = Mf * (W @ H), Mf * X
    tiny = jnp.finfo(W.dtype).tiny
    return ((-(data @ H.T) / var, (fitted @ H.T) / (jnp.maximum(W, tiny) * var), jnp.zeros_like(W)),
            (-(W.T @ data) / var, (W.T @ fitted) / (jnp.maximum(H, tiny) * var), jnp.zeros_like(H)))


def _gaussian_update_step(sub, X, M, W, H, extras):
    rss = jnp.sum(jnp.where(M, X - W @ H, 0.0) ** 2)
    n_observed = jnp.sum(M).astype(X.dtype)
    sigma = _noise_mode(rss, n_observed, sub.scale_sigma)
    return {"sigma": jnp.maximum(sigma, jnp.finfo(X.dtype).tiny)}


def _gaussian_family() -> ViewFamily:
    return ViewFamily(
        w_prior=lambda sub: dist.HalfNormal(sub.scale_W),
        w_prior_mean=lambda sub: sub.scale_W * np.sqrt(2.0 / np.pi),
        resolve_w=lambda sub, mean: dataclasses.replace(
            sub, scale_W=half_normal_scale_for_mean(mean)),
        extras=lambda sub, view: ((f"sigma_{view}", ()),),
        sample_extras=lambda sub, view, n_features, n_samples: {
            "sigma": numpyro.sample(f"sigma_{view}", dist.HalfNormal(sub.scale_sigma))},
        likelihood_T=lambda sub, W, H_T, extras: dist.Normal((W @ H_T.T).T, extras["sigma"]),
        terms=_gaussian_terms,
        w_prior_terms=lambda sub, W: (jnp.zeros_like(W), jnp.full_like(W, 1.0 / sub.scale_W**2),
                                      jnp.zeros_like(W)),
        update_step=_gaussian_update_step, update_chunk=_no_update,
        prior_loss=lambda sub, W, extras: -(_half_normal_log_density(W, sub.scale_W)
                                            + _half_normal_log_density(extras["sigma"],
                                                                       sub.scale_sigma)),
    )


# The single-view families a view may use (class -> its pieces) and their fields that set the
# prior of H, which the shared H's own prior replaces.
VIEW_MODELS = {PoissonGamma: _poisson_family(), NegativeBinomial: _negbin_family(),
               GaussianHalfNormal: _gaussian_family()}
_H_FIELDS = ("rate_H", "scale_H")


def view_family(sub) -> ViewFamily:
    """The :class:`ViewFamily` of a view's single-view model, or a ValueError naming the
    supported ones."""
    family = VIEW_MODELS.get(type(sub))
    if family is None:
        names = sorted(cls.name for cls in VIEW_MODELS)
        raise ValueError(f"a view's model must be one of {names} (or such a model object), "
                         f"got {getattr(sub, 'name', type(sub).__name__)!r}.")
    return family


def _extra_name(site_name: str) -> str:
    return site_name.split("_", 1)[0]  # "phi_atac" -> "phi"


# ------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class MultiView:
    r"""Joint multi-view NMF with a shared H (see the module docstring for the model).

    Parameters
    ----------
    views : tuple of (name, model)
        One single-view model per view (``PoissonGamma``, ``NegativeBinomial`` or
        ``GaussianHalfNormal``): its likelihood, its W prior and its scale's prior. Their H
        hyperparameters (``rate_H``, ``scale_H``) must be left unset: H's prior is this
        model's.
    h_shape : float
        Shape and rate of H's gamma prior (mean 1; 1 = exponential, larger = activities
        nearer 1). The MAP of H is taken over log H below shape 1.
    """

    views: tuple
    h_shape: float = 1.0

    name = "multiview"
    needs_counts = False
    nuts_calibrated = False  # NUTS coverage not measured for this model

    def __post_init__(self):
        if not isinstance(self.views, tuple) or not self.views:
            raise ValueError("MultiView.views must be a non-empty tuple of (name, model).")
        names = [check_view_name(name) for name, _ in self.views]
        if len(set(names)) != len(names):
            raise ValueError(f"view names repeat: {names}.")
        for name, sub in self.views:
            view_family(sub)
            for field in _H_FIELDS:
                if getattr(sub, field, None) is not None:
                    raise ValueError(
                        f"view {name!r}: {type(sub).__name__}.{field} is set, but in a "
                        "multi-view fit H is shared and has the multi-view prior "
                        "Gamma(h_shape, h_shape); leave it unset (set h_shape= instead).")
        if not self.h_shape > 0:
            raise ValueError(f"MultiView.h_shape must be positive, got {self.h_shape!r}.")

    @property
    def view_names(self) -> tuple:
        return tuple(name for name, _ in self.views)

    def view(self, name: str):
        return dict(self.views)[name]

    def sites(self, rank=None) -> tuple:
        """H, then per view ``W_<view>`` and its scale sites."""
        sites = [H_SITE]
        for name, sub in self.views:
            sites.append(Site(f"W_{name}", (f"feature_{name}", "component")))
            sites += [Site(site, dims) for site, dims in view_family(sub).extras(sub, name)]
        return tuple(sites)

    def resolve(self, data: dict, rank: int) -> MultiView:
        """Each view's model resolved on its own data (its scale priors as in its single-view
        fit), with W's prior mean set to that view's observed mean / rank (H has mean 1)."""
        views = []
        for name, sub in self.views:
            family = view_family(sub)
            resolved = sub.resolve(data[name], rank)
            mean = observed_mean(data[name]) / rank
            keep = {f: getattr(sub, f) for f in ("rate_W", "scale_W") if hasattr(sub, f)}
            resolved = family.resolve_w(resolved, mean)
            if any(v is not None for v in keep.values()):  # the user's own W prior
                resolved = dataclasses.replace(
                    resolved, **{f: v for f, v in keep.items() if v is not None})
            resolved = dataclasses.replace(resolved, **{f: None for f in _H_FIELDS
                                                        if hasattr(resolved, f)})
            views.append((name, resolved))
        return dataclasses.replace(self, views=tuple(views))

    def numpyro_model(self, X: dict, mask: dict, rank: int, W=None):
        """NumPyro program of the views ``X`` ({view: (n_features_v, n_samples)}) and their
        bool masks; a fixed W is not supported (``W`` must be None)."""
        if W is not None:
            raise ValueError("the multi-view model has no fixed-W mode.")
        n_samples = X[self.views[0][0]].shape[1]
        H_T = sample_H(dist.Gamma(self.h_shape, self.h_shape), n_samples, rank)
        for name, sub in self.views:
            family = view_family(sub)
            n_features = X[name].shape[0]
            with numpyro.plate(f"feature_{name}", n_features, dim=-1):
                W_v = numpyro.sample(f"W_{name}",
                                     family.w_prior(sub).expand([n_features, rank]).to_event(1),
                                     infer={"event_dims": ["component"]})
            extras = family.sample_extras(sub, name, n_features, n_samples)
            with numpyro.plate("observation", n_samples, dim=-1):
                numpyro.sample(f"X_{name}", family.likelihood_T(sub, W_v, H_T, extras)
                               .mask(mask[name].T).to_event(1), obs=X[name].T)

    def view_extras(self, name: str, values: dict) -> dict:
        """The view's scale sites of ``values`` under their single-view names (``phi``)."""
        sub = self.view(name)
        return {_extra_name(site): values[site]
                for site, _ in view_family(sub).extras(sub, name)}

    def log_likelihood(self, X: dict, values: dict) -> dict:
        """{view: per-entry log p(X_v | W_v, H, scales)} (n_features_v, n_samples)."""
        return {name: sub.log_likelihood(X[name], values[f"W_{name}"], values["H"],
                                         self.view_extras(name, values))
                for name, sub in self.views}


def _flatten(model: MultiView):
    return (model.h_shape, tuple(sub for _, sub in model.views)), model.view_names


def _unflatten(names, children):
    h_shape, subs = children
    model = object.__new__(MultiView)  # no __init__: its checks cannot compare traced values
    object.__setattr__(model, "views", tuple(zip(names, subs)))
    object.__setattr__(model, "h_shape", h_shape)
    return model


jax.tree_util.register_pytree_node(MultiView, _flatten, _unflatten)


# ----------------------------------------------------------------- the MAP objective
def _h_log_space(model):
    return model.h_shape < 1.0


def multiview_neg_log_joint(values: dict, X: dict, M: dict, model: MultiView):
    """The MAP objective: −log p(X, H, W's, scales) over the observed entries, in the space
    the MAP takes its mode in (W and H constrained, or over their logs below gamma shape 1;
    NB's φ over log φ). ``values`` in bnmf's layout (H as (rank, n_samples))."""
    H = values["H"]
    loss = -gamma_log_density(H, model.h_shape, model.h_shape, _h_log_space(model))
    for name, sub in model.views:
        family = view_family(sub)
        W = values[f"W_{name}"]
        extras = model.view_extras(name, values)
        ll = sub.log_likelihood(X[name], W, H, extras)
        loss = loss - jnp.sum(jnp.where(M[name], ll, 0.0)) + family.prior_loss(sub, W, extras)
    return loss


def _solve(L, Q, P, floor):
    """argmin over f ≥ ``floor`` of L f + Q f²/2 − P log f (Q, P ≥ 0): the positive root of
    Q f² + L f − P = 0, in the form that cancels nothing."""
    disc = jnp.sqrt(L * L + 4.0 * Q * P)
    safe_Q = jnp.where(Q > 0, Q, 1.0)
    root = jnp.where(L > 0, 2.0 * P / jnp.where(L > 0, L + disc, 1.0),
                     jnp.where(Q > 0, (disc - L) / (2.0 * safe_Q), jnp.inf))
    return jnp.maximum(root, floor)


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b))


def mm_update(values: dict, X: dict, M: dict, model: MultiView, relaxation=1.0) -> dict:
    """One MM update: each view's W (then its per-update scale), then the shared H from the
    sum of every view's majorizer and its prior. With ``relaxation`` ω = 1 (the default) it
    never raises :func:`multiview_neg_log_joint`; ω ≠ 1 over-relaxes each factor,
    A ← A (A_mm / A)^ω (:func:`~bnmf.models.poisson.relaxed_update`), faster but not monotone
    by construction (the driver falls back to ω = 1 where a chunk's objective rose)."""
    values = dict(values)
    H = values["H"]
    h_power = jnp.where(_h_log_space(model), model.h_shape, model.h_shape - 1.0)
    H_terms = (jnp.full_like(H, model.h_shape), jnp.zeros_like(H), jnp.full_like(H, h_power))
    for name, sub in model.views:
        family = view_family(sub)
        Mf = M[name].astype(X[name].dtype)
        W = values[f"W_{name}"]
        extras = model.view_extras(name, values)
        w_terms, _ = family.terms(sub, X[name], Mf, W, H, extras)
        floor = _FLOOR * family.w_prior_mean(sub)
        W_mm = _solve(*_add(w_terms, family.w_prior_terms(sub, W)), floor)
        W = jnp.maximum(relaxed_update(W, W_mm, relaxation), floor)
        extras = family.update_step(sub, X[name], M[name], W, H, extras)
        _, h_terms = family.terms(sub, X[name], Mf, W, H, extras)
        H_terms = _add(H_terms, h_terms)
        values[f"W_{name}"] = W
        values.update({f"{k}_{name}": v for k, v in extras.items()})
    values["H"] = jnp.maximum(relaxed_update(H, _solve(*H_terms, _FLOOR), relaxation), _FLOOR)
    return values


def chunk_update(values: dict, X: dict, M: dict, model: MultiView) -> dict:
    """The once-per-chunk scale updates (NB's φ)."""
    values = dict(values)
    for name, sub in model.views:
        extras = view_family(sub).update_chunk(sub, X[name], M[name], values[f"W_{name}"],
                                               values["H"], model.view_extras(name, values))
        values.update({f"{k}_{name}": v for k, v in extras.items()})
    return values


# ------------------------------------------------------------------ capability: map_update
class MultiViewData(NamedTuple):
    """The data side of the MM updates: {view: X} and {view: bool mask}."""

    X: dict
    M: dict


class MultiViewState(NamedTuple):
    """The MM iterate (every site, bnmf layout), its objective and the over-relaxation ω of
    the factor updates (the driver sets it to 1, the monotone plain MM, where a chunk's
    objective rose)."""

    values: dict
    loss: jax.Array
    relaxation: jax.Array


def initial_values(W: dict, H, data: MultiViewData, model: MultiView) -> dict:
    """Every site from starting factors: each view's scale from its model's ``init_extras``."""
    values = {"H": H}
    for name, sub in model.views:
        values[f"W_{name}"] = W[name]
        extras = sub.init_extras(W[name], H, data.X[name], data.M[name])
        values.update({f"{k}_{name}": v for k, v in extras.items()})
    return values


def _map_init(W, H, data: MultiViewData, model) -> MultiViewState:
    return MultiViewState(initial_values(W, H, data, model), jnp.asarray(jnp.inf, H.dtype),
                          jnp.asarray(RELAXATION, H.dtype))


@jax.jit
def _mm_chunk(values, X, M, model, n_steps, relaxation):
    values = lax.fori_loop(0, n_steps, lambda _, v: mm_update(v, X, M, model, relaxation),
                           values)
    values = chunk_update(values, X, M, model)
    return values, multiview_neg_log_joint(values, X, M, model)


def multiview_map_step(state: MultiViewState, data: MultiViewData, model, n_steps,
                       update_W: bool) -> MultiViewState:
    values, loss = _mm_chunk(state.values, data.X, data.M, model, n_steps, state.relaxation)
    return MultiViewState(values, loss, state.relaxation)


def _map_describe(problem) -> dict:
    return {"algorithm": "multiview-mm",
            "mode_space": "constrained factors (log below gamma shape 1), log phi",
            "relaxation": RELAXATION}


register_capability(MultiView, "map_update", MapUpdate(
    prepare=lambda problem: MultiViewData(problem.X, problem.mask),
    prepare_masked=lambda X, mask, model: MultiViewData(X, mask),
    init=_map_init, step=multiview_map_step, values=lambda state: state.values,
    describe=_map_describe))
