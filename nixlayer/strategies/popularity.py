"""``popularity``: the layering nixpkgs' buildLayeredImage used for years."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from nixlayer.strategies.reach import Indexed, indexed, indexed_reach_sums, name_order_key


def path_counts(graph: nx.DiGraph, roots: Sequence[str]) -> dict[str, int]:
    """W(u): the number of distinct directed paths from any root to u.

    One pass in topological order, O(V + E) big-integer additions; the counts
    grow exponentially with depth, so they are exact Python integers.
    """
    ix = indexed(graph)
    return dict(zip(ix.nodes, _path_counts(ix, roots), strict=True))


def _path_counts(ix: Indexed, roots: Sequence[str]) -> list[int]:
    root_set = set(roots)
    counts = [0] * len(ix.nodes)
    for node in ix.order:
        counts[node] = (ix.nodes[node] in root_set) + sum(map(counts.__getitem__, ix.pred[node]))
    return counts


def popularity_scores(graph: nx.DiGraph, roots: Sequence[str]) -> dict[str, int]:
    """The popularity of x: the sum of W(u) over every u from which x is reachable,
    x included; what nixpkgs' closure-graph.py computes by expanding the graph
    into trees, here without expanding anything (see ``reach_sums``).
    """
    ix = indexed(graph)
    scores = indexed_reach_sums(ix, _path_counts(ix, roots), upstream=True)
    return dict(zip(ix.nodes, scores, strict=True))


def popularity(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """buildLayeredImage's layering: the ``budget - 1`` most popular paths get a layer
    each, most popular at the bottom, and all the others share the top layer.

    Cost: that of ``popularity_scores`` plus a sort, O(V log V).
    """
    scores = popularity_scores(graph, roots)
    ordered = sorted(graph, key=lambda p: (-scores[p], *name_order_key(p)))
    solo, rest = ordered[: budget - 1], ordered[budget - 1 :]
    return [[path] for path in solo] + ([rest] if rest else [])
