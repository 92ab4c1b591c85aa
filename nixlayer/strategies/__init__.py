"""Layering strategies: pure functions from a graph (nodes carry ``nar_size``), its
roots and a layer budget to groups of store paths, bottom layer first.

Every strategy returns a partition of the graph's nodes into at most ``budget``
non-empty groups; ``plan.make_plan`` checks that invariant for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx

from nixlayer.strategies.auto import auto
from nixlayer.strategies.cochange import cochange
from nixlayer.strategies.popularity import popularity

Strategy = Callable[[nx.DiGraph, Sequence[str], int], list[list[str]]]

DEFAULT_STRATEGY = "cochange"
STRATEGIES: dict[str, Strategy] = {"cochange": cochange, "popularity": popularity, "auto": auto}
