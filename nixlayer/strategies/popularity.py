"""``popularity``: the layering nixpkgs' buildLayeredImage used for years."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from nixlayer.strategies.reach import name_order_key, reach_sums


def path_counts(graph: nx.DiGraph, roots: Sequence[str]) -> dict[str, int]:
    """W(u): the number of distinct directed paths from any root to u.

    One pass in topological order, O(V + E) big-integer additions; the counts
    grow exponentially with depth, so they are exact Python integers.
    """
    root_set = set(roots)
    counts: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        counts[node] = (node in root_set) + sum(counts[p] for p in graph.predecessors(node))
    return counts


def popularity_scores(graph: nx.DiGraph, roots: Sequence[str]) -> dict[str, int]:
    """The popularity of x: the sum of W(u) over every u from which x is reachable,
    x included; what nixpkgs' closure-graph.py computes by expanding the graph
    into trees, here without expanding anything (see ``reach_sums``).
    """
    return reach_sums(graph, path_counts(graph, roots), upstream=True)


def popularity(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """buildLayeredImage's layering: the ``budget - 1`` most popular paths get a layer
    each, most popular at the bottom, and all the others share the top layer.

    Cost: that of ``popularity_scores`` plus a sort, O(V log V).
    """
    scores = popularity_scores(graph, roots)
    ordered = sorted(graph, key=lambda p: (-scores[p], *name_order_key(p)))
    solo, rest = ordered[: budget - 1], ordered[budget - 1 :]
    return [[path] for path in solo] + ([rest] if rest else [])
