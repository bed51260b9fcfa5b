"""Small real data sets bundled with bnmf (provenance in ``bnmf/_data/README.md``)."""

from __future__ import annotations

from importlib.resources import files

import pandas as pd

__all__ = ["load_breast21", "BREAST21_CITATION"]

BREAST21_CITATION = (
    "Nik-Zainal S. et al. Mutational processes molding the genomes of 21 breast cancers. "
    "Cell 149:979-993 (2012)."
)


def load_breast21() -> pd.DataFrame:
    """SBS96 counts of 21 breast cancer genomes: a DataFrame of 96 channels × 21 samples."""
    with files("bnmf").joinpath("_data/breast21_sbs96_counts.csv.gz").open("rb") as handle:
        return pd.read_csv(handle, index_col=0, compression="gzip")
