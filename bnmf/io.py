"""Read data matrices from files: CSV/TSV, NumPy ``.npz``, Matrix Market and ``.h5ad``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

__all__ = ["read_matrix"]


def _read_npz(path: Path):
    try:
        return sp.load_npz(path)  # a SciPy sparse matrix saved with save_npz
    except (ValueError, KeyError):
        pass
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if "X" in names:
            return archive["X"]
        if len(names) == 1:
            return archive[names[0]]
    raise ValueError(
        f"{path} holds arrays {names}; bnmf reads the one named 'X' or a file with a single array."
    )


def read_matrix(path):
    """Read a features × samples matrix.

    * ``.csv``, ``.tsv``, ``.txt`` (optionally ``.gz``): the first column holds feature names
      and the header holds sample names, as in SigProfiler matrices; returns a DataFrame.
    * ``.npz``: a SciPy sparse matrix (``save_npz``) or a NumPy archive with an array ``X``.
    * ``.mtx`` / ``.mtx.gz``: Matrix Market, returned as a sparse matrix.
    * ``.h5ad``: AnnData (cells × genes; needs the ``anndata`` package), transposed later.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    name = path.name.lower()
    stem = name.removesuffix(".gz")
    if stem.endswith((".csv", ".tsv", ".txt")):
        sep = "," if stem.endswith(".csv") else "\t"
        return pd.read_csv(path, sep=sep, index_col=0)
    if stem.endswith(".npz"):
        return _read_npz(path)
    if stem.endswith(".mtx"):
        return sp.csr_matrix(scipy.io.mmread(path))
    if stem.endswith(".h5ad"):
        try:
            import anndata
        except ImportError as err:
            raise ImportError("reading .h5ad needs the anndata package: pip install anndata") from err
        return anndata.read_h5ad(path)
    raise ValueError(
        f"cannot tell the format of {path.name}: use .csv/.tsv (first column = feature names), "
        ".npz, .mtx or .h5ad."
    )
