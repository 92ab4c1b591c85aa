"""``popularity``: the layering nixpkgs' buildLayeredImage used for years."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nixlayer.graph import Indexed, PathGraph
from nixlayer.strategies.reach import indexed, indexed_reach_sums, name_order_key, of_networkx

if TYPE_CHECKING:
    import networkx as nx


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
    """``popularity_indexed`` on a networkx graph of store paths."""
    return popularity_indexed(of_networkx(graph), roots, budget)


def popularity_indexed(graph: PathGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """buildLayeredImage's layering: the ``budget - 1`` most popular paths get a layer
    each, most popular at the bottom, and all the others share the top layer.

    Only the paths that could be among the most popular are scored exactly (see
    ``_contenders``): on a 200,000-path graph a few hundred, which spares summing the
    sets of all the others. Cost: that of ``popularity_scores`` at most, plus a sort.
    """
    ix = graph.ix
    counts = _path_counts(ix, roots)
    contenders = _contenders(ix, counts, budget - 1)
    scores = indexed_reach_sums(ix, counts, upstream=True, wanted=contenders)
    ranked = sorted(
        (n for n, contender in enumerate(contenders) if contender),
        key=lambda n: (-scores[n], *name_order_key(ix.nodes[n])),
    )
    solo = [ix.nodes[n] for n in ranked[: budget - 1]]
    rest = sorted(set(ix.nodes) - set(solo), key=name_order_key)
    return [[path] for path in solo] + ([rest] if rest else [])


def _contenders(ix: Indexed, counts: list[int], keep: int) -> list[bool]:
    """The paths whose popularity could place them among the ``keep`` most popular.

    A path's ancestors include each user's ancestors, and are at most all of them
    together, so its popularity lies between its count plus its most popular user's
    score and its count plus the sum of its users' scores. Bounding those scores in
    turn gives a lower and an upper bound for every path in one pass; a path whose
    upper bound is below the ``keep``-th largest lower bound cannot be among them.
    """
    if keep < 1:
        return [False] * len(counts)
    lower, upper = [0] * len(counts), [0] * len(counts)
    for node in ix.order:  # users first
        users = ix.pred[node]
        lower[node] = counts[node] + max((lower[u] for u in users), default=0)
        upper[node] = counts[node] + sum(upper[u] for u in users)
    if keep >= len(counts):
        return [True] * len(counts)
    threshold = heapq.nlargest(keep, lower)[-1]
    return [bound >= threshold for bound in upper]
