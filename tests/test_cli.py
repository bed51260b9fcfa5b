"""The command line: bnmf fit on files of each format, bnmf demo, and errors."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from helpers import simulate

import bnmf
from bnmf.cli import main
from bnmf.datasets import load_pcawg_signatures
from bnmf.io import read_matrix


@pytest.fixture(scope="module")
def counts():
    X, _, _ = simulate(12, 15, rank=2, counts_per_sample=300, seed=13)
    return pd.DataFrame(X.astype(int), index=[f"f{i}" for i in range(12)],
                        columns=[f"s{j}" for j in range(15)])


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz", ".npz", ".mtx"])
def test_read_matrix_formats(tmp_path, counts, suffix):
    path = tmp_path / f"X{suffix}"
    if suffix.startswith((".csv", ".tsv")):
        counts.to_csv(path, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".npz":
        sp.save_npz(path, sp.csr_matrix(counts.values))
    else:
        scipy.io.mmwrite(path, sp.coo_matrix(counts.values))
    X = read_matrix(path)
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    np.testing.assert_array_equal(dense, counts.values)
    if suffix.startswith((".csv", ".tsv")):
        assert list(X.index) == list(counts.index)


def test_read_dense_npz_and_errors(tmp_path, counts):
    np.savez(tmp_path / "a.npz", X=counts.values, other=np.zeros(2))
    np.testing.assert_array_equal(read_matrix(tmp_path / "a.npz"), counts.values)
    np.savez(tmp_path / "b.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(ValueError, match="the one named 'X'"):
        read_matrix(tmp_path / "b.npz")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        read_matrix(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_matrix(tmp_path / "x.xlsx")


def test_cli_fit_writes_a_loadable_fit(tmp_path, counts, capsys):
    data = tmp_path / "X.csv"
    counts.to_csv(data)
    out = tmp_path / "fit.nc"
    code = main(["fit", str(data), "--rank", "2", "--method", "map", "--out", str(out),
                 "--plot", str(tmp_path / "parts.png")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "part 0:" in printed and str(out) in printed
    fit = bnmf.load(out)
    assert list(fit.W.index) == list(counts.index) and fit.method == "map"
    assert (tmp_path / "parts.png").stat().st_size > 0
    assert pd.read_csv(tmp_path / "fit_H.csv", index_col=0).shape == (2, 15)


def test_cli_reports_bad_input(tmp_path, counts, capsys):
    data = tmp_path / "X.csv"
    (counts - 1000).to_csv(data)
    assert main(["fit", str(data), "--rank", "2", "--out", str(tmp_path / "f.nc")]) == 2
    assert "negative values" in capsys.readouterr().err
    counts.to_csv(data)
    assert main(["fit", str(data), "--rank", "99", "--out", str(tmp_path / "f.nc")]) == 2
    assert "rank=99 is out of range" in capsys.readouterr().err


def test_demo_runs_on_bundled_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rank", "3", "--draws", "200"]) == 0
    printed = capsys.readouterr().out
    assert "21 breast cancer genomes" in printed and "ELBO" in printed
    fit = bnmf.load(out / "fit.nc")
    assert fit.W.shape == (96, 3) and fit.num_draws == 200
    # the APOBEC signature (TCW > TTW/TGW) is among the parts of this cohort
    top = {fit.W[k].idxmax() for k in fit.W.columns}
    assert top & {"T[C>T]A", "T[C>T]T", "T[C>G]A", "T[C>G]T"}
    assert (out / "signatures.png").stat().st_size > 10_000
    # each part is named by its one-to-one best PCAWG match, with the cosine bnmf.match gives
    matches = bnmf.match(fit.W, load_pcawg_signatures()).set_index("component")
    for k in range(3):
        line = next(s for s in printed.splitlines() if s.startswith(f"part {k} "))
        assert (f"[best match {matches.loc[k, 'reference']}, cosine "
                f"{matches.loc[k, 'cosine']:.3f}]") in line
    # the APOBEC part is named for an APOBEC signature
    assert {"SBS2", "SBS13"} & set(matches["reference"])


def test_plot_parts_names_matches_and_labels_sbs96_ticks():
    import matplotlib

    matplotlib.use("Agg")
    from bnmf.datasets import SBS96_CHANNELS
    from bnmf.plotting import plot_parts

    # ten tumours made by SBS1 alone and ten by SBS13 alone: the parts are those references
    reference = load_pcawg_signatures()[["SBS1", "SBS13"]].to_numpy()
    X = np.random.default_rng(0).poisson(np.repeat(reference, 10, axis=1) * 2000.0)
    X = pd.DataFrame(X, index=list(SBS96_CHANNELS))
    fit = bnmf.fit(X, 2, method="map", seed=0)
    figure = plot_parts(fit)
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    for name in ("SBS1", "SBS13"):
        assert sum(bool(re.fullmatch(rf"best match {name} \(cosine (0\.99|1\.00)\)", t))
                   for t in texts) == 1, texts
    ticks = [t.get_text() for t in figure.axes[-1].get_xticklabels()]
    assert len(ticks) == 96 and ticks[:3] == ["ACA", "ACC", "ACG"] and ticks[-1] == "TTT"
    # the 16 contexts of each class, 5' base then 3' base, as SigProfiler orders them
    assert ticks[16:19] == ["ACA", "ACC", "ACG"] and ticks[48] == "ATA"
    assert sorted(ticks) == sorted(c[0] + c[2] + c[-1] for c in SBS96_CHANNELS)
    # non-SBS96 parts are not named; a bad reference is refused
    plain = bnmf.fit(X.to_numpy(), 2, method="map", seed=0)
    assert not any(t.get_text().startswith("best match")
                   for ax in plot_parts(plain).axes for t in ax.texts)
    with pytest.raises(ValueError, match="reference must be 'auto', None or a DataFrame"):
        plot_parts(fit, reference="cosmic")


def _command(args, cache, tmp_path):
    """Run ``python -m bnmf.cli ARGS`` (the ``bnmf`` command) with BNMF_CACHE_DIR=cache."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["BNMF_CACHE_DIR"] = str(cache)
    # the bnmf under test, not another one installed in the environment
    root = str(Path(bnmf.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "bnmf.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_command_compiles_each_program_once_per_machine(tmp_path, counts):
    """The command keeps JAX's compiled programs in BNMF_CACHE_DIR: a second run finds every
    program there (writes no new one), and the results equal those of a run without it."""
    data = tmp_path / "X.csv"
    counts.to_csv(data)
    cache = tmp_path / "cache"
    fit = ["fit", str(data), "--rank", "2", "--method", "map", "--out"]
    _command([*fit, "first.nc"], cache, tmp_path)
    written = sorted(p.name for p in cache.iterdir())
    assert any("poisson_mm" in name for name in written)  # the MAP updates' program
    _command([*fit, "second.nc"], cache, tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == written
    _command([*fit, "uncached.nc"], "off", tmp_path)
    assert not (tmp_path / "off").exists()
    W = [pd.read_csv(tmp_path / f"{name}_W.csv", index_col=0)
         for name in ("first", "second", "uncached")]
    pd.testing.assert_frame_equal(W[0], W[1])
    pd.testing.assert_frame_equal(W[0], W[2])


def test_compilation_cache_can_be_turned_off():
    from bnmf.cli import enable_compilation_cache

    for value in ("off", "0", "", "None"):
        assert enable_compilation_cache({"BNMF_CACHE_DIR": value}) is None


def test_unusable_compilation_cache_folder_warns_once_and_runs_without_it(tmp_path):
    import jax

    from bnmf.cli import enable_compilation_cache

    (tmp_path / "a_file").write_text("")
    before = jax.config.jax_compilation_cache_dir
    with pytest.warns(UserWarning, match="cannot write the compilation cache folder"):
        assert enable_compilation_cache({"BNMF_CACHE_DIR": str(tmp_path / "a_file" / "sub")}) is None
    assert jax.config.jax_compilation_cache_dir == before  # JAX's configuration untouched


def test_command_line_offers_every_model_and_method():
    from bnmf.cli import MODEL_CHOICES, build_parser
    from bnmf.inference import METHODS
    from bnmf.models import MODELS

    assert sorted(MODEL_CHOICES) == sorted(MODELS)
    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    method = next(a for a in fit_parser._actions if a.dest == "method")
    assert sorted(method.choices) == sorted(METHODS)


def test_cli_fit_prints_chain_diagnostics(tmp_path, counts, capsys):
    """A sampling fit's summary names its chains' worst R-hat and ESS, the figures of
    fit.info["diagnostics"] (the ones the BnmfWarning is raised from)."""
    data = tmp_path / "X.csv"
    counts.to_csv(data)
    out = tmp_path / "fit.nc"
    assert main(["fit", str(data), "--rank", "2", "--method", "gibbs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("convergence: "))
    summary = bnmf.load(out).info["diagnostics"]
    assert line.startswith("convergence: 4 chains; W: R-hat max ")
    for name in ("W", "H"):
        assert f"{name}: R-hat max {summary[f'rhat_max_{name}']:.3f}" in line
        assert f"ESS min {summary[f'ess_min_{name}']:.0f}" in line
    map_out = tmp_path / "map.nc"
    assert main(["fit", str(data), "--rank", "2", "--method", "map", "--out", str(map_out)]) == 0
    assert "convergence:" not in capsys.readouterr().out
