"""Sums over what each store path reaches, without materialising the transitive closure
of the whole graph at once."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx


def reach_sums(graph: nx.DiGraph, weights: Mapping[str, int], upstream: bool) -> dict[str, int]:
    """For every node x, the sum of ``weights[u]`` over the *set* of nodes u that reach
    x (``upstream``: x's ancestors) or that x reaches (x's dependencies), x included.

    A set, not a path sum: a node reached along two paths counts once. The sets are
    built in topological order by extending the largest neighbour's set (taken over,
    not copied, when x is its last user) with what the other neighbours add, and each
    is freed once no node still needs it: time O(sum of set sizes), memory that of
    the sets still live.
    """
    order = list(nx.topological_sort(graph))
    if upstream:
        before, after = graph.predecessors, graph.out_degree
    else:
        order.reverse()
        before, after = graph.successors, graph.in_degree
    users_left = {node: after(node) for node in graph}
    reached: dict[str, set[str]] = {}
    sums: dict[str, int] = {}
    for node in order:
        sources = list(before(node))
        own: set[str] = set()
        total = 0
        if sources:
            base = max(sources, key=lambda s: len(reached[s]))
            for source in sources:
                users_left[source] -= 1
            own = reached.pop(base) if users_left[base] == 0 else set(reached[base])
            total = sums[base]
            for source in sources:
                if source != base:
                    added = reached[source] - own
                    own |= added
                    total += sum(map(weights.__getitem__, added))
                    if users_left[source] == 0:
                        del reached[source]
        own.add(node)
        sums[node] = total + weights[node]
        if users_left[node]:
            reached[node] = own
    return sums


def closure_counts(graph: nx.DiGraph) -> dict[str, int]:
    """How many store paths each path's closure holds (itself included): how many
    upgrades would rebuild it, since a path changes when anything it needs does."""
    return reach_sums(graph, dict.fromkeys(graph, 1), upstream=False)


def name_order_key(path: str) -> tuple[str, str]:
    """Ties are broken by ``name-version`` (the part after the hash), then the hash,
    so that the order does not move when only hashes change."""
    basename = path.rsplit("/", 1)[1]
    return basename[33:], basename[:32]
