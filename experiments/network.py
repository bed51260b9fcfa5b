"""Network NMF on real and simulated graphs: the karate club's factions, Les Misérables'
communities, and planted overlapping communities against scikit-learn's NMF.

Writes experiments/results/network.md.

    nice -n 10 python experiments/network.py
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
from sklearn.decomposition import NMF
from sklearn.metrics import adjusted_rand_score

import bnmf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers import aligned_cosines, planted_overlapping_graph  # noqa: E402


def karate(lines):
    G = nx.karate_club_graph()
    factions = np.array([G.nodes[v]["club"] == "Officer" for v in G.nodes], dtype=int)
    start = time.perf_counter()
    fit = bnmf.fit_network(G, 2, seed=0)
    seconds = time.perf_counter() - start
    ari = adjusted_rand_score(factions, fit.assignments())
    prob = fit.assignment_probability()
    amb90, amb50 = fit.ambiguous(0.9), fit.ambiguous(0.5)
    labels = fit.assignments().to_numpy()
    if (labels == factions).mean() < 0.5:  # community labels are arbitrary
        labels = 1 - labels
    misassigned = [int(v) for v in np.nonzero(labels != factions)[0]]
    lower, upper = fit.interval(0.9)["W"]
    lines += [
        "## Karate club (Zachary 1977; networkx's `karate_club_graph`, 34 nodes, 78 edges)", "",
        f"`bnmf.fit_network(G, 2, seed=0)` (Gibbs, 2 chains × 500 draws after 500 warmup, from "
        f"the best of 8 ECM starts; {seconds:.0f} s including compilation).", "",
        f"- Adjusted Rand index of the argmax memberships against the two factions (Mr. Hi / "
        f"Officer): **{ari:.3f}**.",
        f"- Nodes whose main community is not their faction's: {misassigned}.",
        f"- Ambiguous at 90% (the 90% interval of the node's share spans both communities; "
        f"P(main community) < 0.95): {len(amb90)} of 34 nodes: {amb90}.",
        f"- Ambiguous at 50% (P(main community) < 0.75): {amb50}.",
        f"- Certain (P ≥ 0.95): {list(prob.index[prob >= 0.95])}.",
        "",
        "Posterior probability that each node's largest membership is its main community:", "",
        "| node | faction | main community | P | W_0 (90% interval) | W_1 (90% interval) |",
        "|---|---|---|---|---|---|",
    ]
    W = np.asarray(fit.W)
    for v in range(34):
        lines.append(f"| {v} | {'Officer' if factions[v] else 'Mr. Hi'} | "
                     f"{fit.assignments().iloc[v]} | {prob.iloc[v]:.2f} | "
                     f"{W[v, 0]:.2f} ({np.asarray(lower)[v, 0]:.2f}–{np.asarray(upper)[v, 0]:.2f}) | "
                     f"{W[v, 1]:.2f} ({np.asarray(lower)[v, 1]:.2f}–{np.asarray(upper)[v, 1]:.2f}) |")
    lines.append("")


def les_miserables(lines):
    G = nx.les_miserables_graph()
    fit = bnmf.fit_network(G, 6, seed=0)
    W = np.asarray(fit.W)
    communities = fit.communities(prob=0.9)
    lines += ["## Les Misérables (Knuth 1993; networkx's `les_miserables_graph`, 77 characters, "
              "254 co-appearance edges), rank 6", "",
              "`bnmf.fit_network(G, 6, seed=0)`; per community: the 6 characters with the largest "
              "posterior mean membership, and how many characters `communities(prob=0.9)` puts "
              "in it (P(W_ik > δ) ≥ 0.9, δ BigCLAM's density threshold).", "",
              "| community | top members | members at 90% |", "|---|---|---|"]
    nodes = list(G.nodes)
    for k in range(6):
        top = [nodes[i] for i in np.argsort(-W[:, k])[:6]]
        lines.append(f"| {k} | {', '.join(top)} | {len(communities[k])} |")
    overlap = [v for v in nodes if sum(v in c for c in communities.values()) > 1]
    lines += ["", f"Characters in more than one community at 90%: {overlap}.", ""]


def planted(lines):
    lines += ["## Planted overlapping communities", "",
              "`tests/helpers.planted_overlapping_graph`: 150 nodes, 4 communities, 30% of nodes "
              "in a second community at half weight, degree factors Gamma(4, 1/4). Recovery = "
              "mean over communities of the cosine between true and Hungarian-matched estimated "
              "membership columns. scikit-learn: `NMF(4, init='nndsvda')` on A (A ≈ W H, W "
              "taken).", "",
              "| seed | bnmf MAP | bnmf Gibbs | scikit-learn NMF |", "|---|---|---|---|"]
    results = []
    for seed in range(3):
        A, W_true = planted_overlapping_graph(n_nodes=150, rank=4, seed=seed)
        ours_map = aligned_cosines(bnmf.fit_network(A, 4, method="map", seed=seed).W, W_true)[0]
        ours = aligned_cosines(bnmf.fit_network(A, 4, seed=seed).W, W_true)[0]
        W_nmf = NMF(4, init="nndsvda", max_iter=1000, random_state=seed).fit_transform(A)
        theirs = aligned_cosines(W_nmf, W_true)[0]
        results.append((ours_map.mean(), ours.mean(), theirs.mean()))
        lines.append(f"| {seed} | {ours_map.mean():.3f} | {ours.mean():.3f} | "
                     f"{theirs.mean():.3f} |")
    mean = np.mean(results, axis=0)
    lines += [f"| mean | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |", ""]


def main():
    lines = ["# Network NMF", "",
             f"Command: `nice -n 10 python experiments/network.py` ({platform.machine()}, 2 "
             "shared CPU cores).", ""]
    for part in (karate, planted, les_miserables):
        part(lines)
        (HERE / "results" / "network.md").write_text("\n".join(lines))
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
