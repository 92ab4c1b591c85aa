"""``cochange``: nixlayer's default. Paths that change together share a layer; a path
never rides in a layer that changes more often than it is worth.

Under Nix, a store path is rebuilt whenever anything in its closure is, so a path
with a closure of c paths changes with any of c upgrades. If a path v sits in a
layer whose top path t depends on it, every change of v changes t as well (the
layer would be pushed anyway), and v is pushed needlessly only when t changes
without v: about ``size(v) * (c(t) - c(v))`` bytes over all possible upgrades.
That is the price of not giving v a layer of its own.

The strategy makes one pass down the graph: each path joins the layer of the
parent whose layer changes least often, if its price is at most a threshold θ,
and starts a layer of its own otherwise. θ is the smallest power of two that
keeps the layer count within budget. Each decision depends only on the path, its
parents and θ, and θ moves in powers of two, so an upgrade elsewhere in the graph
leaves these layers exactly as they were; big paths (a large price) keep layers
of their own, and the application, with the largest closure, is never a layer
that big dependencies ride in. Layers are ordered by how often they change,
least first, so that the layers docker must reload after the lowest change are few.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import networkx as nx

from nixlayer.strategies.reach import closure_counts, name_order_key

_MAX_EXPONENT = 128


def _tops(
    graph: nx.DiGraph, order: list[str], counts: dict[str, int], theta: int
) -> dict[str, str]:
    """Each path's layer, named by its top path, for a threshold θ."""
    size = graph.nodes
    top: dict[str, str] = {}
    for node in order:
        candidates = [top[parent] for parent in graph.predecessors(node)]
        if candidates:
            best = min(candidates, key=lambda t: (counts[t], name_order_key(t)))
            if size[node]["nar_size"] * (counts[best] - counts[node]) <= theta:
                top[node] = best
                continue
        top[node] = node
    return top


def _layer_count(tops: dict[str, str]) -> int:
    return len(set(tops.values()))


def cochange(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """See the module's docstring. Cost: O(V + E) per threshold tried, about
    log2(128) = 7 of them, plus the closure counts (see ``closure_counts``)."""
    counts = closure_counts(graph)
    order = list(nx.lexicographical_topological_sort(graph, key=name_order_key))
    low, high = -1, _MAX_EXPONENT  # 2**high always fits, unless roots alone exceed it
    while high - low > 1:
        middle = (low + high) // 2
        if _layer_count(_tops(graph, order, counts, 2**middle)) <= budget:
            high = middle
        else:
            low = middle
    tops = _tops(graph, order, counts, 0 if high < 0 else 2**high)
    members: dict[str, list[str]] = defaultdict(list)
    for node, top in tops.items():
        members[top].append(node)
    ordered = sorted(members, key=lambda t: (counts[t], name_order_key(t)))
    return _within_budget([members[t] for t in ordered], graph, budget)


def _within_budget(groups: list[list[str]], graph: nx.DiGraph, budget: int) -> list[list[str]]:
    """When there are more roots than layers, the smallest layers share the top one."""
    if len(groups) <= budget:
        return groups
    size = nx.get_node_attributes(graph, "nar_size")
    by_size = sorted(range(len(groups)), key=lambda i: sum(size[p] for p in groups[i]))
    merged = set(by_size[: len(groups) - budget + 1])
    kept = [group for i, group in enumerate(groups) if i not in merged]
    return [*kept, [path for i in sorted(merged) for path in groups[i]]]
