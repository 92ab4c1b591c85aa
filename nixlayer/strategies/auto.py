"""``auto``: the layering nixpkgs' buildLayeredImage uses by default today
(``auto-layer.py``), kept for comparison."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import networkx as nx

from nixlayer.strategies.reach import name_order_key


def auto(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """Paths become primaries from the largest NAR size down. Every other path belongs
    to the set of primaries that reach it through no other primary: a dependency stays
    with the nearest primaries above it, and one shared by several unrelated
    primaries gets a layer of its own, keyed by that set. Adding primaries stops
    before the number of distinct sets would exceed the budget. Layers are ordered
    by the NAR size of their closure, ascending.

    Cost: O(V + E) per primary, so O(budget · (V + E)) in practice.
    """
    size = nx.get_node_attributes(graph, "nar_size")
    candidates = sorted(graph, key=lambda p: (size[p], name_order_key(p)), reverse=True)
    split: dict[str, frozenset[str]] = dict.fromkeys(graph, frozenset())
    for primary in candidates:
        attempt = _with_primary(graph, split, primary)
        if len(set(attempt.values())) > budget:
            break
        split = attempt
    members: dict[frozenset[str], list[str]] = defaultdict(list)
    for path, key in split.items():
        members[key].append(path)
    groups = [sorted(paths, key=name_order_key) for paths in members.values()]
    return sorted(groups, key=lambda group: (_closure_size(graph, group, size), group[0]))


def _with_primary(
    graph: nx.DiGraph, split: dict[str, frozenset[str]], primary: str
) -> dict[str, frozenset[str]]:
    attempt = dict(split)
    attempt[primary] = frozenset({primary})
    dependencies = nx.descendants(graph, primary)
    users = nx.ancestors(graph, primary)
    for dependency in dependencies:
        key = attempt[dependency] - users
        if not key & dependencies:
            key |= {primary}
        attempt[dependency] = key
    return attempt


def _closure_size(graph: nx.DiGraph, group: list[str], size: dict[str, int]) -> int:
    closure = set(group).union(*(nx.descendants(graph, path) for path in group))
    return sum(size[path] for path in closure)
