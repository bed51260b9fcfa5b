"""Real data bundled with bnmf, and readers for SBS96 files a user supplies.

Bundled (provenance in ``bnmf/_data/README.md``): the 21-breast-cancer catalogue and the
PCAWG 2018 SigProfiler SBS96 signatures (CC BY 4.0). COSMIC v3.x signatures are under COSMIC's
own terms, so bnmf reads them from the user's file (:func:`read_sbs96`).

Every SBS96 table bnmf returns has its 96 rows in one canonical order, :data:`SBS96_CHANNELS`
(SigProfiler's: by 5' base, then substitution, then 3' base, ``A[C>A]A, A[C>A]C, ...``);
:func:`to_sbs96` reorders any input to it.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pandas as pd

__all__ = [
    "BREAST21_CITATION",
    "PCAWG_SIGNATURES_CITATION",
    "SBS96_CHANNELS",
    "load_breast21",
    "load_breast_dbs78",
    "load_pcawg_signatures",
    "read_sbs96",
    "to_sbs96",
]

BREAST21_CITATION = (
    "Nik-Zainal S. et al. Mutational processes molding the genomes of 21 breast cancers. "
    "Cell 149:979-993 (2012)."
)
PCAWG_SIGNATURES_CITATION = (
    "Alexandrov L.B. et al. The repertoire of mutational signatures in human cancer. "
    "Nature 578:94-101 (2020). CC BY 4.0."
)

SUBSTITUTIONS = ("C>A", "C>G", "C>T", "T>A", "T>C", "T>G")
SBS96_CHANNELS = tuple(f"{left}[{sub}]{right}" for left in "ACGT" for sub in SUBSTITUTIONS
                       for right in "ACGT")
_BRACKET = re.compile(r"^([ACGT])\[([CT])>([ACGT])\]([ACGT])$")
_TRINUCLEOTIDE = re.compile(r"^([ACGT])([CT])([ACGT])$")


def _read_bundled(name: str) -> pd.DataFrame:
    with files("bnmf").joinpath(f"_data/{name}").open("rb") as handle:
        return pd.read_csv(handle, index_col=0, compression="gzip")


def load_breast21() -> pd.DataFrame:
    """SBS96 counts of 21 breast cancer genomes: a DataFrame of 96 channels × 21 samples."""
    return to_sbs96(_read_bundled("breast21_sbs96_counts.csv.gz"))


def load_breast_dbs78() -> pd.DataFrame:
    """DBS78 (doublet-base substitution) counts of 6 of the 21 breast cancer genomes of
    :func:`load_breast21` (PD3851a, PD3890a, PD3904a, PD3905a, PD3945a, PD4005a): 78 channels
    (``AC>CA``, ...) × 6 samples, 320 doublets in all. With :func:`load_breast21` a two-view
    data set on shared samples (SBS96 for 21, DBS78 for 6 of them) for multi-view NMF."""
    return _read_bundled("breast6_dbs78_counts.csv.gz")


def load_pcawg_signatures() -> pd.DataFrame:
    """The 65 PCAWG SigProfiler SBS96 signatures (2018-03-28): 96 channels × 65, columns sum
    to 1. Cite :data:`PCAWG_SIGNATURES_CITATION`."""
    return to_sbs96(_read_bundled("PCAWG_SigProfiler_SBS96_signatures_2018_03_28.csv.gz"))


def _channel_label(label) -> str | None:
    """``A[C>A]A`` from ``A[C>A]A`` (any case/spacing); None when it is not an SBS96 label."""
    text = re.sub(r"\s+", "", str(label)).upper()
    return text if _BRACKET.match(text) else None


def to_sbs96(frame: pd.DataFrame) -> pd.DataFrame:
    """Reorder an SBS96 table (channels as rows) to :data:`SBS96_CHANNELS`.

    Raises
    ------
    ValueError
        When the rows are not exactly the 96 channels, naming what is missing or unexpected.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"to_sbs96 expects a DataFrame with channels as rows, got "
                        f"{type(frame).__name__}.")
    labels = [_channel_label(label) for label in frame.index]
    bad = [str(orig) for orig, label in zip(frame.index, labels) if label is None]
    if bad:
        raise ValueError(
            f"{len(bad)} row labels are not SBS96 channels written like 'A[C>A]A' (e.g. "
            f"{bad[:3]}); give one row per channel, pyrimidine reference (C or T)."
        )
    renamed = frame.set_axis(pd.Index(labels, name=frame.index.name), axis=0)
    if renamed.index.has_duplicates:
        raise ValueError(f"duplicate SBS96 channels {sorted(set(renamed.index[renamed.index.duplicated()]))[:3]}.")
    missing = [c for c in SBS96_CHANNELS if c not in renamed.index]
    if missing:
        raise ValueError(f"{len(missing)} SBS96 channels are missing (e.g. {missing[:3]}); "
                         "an SBS96 table needs all 96.")
    return renamed.loc[list(SBS96_CHANNELS)]


def read_sbs96(path) -> pd.DataFrame:
    """Read an SBS96 matrix (signatures or catalogue) in SigProfiler or COSMIC layout.

    Accepted layouts (CSV, TSV or TXT, optionally gzipped):

    * SigProfiler / COSMIC v3.x: first column ``Type`` or ``MutationType`` holding ``A[C>A]A``
      labels, then one numeric column per signature or sample;
    * COSMIC v2 (legacy): columns ``Substitution Type`` (``C>A``) and ``Trinucleotide``
      (``ACA``), optional text columns such as ``Somatic Mutation Type``, then numeric columns.

    Returns
    -------
    DataFrame of 96 rows in :data:`SBS96_CHANNELS` order, one numeric column per signature or
    sample.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such SBS96 file: {path}")
    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    table = pd.read_csv(path, sep=sep)
    columns = {str(c).strip().lower(): c for c in table.columns}
    if "substitution type" in columns and "trinucleotide" in columns:
        sub = table[columns["substitution type"]].astype(str).str.strip()
        tri = table[columns["trinucleotide"]].astype(str).str.strip().str.upper()
        index = [f"{t[0]}[{s}]{t[2]}" if len(t) == 3 else t for s, t in zip(sub, tri)]
        table = table.drop(columns=[columns["substitution type"], columns["trinucleotide"]])
    else:
        first = table.columns[0]
        index = table[first].tolist()
        table = table.drop(columns=[first])
    table.index = pd.Index(index, name="MutationType")
    numeric = table.select_dtypes("number")
    if numeric.shape[1] == 0:
        raise ValueError(f"{path.name} has no numeric columns after the channel labels.")
    return to_sbs96(numeric)
