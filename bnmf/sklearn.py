"""A scikit-learn estimator around :func:`bnmf.fit`.

scikit-learn's NMF takes ``X`` as samples × features and calls the activities ``W`` and the
parts ``components_``; bnmf takes features × samples. :class:`BayesianNMF` speaks
scikit-learn's layout: it transposes on the way in and out, so it drops into a scikit-learn
pipeline in place of ``sklearn.decomposition.NMF``. With ``method="map"`` and the ``"poisson"``
or ``"gaussian"`` model it passes every one of scikit-learn's estimator checks
(``sklearn.utils.estimator_checks``; tests/test_sklearn.py). Without scikit-learn installed it
still works, with bnmf's own input validation and without scikit-learn's tags.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from .data import check_rank, prepare
from .fitting import _split_options, fit_data
from .inference.activities import gaussian_activities, map_scales, poisson_activities
from .inference.common import numerics
from .models import get_model
from .models.base import balanced_mean

__all__ = ["BayesianNMF"]


try:  # scikit-learn's base classes give tags and pipeline support; bnmf does not require it
    from sklearn.base import BaseEstimator, TransformerMixin

    _BASES: tuple = (TransformerMixin, BaseEstimator)
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    _BASES = ()

# Models whose activities under a MAP fit transform() computes sample by sample, exactly.
_COLUMNWISE_MODELS = ("poisson", "gaussian")


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
        Arithmetic of :meth:`fit`. :meth:`transform` always computes in float64 (it is cheap
        and this keeps the activities of any subset of samples equal to the same rows of the
        activities of all of them); outputs have the input's floating dtype.
    options : dict, optional
        Further keyword options for :func:`bnmf.fit` (hyperparameters, ``max_iter``, ...).
    require_counts : bool
        For count models (``"poisson"``): True refuses non-integer values, as :func:`bnmf.fit`
        does. False fits them through the continuous extension of the Poisson density
        (x log λ − λ − log Γ(x + 1)), whose MAP minimizes the generalized KL divergence, as
        ``NMF(beta_loss="kullback-leibler")`` does for any non-negative data.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Posterior mean parts, each row summing to 1 (bnmf's ``W.T``).
    fit_ : bnmf.Fit
        The full posterior of the last :meth:`fit`.
    model_ : model object
        The model with the hyperparameters (prior scales) learned at :meth:`fit`;
        :meth:`transform` and :meth:`score` keep them fixed.
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when X had string column names
    n_components_ : int

    Notes
    -----
    Missing values: NaN in ``X`` marks an unobserved entry (``missing="mask"`` of
    :func:`bnmf.fit`) in :meth:`fit`, :meth:`transform` and :meth:`score`; unobserved entries
    never enter the likelihood. ``inf`` is refused.

    With ``method="map"`` and the ``"poisson"`` or ``"gaussian"`` model, :meth:`transform`
    returns each sample's MAP activities given the fitted parts (at the scale the fit gave them),
    the priors learned at fit and, for ``"gaussian"``, the fitted noise scale: the posterior of H
    then factorizes over samples, and each sample is solved on its own
    (:mod:`bnmf.inference.activities`), so ``transform(X[rows])`` equals
    ``transform(X)[rows]`` and ``transform`` of the training data equals :meth:`fit_transform`
    to the fit's convergence. Other methods and models run ``method`` again with the parts
    fixed (:meth:`transform_fit`): the same priors, but Monte Carlo draws (and, for
    ``"gaussian"``, a noise scale) shared by the samples passed together.

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
                 seed: int = 0, dtype: str = "float32", options: dict | None = None,
                 require_counts: bool = True):
        self.n_components = n_components
        self.model = model
        self.method = method
        self.seed = seed
        self.dtype = dtype
        self.options = options
        self.require_counts = require_counts

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

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        changed = {k: v for k, v in self.get_params().items() if v is not _DEFAULTS[k]
                   and not (isinstance(v, (str, int, float)) and v == _DEFAULTS[k])}
        return f"BayesianNMF({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def __sklearn_tags__(self):
        """scikit-learn ≥ 1.6 tags: non-negative, sparse and NaN (= missing) input; float32 and
        float64 outputs for inputs of that dtype."""
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self) -> dict:  # scikit-learn < 1.6
        return {"requires_positive_X": True, "allow_nan": True,
                "preserves_dtype": [np.float64, np.float32]}

    # --------------------------------------------------------------------------- validation
    def _model_and_options(self):
        model_options, inference_options = _split_options(self.model, dict(self.options or {}))
        return get_model(self.model, **model_options), inference_options

    def _data(self, X, model, *, reset: bool, where: str):
        """Validate X (n_samples, n_features) as scikit-learn does (its error messages, its
        ``n_features_in_`` bookkeeping) and as bnmf does; return (bnmf Data, output dtype)."""
        X_checked = _check_array(self, X, reset=reset)
        if X_checked is not X and not hasattr(X, "columns"):
            X = X_checked  # keep a DataFrame's labels for the Fit; everything else as checked
        _check_non_negative(X_checked, where)
        counts = model.needs_counts and self.require_counts
        # new samples may be all zero, a feature may be unobserved in all of them
        data = prepare(_transpose(X), missing="mask", counts=counts, scoring=not reset)
        if not reset and data.shape[0] != self.n_features_in_:
            raise ValueError(
                f"X has {data.shape[0]} features, but BayesianNMF is expecting "
                f"{self.n_features_in_} features as input."
            )
        dtype = getattr(X_checked, "dtype", np.dtype(np.float64))
        return data, (dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64))

    # ----------------------------------------------------------------------------- fitting
    def fit(self, X, y=None) -> BayesianNMF:
        """Fit to ``X`` (n_samples, n_features); ``y`` is ignored."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        """Fit and return the activities, shape (n_samples, n_components)."""
        fit, dtype = self._fit(X)
        return np.asarray(fit.H, dtype=dtype).T

    def _fit(self, X):
        model, options = self._model_and_options()
        data, dtype = self._data(X, model, reset=True, where="BayesianNMF.fit")
        rank = check_rank(self.n_components, data.shape)
        self.fit_ = fit_data(data, rank, model, self.method, seed=self.seed, dtype=self.dtype,
                             **options)
        self.model_ = self.fit_.model
        W = np.asarray(self.fit_.W, dtype=np.float64)
        self.components_ = W.T.astype(dtype)
        self.n_components_ = rank
        self.n_features_in_ = data.shape[0]
        if self._columnwise():
            H = np.asarray(self.fit_.H, dtype=np.float64)
            log_space = self.fit_.info.get("mode_space") == "log"
            self._log_space = log_space
            self._W_raw = W * map_scales(self.model_, W, H, log_space)
            if self.model_.name == "gaussian":
                self._sigma = float(np.asarray(self.fit_._draws("sigma")).mean())
        return self.fit_, dtype

    def _columnwise(self) -> bool:
        return self.fit_.method == "map" and self.model_.name in _COLUMNWISE_MODELS

    def _check_fitted(self):
        if not hasattr(self, "components_"):
            error = _not_fitted_error()
            raise error(f"this {type(self).__name__} instance is not fitted yet; call fit(X) "
                        "first.")

    def transform(self, X) -> np.ndarray:
        """Posterior mean activities of new samples with the parts and priors fixed (the MAP
        activities for ``method="map"``; see Notes of :class:`BayesianNMF`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        self._check_fitted()
        model = self.model_
        data, dtype = self._data(X, model, reset=False, where="BayesianNMF.transform")
        if not self._columnwise():
            return np.asarray(self._transform_fit(data).H, dtype=dtype).T
        H, _ = self._activities(data)
        return H.T.astype(dtype)

    def _activities(self, data):
        """Normalized MAP activities (rank, n) of ``data`` and the raw ones, in float64."""
        model = self.model_
        # Padded to power-of-two shapes with unobserved entries (and zero rows of W), which
        # change no sample's result, so calls on other shapes reuse one compiled program.
        n_features, n_samples = data.shape
        shape = (_bucket(n_features), _bucket(n_samples))
        X = np.zeros(shape)
        X[:n_features, :n_samples] = np.where(data.mask, data.values, 0.0)
        mask = np.zeros(shape, bool)
        mask[:n_features, :n_samples] = data.mask
        W = np.zeros((shape[0], self.n_components_))
        W[:n_features] = self._W_raw
        with numerics("float64"):
            if model.name == "poisson":
                H_raw, _ = poisson_activities(X, mask, W, model.a, model.rate_H,
                                              log_space=self._log_space)
            else:
                H_raw, _ = gaussian_activities(X, mask, W, self._sigma, model.scale_H)
            H_raw = np.asarray(H_raw, np.float64)[:, :n_samples]
        scale = self._W_raw.sum(axis=0)  # the normalized parts are W_raw / scale
        return H_raw * scale[:, None], H_raw

    def transform_fit(self, X):
        """The full posterior (a :class:`bnmf.Fit`) of the activities of new samples ``X``
        (n_samples, n_features), with the parts fixed at :attr:`components_` and the priors at
        those learned by :meth:`fit`, by the method that fitted them."""
        self._check_fitted()
        data, _ = self._data(X, self.model_, reset=False, where="BayesianNMF.transform_fit")
        return self._transform_fit(data)

    def _transform_fit(self, data):
        _, options = self._model_and_options()
        if self._columnwise():
            W = self._W_raw
        else:
            # Parts of balanced size (entries of W and H both about sqrt(mean(X) / rank)), as in
            # fit(); parts summing to 1 would make H's prior shrink it. The Fit renormalizes W
            # to sum to 1 per draw, so this scale does not show in the result.
            W = self.components_.T * balanced_mean(data, self.n_components_) * data.shape[0]
        return fit_data(data, self.n_components_, self.model_, self.fit_.method, seed=self.seed,
                        dtype=self.dtype, W_fixed=np.asarray(W, np.float64), **options)

    def score(self, X, y=None) -> float:
        """Mean held-out log predictive density per observed entry of ``X`` (n_samples,
        n_features); higher is better, and it is what
        :class:`~sklearn.model_selection.GridSearchCV` maximizes by default (e.g. over
        ``n_components``).

        A sample's activities are unknown, so each sample is scored on entries its activities
        were not fitted to: the features are split into two fixed random halves; activities
        fitted (with the parts and priors of :meth:`fit`, as in :meth:`transform`) to one half
        score the other half's entries by ``log p(x_ij | W, h_j)``, and the other way round. (A
        density of the entries the activities were fitted to would grow with every added
        component.) For posterior methods the density is the log of its mean over draws
        (:meth:`bnmf.Fit.log_likelihood`). NaN entries are left out."""
        self._check_fitted()
        data, _ = self._data(X, self.model_, reset=False, where="BayesianNMF.score")
        first = _feature_halves(data.shape[0])
        total = 0.0
        for fitted_half in (first, ~first):
            fit_on = dataclasses.replace(data, values=np.where(data.mask, data.values, 0.0),
                                         mask=data.mask & fitted_half[:, None])
            scored = data.mask & ~fitted_half[:, None]
            total += self._log_density(fit_on, data.values, scored)
        return total / max(int(data.mask.sum()), 1)

    def _log_density(self, fit_on, X, scored) -> float:
        """Σ over ``scored`` entries of log p(X_ij | parts, activities fitted to ``fit_on``)."""
        X = np.where(scored, X, 0.0)
        if not self._columnwise():
            lpd = self._transform_fit(fit_on).log_likelihood(X, mask=scored)
            return float(lpd[scored].sum())
        _, H_raw = self._activities(fit_on)
        extras = {"sigma": self._sigma} if self.model_.name == "gaussian" else None
        with numerics("float64"):
            ll = np.asarray(self.model_.log_likelihood(np.asarray(X, np.float64), self._W_raw,
                                                       H_raw, extras))
        return float(ll[scored].sum())

    def inverse_transform(self, H) -> np.ndarray:
        """Reconstruction ``H @ components_``, (n_samples, n_features), from activities
        ``H`` (n_samples, n_components)."""
        self._check_fitted()
        H = np.asarray(H)
        if H.ndim != 2 or H.shape[1] != self.n_components_:
            raise ValueError(f"H must have shape (n_samples, {self.n_components_}), got "
                             f"{H.shape}.")
        return H @ self.components_


_DEFAULTS = {name: p.default for name, p in
             inspect.signature(BayesianNMF.__init__).parameters.items() if name != "self"}


def _feature_halves(n_features: int) -> np.ndarray:
    """A fixed random half of ``n_features`` features (bool, (n_features,)): the same split
    for every call, independent of the samples."""
    order = np.random.default_rng(0).permutation(n_features)
    return order % 2 == 0


def _bucket(n: int) -> int:
    """The power of two at or above ``n`` (at least 8)."""
    return max(8, 1 << (int(n) - 1).bit_length())


def _not_fitted_error():
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # pragma: no cover
        return ValueError
    return NotFittedError


def _check_array(estimator, X, *, reset: bool):
    """scikit-learn's ``validate_data`` (≥ 1.6; ``_validate_data`` before) on X, accepting
    sparse input and NaN; AnnData and, without scikit-learn, everything go to bnmf's own
    validation in :func:`bnmf.data.prepare`."""
    if hasattr(X, "obs_names") and hasattr(X, "var_names"):
        if reset:
            estimator.n_features_in_ = X.n_vars
        return X
    try:
        from sklearn.utils import validation
    except ImportError:  # pragma: no cover
        return X
    kwargs = {"reset": reset, "accept_sparse": ("csr", "csc", "coo"),
              "dtype": (np.float64, np.float32)}
    if hasattr(validation, "validate_data"):
        return validation.validate_data(estimator, X, ensure_all_finite="allow-nan", **kwargs)
    return estimator._validate_data(X, force_all_finite="allow-nan", **kwargs)  # pragma: no cover


def _check_non_negative(X, where: str) -> None:
    """scikit-learn's message for negative values (NaN allowed: it marks missing entries)."""
    try:
        from sklearn.utils.validation import check_non_negative
    except ImportError:  # pragma: no cover
        return
    if hasattr(X, "dtype") and np.issubdtype(X.dtype, np.number):
        check_non_negative(X, where)


def _transpose(X):
    """scikit-learn's (n_samples, n_features) to bnmf's (n_features, n_samples), keeping labels
    and sparsity; AnnData is already cells × genes, which :func:`bnmf.data.prepare` handles."""
    if hasattr(X, "obs_names") and hasattr(X, "var_names"):
        return X
    if hasattr(X, "T"):
        return X.T
    return np.asarray(X).T
