"""Progress bars on the long-running paths: shown on a terminal by default, on request
otherwise, never when turned off."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import simulate

import bnmf
from bnmf.inference import driver

X, _, _ = simulate(10, 24, rank=2, counts_per_sample=300, seed=3)


def test_minibatch_cavi_shows_its_steps(capsys):
    bnmf.fit(sp.csr_matrix(X), 2, method="cavi", batch_size=8, epochs=3, num_draws=5,
             progress=True)
    err = capsys.readouterr().err
    # 3 epochs × 3 minibatches, then the final pass over 3 blocks (tqdm redraws at most 10
    # times a second, so not every step shows)
    assert "CAVI minibatches" in err and "0/12" in err and "epoch=1/3" in err, err


def test_no_bar_off_a_terminal_by_default_or_when_turned_off(capsys):
    bnmf.fit(X, 2, method="cavi", batch_size=8, epochs=1, num_draws=5)  # stderr: no terminal
    bnmf.fit(X, 2, method="cavi", batch_size=8, epochs=1, num_draws=5, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.filterwarnings("ignore:method=:UserWarning")  # chains this short do not mix
@pytest.mark.parametrize("method, options, label", [
    ("nuts", {"num_warmup": 10, "num_samples": 10, "num_chains": 2}, "NUTS chains"),
    ("gibbs", {"num_warmup": 10, "num_samples": 10, "num_chains": 2}, "Gibbs sweeps"),
    ("cavi", {"batch_size": 8, "epochs": 1, "num_draws": 5}, "CAVI minibatches"),
])
def test_bars_are_on_by_default_on_a_terminal(capsys, monkeypatch, method, options, label):
    monkeypatch.setattr(driver, "_stderr_is_terminal", lambda: True)
    fit = bnmf.fit(X[:6, :8], 2, method=method, **options)
    assert np.all(np.isfinite(np.asarray(fit.W)))
    assert label in capsys.readouterr().err
