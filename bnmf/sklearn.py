"""A scikit-learn-style estimator around :func:`bnmf.fit`.

scikit-learn's NMF takes ``X`` as samples × features and calls the activities ``W`` and the
parts ``components_``; bnmf takes features × samples. :class:`BayesianNMF` speaks
scikit-learn's layout: it transposes on the way in and out, so it drops into a scikit-learn
pipeline in place of ``sklearn.decomposition.NMF``. scikit-learn itself is not needed.
"""

from __future__ import annotations

import inspect

import numpy as np

from .data import check_rank, prepare
from .fitting import _split_options, fit_data
from .models import get_model
from .models.base import balanced_mean

__all__ = ["BayesianNMF"]


try:  # scikit-learn's base classes give tags and pipeline support; bnmf does not require it
    from sklearn.base import BaseEstimator, TransformerMixin

    _BASES: tuple = (TransformerMixin, BaseEstimator)
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    _BASES = ()


class BayesianNMF(*_BASES):
    """Bayesian NMF with scikit-learn's interface: ``X`` is (n_samples, n_features).

    Parameters
    ----------
    n_components : int
        The rank.
    model : str or model object
        As in :func:`bnmf.fit` (``"poisson"``, ``"gaussian"``, ``"horseshoe"``).
    method : {"map", "svi", "nuts", "cavi"}, optional
        As in :func:`bnmf.fit`; None is bnmf's default (:func:`bnmf.fitting.default_method`).
    seed : int
        Same seed, same result.
    dtype : {"float32", "float64"}
    options : dict, optional
        Further keyword options for :func:`bnmf.fit` (hyperparameters, ``max_iter``, ...).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Posterior mean parts, each row summing to 1 (bnmf's ``W.T``).
    fit_ : bnmf.Fit
        The full posterior of the last :meth:`fit`.
    n_features_in_ : int
    n_components_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from bnmf import BayesianNMF
    >>> X = np.random.default_rng(0).poisson(5.0, size=(40, 30))   # samples × features
    >>> est = BayesianNMF(n_components=2, method="map")
    >>> est.fit_transform(X).shape, est.components_.shape
    ((40, 2), (2, 30))
    """

    def __init__(self, n_components: int = 2, model="poisson", method: str | None = None,
                 seed: int = 0, dtype: str = "float32", options: dict | None = None):
        self.n_components = n_components
        self.model = model
        self.method = method
        self.seed = seed
        self.dtype = dtype
        self.options = options

    # ------------------------------------------------------------------ scikit-learn protocol
    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn's ``clone`` and grid search use this)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params) -> BayesianNMF:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for BayesianNMF; valid ones are {sorted(valid)}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != _DEFAULTS[k]}
        return f"BayesianNMF({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ----------------------------------------------------------------------------- fitting
    def _model_and_options(self):
        model_options, inference_options = _split_options(self.model, dict(self.options or {}))
        return get_model(self.model, **model_options), inference_options

    def fit(self, X, y=None) -> BayesianNMF:
        """Fit to ``X`` (n_samples, n_features); ``y`` is ignored."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        """Fit and return the activities, shape (n_samples, n_components)."""
        return np.asarray(self._fit(X).H).T

    def _fit(self, X):
        model, options = self._model_and_options()
        data = prepare(_transpose(X), counts=model.needs_counts)
        rank = check_rank(self.n_components, data.shape)
        self.fit_ = fit_data(data, rank, model, self.method, seed=self.seed, dtype=self.dtype,
                             **options)
        self.components_ = np.asarray(self.fit_.W).T
        self.n_components_ = rank
        self.n_features_in_ = data.shape[0]
        return self.fit_

    def transform(self, X) -> np.ndarray:
        """Posterior mean activities of new samples with the parts kept fixed.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        return np.asarray(self.transform_fit(X).H).T

    def transform_fit(self, X):
        """The full posterior (a :class:`bnmf.Fit`) of the activities of new samples ``X``
        (n_samples, n_features), with the parts fixed at :attr:`components_`."""
        if not hasattr(self, "components_"):
            raise ValueError("this BayesianNMF is not fitted yet; call fit(X) first.")
        model, options = self._model_and_options()
        data = prepare(_transpose(X), counts=model.needs_counts)
        if data.shape[0] != self.n_features_in_:
            raise ValueError(
                f"X has {data.shape[0]} features, but BayesianNMF was fitted with "
                f"{self.n_features_in_}; pass samples × features with the same features."
            )
        # The data-scaled priors expect factors of balanced size (entries of W and H both about
        # sqrt(mean(X) / rank)), as in fit(); parts summing to 1 would make H's prior shrink it.
        # The Fit renormalizes W to sum to 1 per draw, so this scale does not show in the result.
        scale = balanced_mean(data, self.n_components_) * data.shape[0]
        return fit_data(data, self.n_components_, model, self.method, seed=self.seed,
                        dtype=self.dtype, W_fixed=self.components_.T * scale, **options)

    def inverse_transform(self, H) -> np.ndarray:
        """Reconstruction ``H @ components_``, (n_samples, n_features), from activities
        ``H`` (n_samples, n_components)."""
        if not hasattr(self, "components_"):
            raise ValueError("this BayesianNMF is not fitted yet; call fit(X) first.")
        return np.asarray(H) @ self.components_


_DEFAULTS = {name: p.default for name, p in
             inspect.signature(BayesianNMF.__init__).parameters.items() if name != "self"}


def _transpose(X):
    """scikit-learn's (n_samples, n_features) to bnmf's (n_features, n_samples), keeping labels
    and sparsity; AnnData is already cells × genes, which :func:`bnmf.data.prepare` handles."""
    if hasattr(X, "obs_names") and hasattr(X, "var_names"):
        return X
    if hasattr(X, "T"):
        return X.T
    return np.asarray(X).T
