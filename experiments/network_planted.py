"""Planted overlapping communities at three edge densities: bnmf.fit_network's MAP against
scikit-learn's NMF on the adjacency matrix (mean Hungarian-matched cosine of the membership
columns with the truth). Prints one line per graph: strength, nodes, seed, edges, bnmf, NMF.

    python experiments/network_planted.py
"""

import sys
from pathlib import Path

import bnmf
from sklearn.decomposition import NMF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import aligned_cosines, planted_overlapping_graph  # noqa: E402

for strength, n in [(0.3, 200), (0.4, 200), (0.6, 150)]:
    for seed in range(3):
        A, W_true = planted_overlapping_graph(n_nodes=n, rank=4, strength=strength, seed=seed)
        ours = aligned_cosines(bnmf.fit_network(A, 4, method="map", seed=seed).W, W_true)[0]
        W_nmf = NMF(4, init="nndsvda", max_iter=1000, random_state=seed).fit_transform(A)
        theirs = aligned_cosines(W_nmf, W_true)[0]
        print(strength, n, seed, int(A.sum() / 2), round(ours.mean(), 3), round(theirs.mean(), 3),
              flush=True)
