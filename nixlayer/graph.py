"""The dependency graph of a closure: an edge from each store path to each reference.

Planning works on ``PathGraph``, the graph as lists of integers built straight from
the ``Closure`` in one pass, whose topological order is its check that there is no
cycle. ``build_graph`` gives the same graph as a networkx ``DiGraph`` for whoever asks
for one; networkx is imported only then (it takes longer to import than to plan a
small closure).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError

if TYPE_CHECKING:
    import networkx as nx

Node = TypeVar("Node", bound=Hashable)


@dataclass(frozen=True)
class Indexed(Generic[Node]):
    """A graph as lists of integers, which the passes of the strategies walk many times
    faster than networkx's views: ``nodes[i]`` is node i, ``succ[i]`` and ``pred[i]``
    its neighbours' numbers, and ``order`` every node before what it reaches (users
    first): the reverse of a depth-first postorder along ``succ`` (see ``postorder``)."""

    nodes: list[Node]
    succ: list[list[int]]
    pred: list[list[int]]
    order: list[int]


@dataclass(frozen=True)
class PathGraph:
    """A closure's graph, or a part of it, as the strategies take it: ``ix`` over store
    paths, in the closure's order, each path's references (itself left out) in sorted
    order; by node number, ``sizes`` (NAR sizes) and ``references``, how many other
    paths of the whole closure it references, which a part keeps when its edges to the
    rest are gone. ``number`` maps a path to its node number."""

    ix: Indexed[str]
    sizes: list[int | None]
    references: list[int]
    number: dict[str, int]

    def __contains__(self, path: object) -> bool:
        return path in self.number

    def __len__(self) -> int:
        return len(self.ix.nodes)

    def sources(self) -> list[str]:
        """The paths nothing in this graph references, in node order."""
        return [node for node, users in zip(self.ix.nodes, self.ix.pred, strict=True) if not users]


def path_graph(closure: Closure) -> PathGraph:
    """The closure's graph, checked to have no cycle. Self-references are dropped: Nix
    records them, but they say nothing about order. A cycle between distinct paths
    cannot come from Nix, so it is refused here, naming its paths, rather than left to
    hang or mislead the strategies. Cost: O(V + E), one depth-first pass for the order
    and the check."""
    nodes = list(closure.paths)
    number = {path: i for i, path in enumerate(nodes)}
    lookup = number.__getitem__
    succ: list[list[int]] = []
    sizes: list[int | None] = []
    for path, store_path in closure.paths.items():
        references = store_path.references
        edges = list(map(lookup, references))
        if path in references:
            edges.remove(number[path])
        succ.append(edges)
        sizes.append(store_path.nar_size)
    pred = users_of(succ)
    order = postorder(succ, pred)
    if order is None:
        members = " -> ".join(nodes[n] for n in find_cycle(succ))
        raise NixlayerError(f"{closure.source}: the references form a cycle: {members}")
    ix = Indexed(nodes, succ, pred, order[::-1])
    return PathGraph(ix, sizes, [len(edges) for edges in succ], number)


def users_of(succ: list[list[int]]) -> list[list[int]]:
    """The reverse adjacency: for each node, the nodes whose edges lead to it, in
    ascending order."""
    pred: list[list[int]] = [[] for _ in succ]
    for i, edges in enumerate(succ):
        for s in edges:
            pred[s].append(i)
    return pred


def postorder(after: list[list[int]], before: list[list[int]]) -> list[int] | None:
    """Every node after all it reaches along ``after`` edges, in depth-first postorder
    from the nodes with no ``before`` neighbour, in node order: what a node reaches then
    ends just below it, in a few runs of consecutive positions. None if the edges form
    a cycle (an edge back into the path being walked, or nodes no start reaches)."""
    done = [False] * len(after)
    entered = [False] * len(after)
    order: list[int] = []
    for start in range(len(after)):
        if before[start]:
            continue
        entered[start] = True
        stack = [(start, iter(after[start]))]
        while stack:
            node, pending = stack[-1]
            for following in pending:
                if not entered[following]:
                    entered[following] = True
                    stack.append((following, iter(after[following])))
                    break
                if not done[following]:
                    return None
            else:
                stack.pop()
                done[node] = True
                order.append(node)
    return order if len(order) == len(after) else None


def find_cycle(succ: list[list[int]]) -> list[int]:
    """A cycle, as the nodes along it from where it closes: the first found by a
    depth-first walk from each node in turn, edges in order (the one networkx's
    ``find_cycle`` names). Only called once ``postorder`` has found one."""
    done = [False] * len(succ)
    on_path = [False] * len(succ)
    for start in range(len(succ)):
        if done[start]:
            continue
        path = [start]
        on_path[start] = True
        stack = [iter(succ[start])]
        while stack:
            for following in stack[-1]:
                if on_path[following]:
                    return path[path.index(following) :]
                if not done[following]:
                    path.append(following)
                    on_path[following] = True
                    stack.append(iter(succ[following]))
                    break
            else:
                stack.pop()
                node = path.pop()
                on_path[node] = False
                done[node] = True
    raise AssertionError("find_cycle: the graph has no cycle")


def build_graph(closure: Closure) -> nx.DiGraph:
    """The closure's graph as a networkx ``DiGraph`` whose nodes are store paths, with
    attributes ``nar_size`` and ``references`` (see ``PathGraph``), edges in the same
    order. Checked as ``path_graph`` checks it, with the same error for a cycle."""
    return to_networkx(path_graph(closure))


def to_networkx(graph: PathGraph) -> nx.DiGraph:
    """A ``PathGraph`` as a networkx ``DiGraph``, built in bulk from its adjacency."""
    import networkx as nx

    nodes = graph.ix.nodes
    result = nx.DiGraph()
    result.add_nodes_from(
        (node, {"nar_size": size, "references": references})
        for node, size, references in zip(nodes, graph.sizes, graph.references, strict=True)
    )
    result.add_edges_from(
        (user, nodes[ref])
        for user, edges in zip(nodes, graph.ix.succ, strict=True)
        for ref in edges
    )
    return result


def induced(graph: PathGraph, keep: set[str]) -> PathGraph:
    """The part of the graph on ``keep`` as a graph of its own, nodes and edges in the
    same order, the order of its walk its own; the graph itself when it keeps everything."""
    if len(keep) == len(graph):
        return graph
    kept = [n for n, node in enumerate(graph.ix.nodes) if node in keep]
    renumber = {old: new for new, old in enumerate(kept)}
    succ = [[renumber[s] for s in graph.ix.succ[n] if s in renumber] for n in kept]
    pred = users_of(succ)
    order = postorder(succ, pred)
    assert order is not None, "a part of a graph without cycles has none"
    nodes = [graph.ix.nodes[n] for n in kept]
    return PathGraph(
        Indexed(nodes, succ, pred, order[::-1]),
        [graph.sizes[n] for n in kept],
        [graph.references[n] for n in kept],
        {node: new for new, node in enumerate(nodes)},
    )


def find_roots(graph: PathGraph, explicit: Iterable[str] = (), source: str = "") -> list[str]:
    """The paths the image is for: those given, or else those nothing references."""
    explicit = list(explicit)
    for root in explicit:
        if root not in graph:
            raise NixlayerError(f"{root}: not a path of the closure {source}", "roots")
    if explicit:
        return sorted(set(explicit))
    return sorted(graph.sources())
