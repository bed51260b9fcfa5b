"""Options are validated once, before anything is traced, in one style: TypeError for a
value of the wrong type, ValueError naming the option for a value out of range."""

import numpy as np
import pytest

import bnmf
from bnmf.options import check_integer, check_number, check_options

X = np.random.default_rng(3).poisson(3.0, (10, 12))


@pytest.mark.parametrize("call, error, match", [
    (lambda: bnmf.fit(X, "2", method="map"), TypeError, "rank must be an integer"),
    (lambda: bnmf.fit(X, 2, method="map", seed=-1), ValueError,
     "seed must be a non-negative integer, got -1"),
    (lambda: bnmf.fit(X, 2, method="map", seed=1.5), TypeError, "seed must be an integer"),
    (lambda: bnmf.fit(X, 2, method="nuts", num_samples=0), ValueError,
     "num_samples must be a positive integer, got 0"),
    (lambda: bnmf.fit(X, 2, method="map", max_iter=-1), ValueError,
     "max_iter must be a positive integer, got -1"),
    (lambda: bnmf.fit(X, 2, method="svi", max_steps=0), ValueError,
     "max_steps must be a positive integer, got 0"),
    (lambda: bnmf.fit(X, 2, method="svi", max_steps=10.0), TypeError,
     "max_steps must be an integer"),
    (lambda: bnmf.fit(X, 2, method="map", tol=-1e-3), ValueError, "tol must be a finite"),
    (lambda: bnmf.fit(X, 2, method="svi", learning_rate=0), ValueError,
     r"learning_rate must be a finite number in \(0.0, ∞\]"),
    (lambda: bnmf.fit(X, 2, method="nuts", target_accept=1.0), ValueError, "target_accept"),
    (lambda: bnmf.fit(X, 2, method="nuts", num_chains="2"), TypeError,
     "num_chains must be an integer"),
    (lambda: bnmf.fit(X, 2, method="cavi", num_draws=0), ValueError,
     "num_draws must be a positive integer"),
    (lambda: bnmf.select_rank(X, [1, 2], folds="3"), TypeError, "folds must be an integer"),
    (lambda: bnmf.select_rank(X, [1, 2], folds=0), ValueError,
     "folds must be a positive integer"),
    (lambda: bnmf.select_rank(X, [1, 2], seed=-1), ValueError, "seed must be a non-negative"),
    (lambda: bnmf.select_rank(X, [1, 2], method="map", max_iter=0), ValueError,
     "max_iter must be a positive integer"),
    (lambda: bnmf.select_rank(X, "12"), TypeError, "ranks must be a sequence"),
])
def test_bad_options_raise_one_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_validators_cast_and_pass_others_through():
    assert check_integer("k", np.int64(3), 1) == 3 and type(check_integer("k", 3, 1)) is int
    assert check_integer("devices", None, 1, allow_none=True) is None
    with pytest.raises(TypeError, match="k must be an integer, got bool True"):
        check_integer("k", True, 0)
    assert check_number("tol", 1, 0.0) == 1.0
    with pytest.raises(ValueError, match="finite"):
        check_number("tol", float("nan"), 0.0)
    assert check_options({"guide": "lowrank", "max_iter": np.int32(5)}) == {
        "guide": "lowrank", "max_iter": 5}
