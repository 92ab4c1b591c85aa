"""Layering strategies: pure functions from a graph (a ``graph.PathGraph``, whose nodes
carry NAR sizes), its roots and a layer budget to groups of store paths, bottom layer
first. Each is also there for a networkx graph as ``graph.build_graph`` makes it:
``cochange``, ``popularity`` and ``auto`` in their modules.

Every strategy returns a partition of the graph's nodes into at most ``budget``
non-empty groups; ``plan.make_plan`` checks that invariant for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nixlayer.graph import PathGraph
from nixlayer.strategies.auto import auto_indexed
from nixlayer.strategies.cochange import cochange_indexed
from nixlayer.strategies.popularity import popularity_indexed

Strategy = Callable[[PathGraph, Sequence[str], int], list[list[str]]]

DEFAULT_STRATEGY = "cochange"
STRATEGIES: dict[str, Strategy] = {
    "cochange": cochange_indexed,
    "popularity": popularity_indexed,
    "auto": auto_indexed,
}
