"""The dependency graph of a closure: an edge from each store path to each reference."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError


def build_graph(closure: Closure) -> nx.DiGraph:
    """A ``DiGraph`` whose nodes are store paths, with attributes ``nar_size`` and
    ``references``: how many other paths of the closure it references, which a part
    of the graph (``induced``) keeps when its edges to the rest are gone.

    Self-references are dropped: Nix records them, but they say nothing about order.
    A cycle between distinct paths cannot come from Nix, so it is refused here
    rather than left to hang or mislead the strategies.
    """
    graph = nx.DiGraph()
    for store_path in closure.paths.values():
        references = len(store_path.references) - (store_path.path in store_path.references)
        graph.add_node(store_path.path, nar_size=store_path.nar_size, references=references)
    graph.add_edges_from(
        (store_path.path, ref)
        for store_path in closure.paths.values()
        for ref in store_path.references
        if ref != store_path.path
    )
    if nx.is_directed_acyclic_graph(graph):  # linear; find_cycle only to name the cycle
        return graph
    cycle = nx.find_cycle(graph)
    members = " -> ".join(edge[0] for edge in cycle)
    raise NixlayerError(f"{closure.source}: the references form a cycle: {members}")


def induced(graph: nx.DiGraph, keep: set[str]) -> nx.DiGraph:
    """The part of the graph on ``keep`` as a graph of its own, nodes in the same
    order; the graph itself when it keeps everything. (A networkx subgraph view makes
    every lookup slow, and copying one takes seconds on 200,000 paths.)"""
    if len(keep) == graph.number_of_nodes():
        return graph
    part = nx.DiGraph()
    part.add_nodes_from((node, data) for node, data in graph.nodes(data=True) if node in keep)
    part.add_edges_from((user, ref) for user in part for ref in graph.succ[user] if ref in keep)
    return part


def find_roots(graph: nx.DiGraph, explicit: Iterable[str] = (), source: str = "") -> list[str]:
    """The paths the image is for: those given, or else those nothing references."""
    explicit = list(explicit)
    for root in explicit:
        if root not in graph:
            raise NixlayerError(f"--root {root}: not a path of the closure {source}")
    if explicit:
        return sorted(set(explicit))
    return sorted(node for node, degree in graph.in_degree() if degree == 0)
