"""Layering strategies: pure functions from a graph (nodes carry ``nar_size``), its
roots and a layer budget to groups of store paths, bottom layer first.

Every strategy returns a partition of the graph's nodes into at most ``budget``
non-empty groups; ``plan.make_plan`` checks that invariant for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nixlayer.graph import PathGraph
from nixlayer.strategies.auto import auto, auto_indexed
from nixlayer.strategies.cochange import cochange, cochange_indexed
from nixlayer.strategies.popularity import popularity, popularity_indexed

if TYPE_CHECKING:
    import networkx as nx

Strategy = Callable[["nx.DiGraph", Sequence[str], int], list[list[str]]]
IndexedStrategy = Callable[[PathGraph, Sequence[str], int], list[list[str]]]

DEFAULT_STRATEGY = "cochange"
STRATEGIES: dict[str, Strategy] = {"cochange": cochange, "popularity": popularity, "auto": auto}
# The same strategies on the graph as ``graph.path_graph`` makes it: what ``make_plan`` runs.
INDEXED_STRATEGIES: dict[str, IndexedStrategy] = {
    "cochange": cochange_indexed,
    "popularity": popularity_indexed,
    "auto": auto_indexed,
}
