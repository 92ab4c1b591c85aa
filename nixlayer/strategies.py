"""Layering strategies: pure functions from a graph, its roots and a layer budget to
groups of store paths, bottom layer first.

Every strategy returns a partition of the graph's nodes into at most ``budget``
non-empty groups; ``plan.make_plan`` checks that invariant for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx

Strategy = Callable[[nx.DiGraph, Sequence[str], int], list[list[str]]]


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
    into trees.

    The sum is over the *set* of ancestors, so it cannot be a plain path sum.
    Ancestor sets are built in topological order by extending the largest
    parent's set (stolen, not copied, when x is its last child) with what the
    other parents add, and each is freed once its last child is done: time is
    O(sum of ancestor-set sizes), memory that of the sets still live, far
    below the trees the nixpkgs script expands.
    """
    counts = path_counts(graph, roots)
    children_left = {node: graph.out_degree(node) for node in graph}
    ancestors: dict[str, set[str]] = {}
    scores: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        parents = list(graph.predecessors(node))
        own: set[str] = set()
        score = 0
        if parents:
            base = max(parents, key=lambda p: len(ancestors[p]))
            for parent in parents:
                children_left[parent] -= 1
            own = ancestors.pop(base) if children_left[base] == 0 else set(ancestors[base])
            score = scores[base]
            for parent in parents:
                if parent != base:
                    added = ancestors[parent] - own
                    own |= added
                    score += sum(counts[u] for u in added)
                    if children_left[parent] == 0:
                        del ancestors[parent]
        own.add(node)
        scores[node] = score + counts[node]
        if children_left[node]:
            ancestors[node] = own
    return scores


def name_order_key(path: str) -> tuple[str, str]:
    """Ties are broken by ``name-version`` (the part after the hash), then the hash,
    so that the order does not move when only hashes change."""
    basename = path.rsplit("/", 1)[1]
    return basename[33:], basename[:32]


def popularity(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """buildLayeredImage's layering: the ``budget - 1`` most popular paths get a layer
    each, most popular at the bottom, and all the others share the top layer.

    Cost: that of ``popularity_scores`` plus a sort, O(V log V).
    """
    scores = popularity_scores(graph, roots)
    ordered = sorted(graph, key=lambda p: (-scores[p], *name_order_key(p)))
    solo, rest = ordered[: budget - 1], ordered[budget - 1 :]
    return [[path] for path in solo] + ([rest] if rest else [])


STRATEGIES: dict[str, Strategy] = {"popularity": popularity}
