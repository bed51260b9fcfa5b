"""Input validation: ``bnmf.data.prepare``, ``check_rank``, ``get_model`` and ``bnmf.fit``.

Every distinct error message gets one ``pytest.raises(..., match=...)``; a representative subset
is also driven through the public ``bnmf.fit`` with the inference functions replaced by a
tripwire, so those tests prove that validation happens before any fitting starts.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bnmf
from bnmf import fitting
from bnmf.data import Data, aligned_empty, check_rank, prepare
from bnmf.inference.common import to_device
from bnmf.models import MODELS, GaussianHalfNormal, Horseshoe, PoissonGamma, get_model

# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


def counts(shape=(4, 3), seed=0):
    """Small strictly positive integer matrix (float64), features × samples."""
    return np.random.default_rng(seed).integers(1, 6, size=shape).astype(np.float64)


class FittingStarted(AssertionError):
    """Raised by the tripwire if an inference function is ever called."""


@pytest.fixture
def no_fitting(monkeypatch):
    """Replace every inference function by a tripwire with the same signature.

    ``fitting._check_inference_options`` inspects the signature, which ``functools.wraps``
    preserves (``inspect.signature`` follows ``__wrapped__``).
    """
    for name, func in list(fitting.METHODS.items()):

        @functools.wraps(func)
        def tripwire(*args, _name=name, **kwargs):
            raise FittingStarted(f"inference {_name!r} started before validation failed")

        monkeypatch.setitem(fitting.METHODS, name, tripwire)


def fit_raises(exc, match, X, rank=2, **kwargs):
    """Assert that ``bnmf.fit`` raises ``exc`` matching ``match`` (never FittingStarted)."""
    kwargs.setdefault("method", "map")
    with pytest.raises(exc, match=match):
        bnmf.fit(X, rank, **kwargs)


# --------------------------------------------------------------------------------------------
# prepare: one test per error message
# --------------------------------------------------------------------------------------------


class TestPrepareErrors:
    def test_negative(self):
        X = counts()
        X[1, 2] = -0.5
        match = r"negative values \(min -0.5 at feature 1, observation 2\)"
        with pytest.raises(ValueError, match=match):
            prepare(X)

    def test_nan_without_mask(self):
        X = counts()
        X[2, 0] = np.nan
        match = r"1 NaN values \(first at feature 2, observation 0\) and no mask"
        with pytest.raises(ValueError, match=match):
            prepare(X)

    def test_nan_with_missing_mask_is_unobserved(self):
        X = counts()
        X[2, 0] = np.nan
        data = prepare(X, missing="mask")
        assert not data.mask[2, 0]
        assert data.mask.sum() == X.size - 1
        assert data.values[2, 0] == 0.0
        assert not np.isnan(data.values).any()

    def test_nan_with_mask_is_accepted(self):
        X = counts()
        X[2, 0] = np.nan
        data = prepare(X, mask=~np.isnan(X))
        assert not data.mask[2, 0]
        assert data.values[2, 0] == 0.0

    def test_nan_where_mask_says_observed(self):
        X = counts()
        X[0, 1] = np.nan
        match = "NaN at feature 0, observation 1 where the mask says observed"
        with pytest.raises(ValueError, match=match):
            prepare(X, mask=np.ones(X.shape, dtype=bool))

    @pytest.mark.parametrize("value", [np.inf, -np.inf])
    def test_inf(self, value):
        X = counts()
        X[3, 1] = value
        match = r"infinite values \(first at feature 3, observation 1\)"
        with pytest.raises(ValueError, match=match):
            prepare(X)

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, -3.0])
    def test_bad_values_hidden_by_mask_are_ignored(self, value):
        X = counts()
        X[1, 1] = value
        mask = np.ones(X.shape, dtype=bool)
        mask[1, 1] = False
        data = prepare(X, mask=mask)
        assert data.values[1, 1] == 0.0
        assert np.isfinite(data.values).all()

    @pytest.mark.parametrize(
        "X, ndim",
        [
            (np.ones(5), 1),
            (np.ones((2, 3, 4)), 3),
            (np.float64(3.0), 0),
            (pd.Series([1.0, 2.0]), 1),
        ],
        ids=["1d", "3d", "0d", "series"],
    )
    def test_not_2d(self, X, ndim):
        with pytest.raises(ValueError, match=f"X must be 2-D .*got {ndim}-D"):
            prepare(X)

    @pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
    def test_empty(self, shape):
        with pytest.raises(ValueError, match=re.escape(f"X is empty (shape {shape})")):
            prepare(np.zeros(shape))

    def test_empty_list(self):
        with pytest.raises(ValueError, match="X is empty"):
            prepare([[]])

    def test_all_zero(self):
        with pytest.raises(ValueError, match="no positive observed entry"):
            prepare(np.zeros((3, 4)))

    def test_all_observed_zero_but_positive_hidden(self):
        X = np.zeros((2, 2))
        X[0, 0] = 5.0
        mask = np.ones_like(X, dtype=bool)
        mask[0, 0] = False
        with pytest.raises(ValueError, match="no positive observed entry"):
            prepare(X, mask=mask)

    @pytest.mark.parametrize("mask_shape", [(3, 4), (4, 4), (12,), (3, 4, 1)])
    def test_mask_wrong_shape(self, mask_shape):
        match = re.escape(f"mask has shape {mask_shape} but X has shape (4, 3)")
        with pytest.raises(ValueError, match=match):
            prepare(counts(), mask=np.ones(mask_shape, dtype=bool))

    @pytest.mark.parametrize(
        "bad", [2, 0.5, -1, np.nan], ids=["two", "half", "minus-one", "nan"]
    )
    def test_mask_not_boolean(self, bad):
        mask = np.ones((4, 3))
        mask[0, 0] = bad
        with pytest.raises(ValueError, match="mask must be boolean"):
            prepare(counts(), mask=mask)

    def test_mask_of_strings(self):
        with pytest.raises(ValueError, match="mask must be boolean"):
            prepare(counts(), mask=np.full((4, 3), "yes"))

    def test_mask_hides_whole_row(self):
        mask = np.ones((4, 3), dtype=bool)
        mask[2, :] = False
        mask[3, :] = False
        match = r"hides every entry of feature 2 \(2 features in all\)"
        with pytest.raises(ValueError, match=match):
            prepare(counts(), mask=mask)

    def test_mask_hides_whole_column(self):
        mask = np.ones((4, 3), dtype=bool)
        mask[:, 1] = False
        match = r"hides every entry of observation 1 \(1 observations in all\)"
        with pytest.raises(ValueError, match=match):
            prepare(counts(), mask=mask)

    def test_nan_row_with_missing_mask(self):
        X = counts()
        X[0, :] = np.nan
        with pytest.raises(ValueError, match="hides every entry of feature 0"):
            prepare(X, missing="mask")

    def test_non_integer_with_counts(self):
        X = counts()
        X[1, 0] = 2.5
        match = r"non-integer values \(e.g. 2.5 at feature 1, observation 0\)"
        with pytest.raises(ValueError, match=match):
            prepare(X, counts=True)

    def test_non_integer_without_counts(self):
        X = counts()
        X[1, 0] = 2.5
        data = prepare(X, counts=False)
        assert not data.is_counts
        assert data.values[1, 0] == 2.5

    def test_non_integer_hidden_by_mask_is_counts(self):
        X = counts()
        X[1, 0] = 2.5
        mask = np.ones(X.shape, dtype=bool)
        mask[1, 0] = False
        assert prepare(X, mask=mask, counts=True).is_counts

    @pytest.mark.parametrize("missing", ["ignore", "MASK", None, "", 0])
    def test_bad_missing(self, missing):
        with pytest.raises(ValueError, match="missing must be 'error' or 'mask'"):
            prepare(counts(), missing=missing)

    def test_bad_missing_checked_first(self):
        # even before the type of X is looked at
        with pytest.raises(ValueError, match="missing must be"):
            prepare("not a matrix", missing="drop")

    def test_non_numeric_dataframe(self):
        df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
        with pytest.raises(TypeError, match="DataFrame with non-numeric columns"):
            prepare(df)

    @pytest.mark.parametrize(
        "X",
        ["counts.csv", b"bytes", {"a": [1, 2]}, 5, 2.0, None, ((1, 2), (3, 4)), {1, 2}],
        ids=["str", "bytes", "dict", "int", "float", "none", "tuple", "set"],
    )
    def test_not_a_matrix(self, X):
        with pytest.raises(TypeError, match=f"X must be a NumPy array.*got {type(X).__name__}"):
            prepare(X)

    @pytest.mark.parametrize(
        "X",
        [
            np.array([["a", "b"], ["c", "d"]]),
            np.array([[1, "b"], [2, 3]], dtype=object),
            np.array([[1.0, 2.0], [3.0, 4.0]], dtype=object),
            np.array([["2020-01-01", "2020-01-02"]], dtype="datetime64[D]"),
            [["1", "2"], ["3", "4"]],
        ],
        ids=["str-array", "object-mixed", "object-float", "datetime", "list-of-str"],
    )
    def test_non_numeric_array(self, X):
        with pytest.raises(TypeError, match="X must hold numbers, got dtype"):
            prepare(X)

    def test_ragged_list(self):
        # NumPy's own message (see report): at least a ValueError, never a silent object array.
        with pytest.raises(ValueError):
            prepare([[1.0, 2.0], [3.0]])


# --------------------------------------------------------------------------------------------
# Bugs found while writing these tests, now fixed (regression tests)
# --------------------------------------------------------------------------------------------


class TestFixedBugs:
    @pytest.mark.filterwarnings("ignore:Casting complex values")
    def test_complex_array_rejected(self):
        with pytest.raises(TypeError, match="complex|real|numbers"):
            prepare(np.array([[1 + 2j, 3], [1, 2]]))

    @pytest.mark.filterwarnings("ignore:Casting complex values")
    def test_complex_sparse_rejected(self):
        with pytest.raises(TypeError, match="complex|real|numbers"):
            prepare(sp.csr_matrix(np.array([[1 + 1j, 0], [0, 1]])))

    def test_dataframe_of_numeric_strings_rejected(self):
        df = pd.DataFrame({"a": ["1", "2"], "b": ["3", "4.5"]})
        with pytest.raises(TypeError, match="non-numeric"):
            prepare(df)

    def test_dataframe_with_datetime_column_rejected(self):
        df = pd.DataFrame({"t": pd.to_datetime(["2020-01-01", "2020-01-02"]), "n": [1, 2]})
        with pytest.raises(TypeError, match="non-numeric"):
            prepare(df)

    def test_fit_model_options_with_model_object(self, no_fitting):
        fit_raises(TypeError, "given with a model object", counts(), model=PoissonGamma(), a=0.5)

    def test_dataframe_mask_aligned_to_dataframe_labels(self):
        X = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=["a", "b"], columns=["u", "v"])
        mask = pd.DataFrame(
            [[True, True], [True, False]], index=["a", "b"], columns=["u", "v"]
        )
        shuffled = mask.loc[["b", "a"], ["v", "u"]]
        try:
            data = prepare(X, mask=shuffled)
        except ValueError:
            return  # refusing misaligned labels is an acceptable fix
        np.testing.assert_array_equal(data.mask, mask.to_numpy())


# --------------------------------------------------------------------------------------------
# check_rank
# --------------------------------------------------------------------------------------------


class TestCheckRank:
    @pytest.mark.parametrize("rank", [0, -1, -10])
    def test_too_small(self, rank):
        match = rf"rank={rank} is out of range for X of shape \(4, 3\)"
        with pytest.raises(ValueError, match=match):
            check_rank(rank, (4, 3))

    @pytest.mark.parametrize("shape", [(4, 3), (3, 4)])
    def test_too_large(self, shape):
        with pytest.raises(ValueError, match=r"rank=4 is out of range.*= 3\."):
            check_rank(4, shape)

    @pytest.mark.parametrize(
        "rank", [2.0, 2.5, True, False, "2", None, np.float64(2.0), np.bool_(True), [2]],
        ids=["float", "float-frac", "True", "False", "str", "None", "np-float", "np-bool", "list"],
    )
    def test_not_integer(self, rank):
        with pytest.raises(TypeError, match="rank must be an integer"):
            check_rank(rank, (4, 3))

    @pytest.mark.parametrize("rank", [1, 3, np.int64(2), np.int32(3), np.uint8(1)])
    def test_accepts(self, rank):
        out = check_rank(rank, (4, 3))
        assert out == int(rank) and type(out) is int


# --------------------------------------------------------------------------------------------
# Models: get_model and hyperparameter checks
# --------------------------------------------------------------------------------------------


class TestModels:
    def test_unknown_model_name(self):
        match = re.escape(f"unknown model 'nmf'; choose one of {sorted(MODELS)}")
        with pytest.raises(ValueError, match=match):
            get_model("nmf")

    def test_bad_option_for_named_model(self):
        with pytest.raises(TypeError, match="bad option for model 'poisson'"):
            get_model("poisson", scale_W=1.0)

    def test_options_with_model_object(self):
        with pytest.raises(TypeError, match=r"model options \['a'\] given with a model object"):
            get_model(PoissonGamma(), a=0.5)

    @pytest.mark.parametrize(
        "model", [3, None, PoissonGamma, object()], ids=["int", "None", "class", "object"]
    )
    def test_not_a_model(self, model):
        with pytest.raises(TypeError, match="model must be a name"):
            get_model(model)

    def test_returns_objects(self):
        m = PoissonGamma(a=0.5)
        assert get_model(m) is m
        assert get_model("poisson", a=0.5) == m
        assert isinstance(get_model("gaussian"), GaussianHalfNormal)
        assert get_model("horseshoe", likelihood="gaussian").needs_counts is False

    @pytest.mark.parametrize(
        "make, match",
        [
            (lambda: PoissonGamma(a=-1), "PoissonGamma.a must be positive, got -1"),
            (lambda: PoissonGamma(a=0), "PoissonGamma.a must be positive"),
            (lambda: PoissonGamma(a=np.nan), "PoissonGamma.a must be positive"),
            (lambda: PoissonGamma(rate_W=0.0), "PoissonGamma.rate_W must be positive"),
            (lambda: PoissonGamma(rate_H=-2.0), "PoissonGamma.rate_H must be positive"),
            (lambda: GaussianHalfNormal(scale_W=-1.0), "GaussianHalfNormal.scale_W must be"),
            (lambda: GaussianHalfNormal(scale_H=0), "GaussianHalfNormal.scale_H must be positive"),
            (lambda: GaussianHalfNormal(scale_sigma=-1e-3), "GaussianHalfNormal.scale_sigma"),
            (lambda: Horseshoe(likelihood="nb"), "Horseshoe likelihood must be 'poisson' or"),
            (lambda: Horseshoe(expected_nonzero=0.0), "expected_nonzero must lie in"),
            (lambda: Horseshoe(expected_nonzero=1.0), "expected_nonzero must lie in"),
            (lambda: Horseshoe(expected_nonzero=np.nan), "expected_nonzero must lie in"),
            (lambda: Horseshoe(slab_df=0), "Horseshoe.slab_df must be positive"),
            (lambda: Horseshoe(slab_scale=-1.0), "Horseshoe.slab_scale must be positive"),
            (lambda: Horseshoe(global_scale=0.0), "Horseshoe.global_scale must be positive"),
            (lambda: Horseshoe(factor_mean=-1.0), "Horseshoe.factor_mean must be positive"),
            (lambda: Horseshoe(scale_sigma=0.0), "Horseshoe.scale_sigma must be positive"),
        ],
    )
    def test_bad_hyperparameters(self, make, match):
        with pytest.raises(ValueError, match=re.escape(match)):
            make()

    def test_needs_counts(self):
        assert PoissonGamma().needs_counts
        assert not GaussianHalfNormal().needs_counts
        assert Horseshoe().needs_counts
        assert not Horseshoe(likelihood="gaussian").needs_counts


# --------------------------------------------------------------------------------------------
# bnmf.fit: the same checks through the public API, all before any inference runs
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_fitting")
class TestFitErrors:
    def test_tripwire_works(self):
        with pytest.raises(FittingStarted):
            bnmf.fit(counts(), 2, method="map")

    def test_negative(self):
        X = counts()
        X[0, 0] = -1
        fit_raises(ValueError, "negative values", X)

    def test_nan_without_mask(self):
        X = counts()
        X[0, 0] = np.nan
        fit_raises(ValueError, "no mask was given", X)

    def test_nan_where_mask_says_observed(self):
        X = counts()
        X[0, 0] = np.nan
        fit_raises(ValueError, "where the mask says observed", X, mask=np.ones(X.shape, bool))

    def test_inf(self):
        X = counts()
        X[0, 0] = np.inf
        fit_raises(ValueError, "infinite values", X)

    @pytest.mark.parametrize("X", [np.ones(4), np.ones((2, 2, 2))], ids=["1d", "3d"])
    def test_not_2d(self, X):
        fit_raises(ValueError, "X must be 2-D", X)

    def test_empty(self):
        fit_raises(ValueError, "X is empty", np.zeros((0, 3)))

    def test_all_zero(self):
        fit_raises(ValueError, "no positive observed entry", np.zeros((4, 3)))

    def test_mask_wrong_shape(self):
        fit_raises(ValueError, "mask has shape", counts(), mask=np.ones((3, 4), bool))

    def test_mask_not_boolean(self):
        fit_raises(ValueError, "mask must be boolean", counts(), mask=np.full((4, 3), 2))

    def test_mask_hides_row(self):
        mask = np.ones((4, 3), bool)
        mask[1] = False
        fit_raises(ValueError, "hides every entry of feature 1", counts(), mask=mask)

    def test_mask_hides_column(self):
        mask = np.ones((4, 3), bool)
        mask[:, 2] = False
        fit_raises(ValueError, "hides every entry of observation 2", counts(), mask=mask)

    @pytest.mark.parametrize("model", ["poisson", "horseshoe", PoissonGamma(), Horseshoe()])
    def test_non_integer_with_count_model(self, model):
        fit_raises(ValueError, "non-integer values", counts() + 0.5, model=model)

    @pytest.mark.parametrize(
        "model",
        ["gaussian", GaussianHalfNormal(), Horseshoe(likelihood="gaussian")],
        ids=["gaussian", "gaussian-object", "horseshoe-gaussian"],
    )
    def test_non_integer_passes_validation_with_continuous_model(self, model):
        # validation passes, so the tripwire fires
        with pytest.raises(FittingStarted):
            bnmf.fit(counts() + 0.5, 2, model=model, method="map")

    def test_non_integer_horseshoe_gaussian_by_option(self):
        with pytest.raises(FittingStarted):
            bnmf.fit(counts() + 0.5, 2, model="horseshoe", likelihood="gaussian", method="map")

    @pytest.mark.parametrize("rank", [0, -1, 4])
    def test_rank_out_of_range(self, rank):
        fit_raises(ValueError, f"rank={rank} is out of range", counts(), rank=rank)

    @pytest.mark.parametrize("rank", [2.0, True, "2"])
    def test_rank_not_integer(self, rank):
        fit_raises(TypeError, "rank must be an integer", counts(), rank=rank)

    def test_bad_missing(self):
        fit_raises(ValueError, "missing must be 'error' or 'mask'", counts(), missing="drop")

    def test_non_numeric_dataframe(self):
        fit_raises(TypeError, "non-numeric columns", pd.DataFrame({"a": ["x", "y"], "b": [1, 2]}))

    def test_not_a_matrix(self):
        fit_raises(TypeError, "X must be a NumPy array", "data.csv")

    def test_a_dict_of_one_view_is_not_a_multi_view_fit(self):
        # A dict is multi-view input (bnmf/multiview.py), which needs two views or more.
        fit_raises(ValueError, "a multi-view fit needs a dict of at least two views", {"a": [1, 2]})

    def test_unknown_model(self):
        fit_raises(ValueError, "unknown model 'nmf'", counts(), model="nmf")

    def test_unknown_model_with_options(self):
        fit_raises(ValueError, "unknown model 'nmf'", counts(), model="nmf", a=1.0)

    def test_not_a_model(self):
        fit_raises(TypeError, "model must be a name", counts(), model=PoissonGamma)

    @pytest.mark.parametrize("method", ["mcmc", "MAP", ""])
    def test_unknown_method(self, method):
        fit_raises(ValueError, "method must be one of", counts(), method=method)

    def test_unknown_option(self):
        match = r"unknown option\(s\) \['bogus'\] for method='map'"
        fit_raises(TypeError, match, counts(), bogus=1)

    def test_option_of_other_model(self):
        match = r"unknown option\(s\) \['scale_W'\]"
        fit_raises(TypeError, match, counts(), model="poisson", scale_W=1.0)

    def test_model_options_with_model_object_is_a_type_error(self):
        # the message is misleading (see TestKnownBugs), but it is a TypeError before fitting
        fit_raises(TypeError, r"\['a'\]", counts(), model=PoissonGamma(), a=0.5)

    @pytest.mark.parametrize("dtype", ["float16", "int32", np.float32, None])
    def test_bad_dtype(self, dtype):
        fit_raises(ValueError, "dtype must be one of", counts(), dtype=dtype)

    @pytest.mark.parametrize("seed", [1.5, True, "0", None])
    def test_bad_seed(self, seed):
        fit_raises(TypeError, "seed must be an integer", counts(), seed=seed)

    def test_bad_hyperparameter_by_name(self):
        fit_raises(ValueError, "PoissonGamma.a must be positive", counts(), model="poisson", a=-1)

    def test_bad_hyperparameter_horseshoe(self):
        fit_raises(ValueError, "expected_nonzero must lie in", counts(), model="horseshoe",
                   expected_nonzero=2.0)

    def test_missing_mask_passes_validation(self):
        X = counts()
        X[0, 0] = np.nan
        with pytest.raises(FittingStarted):
            bnmf.fit(X, 2, method="map", missing="mask")
        with pytest.raises(FittingStarted):
            bnmf.fit(X, 2, method="map", mask=~np.isnan(X))


# --------------------------------------------------------------------------------------------
# Acceptance
# --------------------------------------------------------------------------------------------


class TestAccept:
    def test_ndarray_defaults(self):
        X = counts()
        data = prepare(X)
        assert isinstance(data, Data)
        assert data.shape == (4, 3)
        assert data.values.dtype == np.float64 and data.values.flags.c_contiguous
        assert data.mask.dtype == bool and data.mask.all() and data.fully_observed
        assert data.is_counts and not data.has_labels
        pd.testing.assert_index_equal(data.feature_names, pd.RangeIndex(4, name="feature"))
        pd.testing.assert_index_equal(data.observation_names, pd.RangeIndex(3, name="observation"))
        np.testing.assert_array_equal(data.values, X)
        np.testing.assert_array_equal(data.observed_values(), X.ravel())

    def test_does_not_modify_input(self):
        X = counts()
        X[0, 0] = np.nan
        before = X.copy()
        prepare(X, missing="mask")
        np.testing.assert_array_equal(X, before)

    def test_fortran_order_input_gives_contiguous_values(self):
        X = np.asfortranarray(counts((5, 4)))
        data = prepare(X)
        assert data.values.flags.c_contiguous
        np.testing.assert_array_equal(data.values, X)

    def test_dataframe_labels_kept(self):
        X = pd.DataFrame(counts(), index=[f"gene{i}" for i in range(4)],
                         columns=pd.Index(["s0", "s1", "s2"], name="sample"))
        data = prepare(X)
        assert data.has_labels
        pd.testing.assert_index_equal(data.feature_names, X.index)
        pd.testing.assert_index_equal(data.observation_names, X.columns)
        np.testing.assert_array_equal(data.values, X.to_numpy())

    def test_dataframe_with_nullable_ints_and_missing_mask(self):
        X = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64"), "b": [4, 5, 6]})
        with pytest.raises(ValueError, match="no mask was given"):
            prepare(X)
        data = prepare(X, missing="mask")
        np.testing.assert_array_equal(data.mask, [[True, True], [False, True], [True, True]])
        assert data.is_counts

    def test_dataframe_mask(self):
        X = pd.DataFrame(counts(), index=list("abcd"), columns=list("xyz"))
        mask = pd.DataFrame(np.ones((4, 3), bool), index=X.index, columns=X.columns)
        mask.iloc[0, 0] = False
        data = prepare(X, mask=mask)
        np.testing.assert_array_equal(data.mask, mask.to_numpy())

    @pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
    def test_sparse_equals_dense(self, fmt):
        X = counts((5, 4))
        X[X < 3] = 0
        dense = prepare(X)
        data = prepare(sp.coo_matrix(X).asformat(fmt))
        np.testing.assert_array_equal(data.values, dense.values)
        np.testing.assert_array_equal(data.mask, dense.mask)
        assert data.is_counts == dense.is_counts and not data.has_labels

    def test_sparse_array_api(self):
        X = counts()
        np.testing.assert_array_equal(prepare(sp.csr_array(X)).values, X)

    def test_sparse_mask(self):
        X = counts()
        mask = np.ones(X.shape, bool)
        mask[1, 1] = False
        data = prepare(X, mask=sp.csr_matrix(mask))
        np.testing.assert_array_equal(data.mask, mask)

    @pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64])
    def test_integer_arrays(self, dtype):
        X = counts().astype(dtype)
        data = prepare(X, counts=True)
        assert data.is_counts and data.values.dtype == np.float64
        np.testing.assert_array_equal(data.values, X)

    def test_bool_array(self):
        X = np.array([[True, False], [False, True]])
        data = prepare(X, counts=True)
        assert data.is_counts
        np.testing.assert_array_equal(data.values, [[1.0, 0.0], [0.0, 1.0]])

    def test_nested_list(self):
        data = prepare([[1, 2], [3, 4]], counts=True)
        np.testing.assert_array_equal(data.values, [[1, 2], [3, 4]])

    def test_float32_input(self):
        X = counts().astype(np.float32) / 2
        data = prepare(X)
        assert data.values.dtype == np.float32 and not data.is_counts
        assert prepare(pd.DataFrame(X)).values.dtype == np.float32
        assert prepare(X.astype(np.int32) * 2).values.dtype == np.float64
        assert prepare(X.astype(np.float16)).values.dtype == np.float64

    def test_values_are_an_own_read_only_copy(self):
        X = counts().astype(np.float32)
        data = prepare(X)
        X[0, 0] += 1  # the caller's array changes; the Data does not
        assert data.values[0, 0] == X[0, 0] - 1
        with pytest.raises(ValueError, match="read-only"):
            data.values[0, 0] = 0.0
        mask = np.ones(X.shape, bool)
        data = prepare(X, mask=mask)
        mask[0, 0] = False
        assert data.mask[0, 0] and data.fully_observed
        with pytest.raises(ValueError, match="read-only"):
            data.mask[0, 0] = False

    def test_float32_values_reach_the_fit_without_a_copy(self):
        data = prepare(counts().astype(np.float32))
        on_device = to_device(data.values, np.float32)
        if jax.devices()[0].platform == "cpu":
            assert on_device.unsafe_buffer_pointer() == data.values.ctypes.data
        writable = aligned_empty(data.values.shape, np.float32)  # could be adopted, but a
        writable[:] = data.values                                 # writable array is copied
        assert to_device(writable, np.float32).unsafe_buffer_pointer() != writable.ctypes.data

    def test_moments_of_float32_input_are_float64_accurate(self):
        # one float32 dot over 4 M entries is off by ~1e-5; the blocked sum is not
        X = np.random.default_rng(0).uniform(0, 10, (2_000, 2_000)).astype(np.float32)
        mean32, std32 = prepare(X).observed_moments()
        mean64, std64 = prepare(X.astype(np.float64)).observed_moments()
        assert mean32 == pytest.approx(mean64, rel=1e-9)
        assert std32 == pytest.approx(std64, rel=1e-8)

    def test_scoring_allows_empty_rows_columns_and_all_zero(self):
        X = np.zeros((3, 3))
        mask = np.zeros((3, 3), bool)
        mask[0, 0] = True
        data = prepare(X, mask=mask, scoring=True)
        assert data.mask.sum() == 1
        data = prepare(X, mask=np.zeros((3, 3), bool), scoring=True)
        assert not data.mask.any() and data.is_counts
        assert prepare(np.zeros((2, 2)), scoring=True).fully_observed

    def test_scoring_still_rejects_bad_values(self):
        X = counts()
        X[0, 0] = -1
        with pytest.raises(ValueError, match="negative"):
            prepare(X, scoring=True)

    @pytest.mark.parametrize("as_type", [bool, int, float], ids=["bool", "int01", "float01"])
    def test_mask_values_stored(self, as_type):
        X = counts()
        mask = np.ones(X.shape, bool)
        mask[0, 1] = mask[3, 2] = False
        data = prepare(X, mask=mask.astype(as_type))
        assert data.mask.dtype == bool
        np.testing.assert_array_equal(data.mask, mask)
        assert not data.fully_observed

    def test_mask_as_nested_list(self):
        mask = [[True, False], [True, True]]
        data = prepare(np.ones((2, 2)), mask=mask)
        np.testing.assert_array_equal(data.mask, mask)

    def test_unobserved_entries_become_zero(self):
        X = counts() * 10
        mask = np.ones(X.shape, bool)
        mask[0, 0] = mask[2, 1] = False
        data = prepare(X, mask=mask)
        assert data.values[0, 0] == 0 and data.values[2, 1] == 0
        np.testing.assert_array_equal(data.values[mask], X[mask])
        np.testing.assert_array_equal(data.observed_values(), X[mask])

    def test_data_is_frozen(self):
        data = prepare(counts())
        with pytest.raises(AttributeError):
            data.is_counts = False

    def test_duck_typed_anndata_is_transposed(self):
        # prepare recognises AnnData by class name; a stand-in exercises the transpose path
        # without the optional dependency.
        class AnnData:
            def __init__(self, X, obs_names, var_names):
                self.X, self.obs_names, self.var_names = X, obs_names, var_names

        cells_by_genes = counts((3, 5))
        for mat in (cells_by_genes, sp.csr_matrix(cells_by_genes)):
            adata = AnnData(mat, pd.Index(["c0", "c1", "c2"]), pd.Index(list("abcde")))
            data = prepare(adata)
            assert data.shape == (5, 3) and data.has_labels
            np.testing.assert_array_equal(data.values, cells_by_genes.T)
            assert list(data.feature_names) == list("abcde")
            assert list(data.observation_names) == ["c0", "c1", "c2"]


class TestFitAccept:
    """A few real (tiny, fast) MAP fits: validation accepts and labels reach the result."""

    def test_dataframe_labels_in_result(self):
        X = pd.DataFrame(counts((6, 5)), index=[f"g{i}" for i in range(6)],
                         columns=[f"s{j}" for j in range(5)])
        result = bnmf.fit(X, 2, method="map", max_iter=20)
        assert isinstance(result.W, pd.DataFrame) and isinstance(result.H, pd.DataFrame)
        pd.testing.assert_index_equal(result.W.index, X.index, check_names=False)
        pd.testing.assert_index_equal(result.H.columns, X.columns, check_names=False)

    @pytest.mark.parametrize("fmt", ["csr", "coo"])
    def test_sparse_fit_equals_dense(self, fmt):
        X = counts((6, 5))
        X[X < 3] = 0
        dense = bnmf.fit(X, 2, method="map", max_iter=20, dtype="float64")
        sparse = bnmf.fit(sp.coo_matrix(X).asformat(fmt), 2, method="map", max_iter=20,
                          dtype="float64")
        # Sparse counts take the O(nnz) path: the same updates, summed in another order.
        np.testing.assert_allclose(np.asarray(sparse.W), np.asarray(dense.W), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(sparse.H), np.asarray(dense.H), rtol=1e-4,
                                   atol=1e-4)

    def test_int_and_bool_arrays(self):
        X = counts((6, 5)).astype(np.int64)
        assert np.asarray(bnmf.fit(X, 2, method="map", max_iter=20).W).shape == (6, 2)
        B = X > 2
        assert np.asarray(bnmf.fit(B, 2, method="map", max_iter=20).H).shape == (2, 5)

    def test_gaussian_accepts_non_integer(self):
        X = counts((6, 5)) + 0.25
        result = bnmf.fit(X, 2, model="gaussian", method="map", max_iter=20)
        assert np.isfinite(np.asarray(result.W)).all()

    def test_anndata(self):
        anndata = pytest.importorskip("anndata")
        cells_by_genes = counts((5, 6))
        adata = anndata.AnnData(
            cells_by_genes,
            obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]),
            var=pd.DataFrame(index=[f"g{j}" for j in range(6)]),
        )
        result = bnmf.fit(adata, 2, method="map", max_iter=20)
        assert result.W.shape == (6, 2) and result.H.shape == (2, 5)
        assert list(result.W.index) == list(adata.var_names)
        assert list(result.H.columns) == list(adata.obs_names)


# --------------------------------------------------------------------------------------------
# Property-based tests
# --------------------------------------------------------------------------------------------

_shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))
_values = st.one_of(
    st.integers(0, 1000).map(float),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def matrix_and_mask(draw):
    """A non-negative float matrix and a mask that keeps every row and column observed.

    Unobserved entries hold NaN (documented as allowed) half the time.
    """
    shape = draw(_shapes)
    X = draw(arrays(np.float64, shape, elements=_values))
    mask = draw(arrays(np.bool_, shape))
    n, m = shape
    for k in range(max(n, m)):
        mask[k % n, k % m] = True  # covers every row and every column
    if draw(st.booleans()):
        X = np.where(mask, X, np.nan)
    return X, mask


@settings(max_examples=50, deadline=None)
@given(matrix_and_mask())
def test_prepare_values_and_is_counts(X_mask):
    X, mask = X_mask
    observed = X[mask]
    assume((observed > 0).any())
    data = prepare(X, mask=mask)
    np.testing.assert_array_equal(data.mask, mask)
    np.testing.assert_array_equal(data.values[mask], observed)
    assert (data.values[~mask] == 0).all()
    integer = bool(np.all(observed == np.floor(observed)))
    assert data.is_counts is integer
    if integer:
        assert prepare(X, mask=mask, counts=True).is_counts
    else:
        with pytest.raises(ValueError, match="non-integer values"):
            prepare(X, mask=mask, counts=True)


@settings(max_examples=50, deadline=None)
@given(st.tuples(st.integers(1, 40), st.integers(1, 40)), st.data())
def test_check_rank_accepts_exactly_1_to_min(shape, data):
    limit = min(shape)
    rank = data.draw(st.integers(-3, limit + 3))
    if 1 <= rank <= limit:
        assert check_rank(rank, shape) == rank
        assert check_rank(np.int64(rank), shape) == rank
    else:
        with pytest.raises(ValueError, match="out of range"):
            check_rank(rank, shape)
    with pytest.raises(TypeError, match="rank must be an integer"):
        check_rank(float(rank), shape)
