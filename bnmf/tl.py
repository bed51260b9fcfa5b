"""scanpy-style tools: ``bnmf.tl.nmf(adata, rank)`` fits an AnnData and writes the result into it.

The layout is that of :meth:`bnmf.Fit.to_anndata`; ``anndata`` stays an optional dependency.
"""

from __future__ import annotations

from .fitting import fit as _fit
from .posterior import _import_anndata

__all__ = ["nmf"]


def nmf(adata, rank: int, *, key: str = "bnmf", layer: str | None = None, prob: float = 0.9,
        **fit_options):
    """Bayesian NMF of an AnnData's cells × genes matrix, written back into the AnnData.

    ``bnmf.tl.nmf(adata, 8)`` is ``bnmf.fit(adata, 8, ...)`` followed by
    ``fit.to_anndata(adata, key, prob)``: activities and their intervals in
    ``obsm["X_<key>"]``, program shares in ``obs["<key>_<k>"]`` (what
    ``scanpy.pl.embedding(..., color=...)`` colours by), programs in ``varm["<key>_W"]`` and
    the fit's metadata and program table in ``uns[key]``. Like ``scanpy.tl`` functions it
    changes ``adata`` in place.

    Parameters
    ----------
    adata : AnnData
        Cells × genes; ``adata.X``, or ``adata.layers[layer]`` (e.g. raw counts in
        ``layers["counts"]`` for the Poisson model).
    rank : int
    key, prob :
        As :meth:`bnmf.Fit.to_anndata`.
    **fit_options
        Passed to :func:`bnmf.fit` (``model``, ``method``, ``seed``, ``num_draws``, ...).

    Returns
    -------
    Fit
        The fit itself (e.g. to save the full posterior with ``fit.save``).
    """
    anndata = _import_anndata()
    if not isinstance(adata, anndata.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    data = adata
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"adata has no layer {layer!r}; it has {sorted(adata.layers)}.")
        data = anndata.AnnData(X=adata.layers[layer], obs=adata.obs[[]], var=adata.var[[]])
    result = _fit(data, rank, **fit_options)
    result.to_anndata(adata, key=key, prob=prob)
    return result
