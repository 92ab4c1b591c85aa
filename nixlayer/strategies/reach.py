"""Sums over what each store path reaches, without materialising the transitive closure
of the whole graph at once."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixlayer.graph import Indexed, PathGraph, postorder, users_of

if TYPE_CHECKING:
    import networkx as nx


def indexed(graph: nx.DiGraph) -> Indexed:
    """A networkx graph as an ``Indexed``, nodes and edges in its order; raises
    ``nx.NetworkXUnfeasible`` on a cycle."""
    adjacency = list(graph.adjacency())
    nodes = [node for node, _ in adjacency]
    number = {node: i for i, node in enumerate(nodes)}
    succ = [[number[s] for s in successors] for _, successors in adjacency]
    pred = users_of(succ)
    order = postorder(succ, pred)
    if order is None:
        import networkx as nx

        raise nx.NetworkXUnfeasible("the graph has a cycle")
    return Indexed(nodes, succ, pred, order[::-1])


def of_networkx(graph: nx.DiGraph) -> PathGraph:
    """A graph of store paths as ``graph.build_graph`` makes it (or any ``DiGraph`` whose
    nodes may carry ``nar_size`` and ``references``) as the strategies work on it; a
    node without ``references`` counts the edges it has."""
    ix = indexed(graph)
    sizes = [size for _, size in graph.nodes(data="nar_size")]
    references = [
        len(ix.succ[n]) if count is None else count
        for n, (_, count) in enumerate(graph.nodes(data="references"))
    ]
    return PathGraph(ix, sizes, references, {node: n for n, node in enumerate(ix.nodes)})


def reach_sums(graph: nx.DiGraph, weights: Mapping[str, int], upstream: bool) -> dict[str, int]:
    """For every node x, the sum of ``weights[u]`` over the *set* of nodes u that reach
    x (``upstream``: x's ancestors) or that x reaches (x's dependencies), x included.

    A set, not a path sum: a node reached along two paths counts once. See
    ``indexed_reach_sums`` for how.
    """
    ix = indexed(graph)
    sums = indexed_reach_sums(ix, [weights[node] for node in ix.nodes], upstream)
    return dict(zip(ix.nodes, sums, strict=True))


def indexed_reach_sums(
    ix: Indexed, weights: Sequence[int], upstream: bool, wanted: Sequence[bool] | None = None
) -> list[int]:
    """``reach_sums`` on an ``Indexed`` graph, with weights and sums by node number;
    with ``wanted``, only the sums of those nodes (the others are 0, see
    ``_wanted_sums``).

    The sets are bitsets (Python integers) of positions in a depth-first postorder
    (see ``_sets``). With one weight for all, a set's sum is that weight times its
    popcount; otherwise each run of consecutive positions adds a difference of two
    prefix sums (see ``_sum_of_runs``).
    """
    if wanted is not None:
        return _wanted_sums(ix, weights, upstream, wanted)
    walk = _Walk.of(ix, upstream)
    if len(set(weights)) <= 1:
        weight = weights[0] if weights else 0

        def summed(reached: int, low: int) -> int:
            return weight * reached.bit_count()

    else:
        prefix = walk.prefix_sums(weights)

        def summed(reached: int, low: int) -> int:
            return _sum_of_runs(reached, prefix, low)

    def sums(low: int, high: int) -> list[int]:
        result = [0] * len(weights)
        for node, reached in _sets(walk, low, high):
            result[node] = summed(reached, low)
        return result

    return _blockwise(walk, sums)


def _wanted_sums(
    ix: Indexed, weights: Sequence[int], upstream: bool, wanted: Sequence[bool]
) -> list[int]:
    """The sums of a few wanted nodes, the other way round: each node u gets the set of
    wanted nodes whose sum it adds to (those it reaches, for ``upstream``), a bitset
    of a few hundred bits; nodes with the same set pool their weights, and each pool
    is added to its set's nodes. O(E) small ORs and a pass over each pool's set bits,
    however large the sets of positions would be (upstream, where a hub's users all
    wait for it, they would all stay live).
    """
    targets = [node for node, chosen in enumerate(wanted) if chosen]
    own = [0] * len(weights)
    for j, node in enumerate(targets):
        own[node] = 1 << j
    edges, order = (ix.succ, ix.order[::-1]) if upstream else (ix.pred, ix.order)
    sets = [0] * len(weights)
    pools: dict[int, int] = {}
    for node in order:  # after every node it reaches along edges
        reached = own[node]
        for other in edges[node]:
            reached |= sets[other]
        sets[node] = reached
        pools[reached] = pools.get(reached, 0) + weights[node]
    sums = [0] * len(weights)
    for members, pooled in pools.items():
        while members:
            lowest = members & -members
            sums[targets[lowest.bit_length() - 1]] += pooled
            members ^= lowest
    return sums


def closure_sums(ix: Indexed, weights: Sequence[int], group_of: Sequence[int]) -> list[int]:
    """For groups of nodes (``group_of[i]``: node i's, numbered from 0): the sum of
    ``weights`` over the union of what the group's nodes reach, themselves included:
    each node's set (see ``_sets``) OR-ed into its group's, each group's summed once."""
    walk = _Walk.of(ix, upstream=False)
    prefix = walk.prefix_sums(weights)
    count = max(group_of, default=-1) + 1

    def sums(low: int, high: int) -> list[int]:
        groups = [0] * count
        for node, reached in _sets(walk, low, high):
            groups[group_of[node]] |= reached
        return [_sum_of_runs(members, prefix, low) for members in groups]

    return _blockwise(walk, sums)


@dataclass(frozen=True)
class _Walk:
    """One direction of reach: ``order`` has each node after all it reaches along
    ``edges``, ``users[i]`` the nodes whose edges lead to node i."""

    order: list[int]
    edges: list[list[int]]
    users: list[list[int]]

    @classmethod
    def of(cls, ix: Indexed, upstream: bool) -> _Walk:
        if upstream:
            order = postorder(ix.pred, ix.succ)
            assert order is not None, "the reverse of a graph without cycles has none"
            return cls(order, ix.pred, ix.succ)
        return cls(ix.order[::-1], ix.succ, ix.pred)

    def prefix_sums(self, weights: Sequence[int]) -> list[int]:
        """``prefix[k]``: the weights of the nodes at positions below k."""
        prefix = [0] * (len(self.order) + 1)
        for position, node in enumerate(self.order):
            prefix[position + 1] = prefix[position] + weights[node]
        return prefix


_LIVE_BITS = 1 << 32  # 512 MiB of live sets: beyond, a pass covers half the positions


class _TooLarge(Exception):
    """The sets still needed exceed ``_LIVE_BITS``."""


def _sets(walk: _Walk, low: int, high: int) -> Iterator[tuple[int, int]]:
    """Each node at position ``low`` or above with the set of the positions from ``low``
    to ``high`` that it reaches, itself included (bit k: position low + k).

    A node's set is those of its ``edges`` OR-ed together, plus itself; a set is kept
    until its last user has read it. In postorder a set holds positions below its own
    only, so early sets are short integers and most sets die soon. Raises
    ``_TooLarge`` when the sets kept exceed ``_LIVE_BITS`` (at most V² / 16 bytes in
    one pass), unless the range is one position.
    """
    order, edges = walk.order, walk.edges
    users_left = [len(users) for users in walk.users]
    sets = [0] * len(order)
    live, splittable = 0, high - low > 1
    for position in range(low, len(order)):
        node = order[position]
        reached = 1 << (position - low) if position < high else 0
        for source in edges[node]:
            reached |= sets[source]
            users_left[source] -= 1
            if not users_left[source]:
                live -= sets[source].bit_length()
                sets[source] = 0
        yield node, reached
        if users_left[node]:
            sets[node] = reached
            live += reached.bit_length()
            if live > _LIVE_BITS and splittable:
                raise _TooLarge


def _blockwise(walk: _Walk, summarise: Callable[[int, int], list[int]]) -> list[int]:
    """``summarise`` over all positions in one pass, or, where its sets grow too large,
    over halves of the range, the parts added up."""
    total: list[int] = []
    pending = [(0, len(walk.order))]
    while pending:
        low, high = pending.pop()
        try:
            part = summarise(low, high)
        except _TooLarge:
            middle = (low + high) // 2
            pending += [(middle, high), (low, middle)]
            continue
        total = [a + b for a, b in zip(total, part, strict=True)] if total else part
    return total


_NONZERO = re.compile(rb"[^\x00]")
_BITS = [tuple(k for k in range(8) if byte >> k & 1) for byte in range(256)]


def _sum_of_runs(bits: int, prefix: list[int], low: int = 0) -> int:
    """The weights of the set bits (bit k: position ``low`` + k): each run of ones
    [a, b) adds prefix[b] - prefix[a]. Runs start and end where ``bits`` differs from
    itself shifted by one."""
    if not bits:
        return 0
    edges = bits ^ (bits << 1)
    data = edges.to_bytes((edges.bit_length() + 7) // 8, "little")
    positions = [
        low + 8 * match.start() + k
        for match in _NONZERO.finditer(data)
        for k in _BITS[data[match.start()]]
    ]
    return sum(map(prefix.__getitem__, positions[1::2])) - sum(
        map(prefix.__getitem__, positions[::2])
    )


def name_order_key(path: str) -> tuple[str, str]:
    """Ties are broken by ``name-version`` (the part after the hash), then the hash,
    so that the order does not move when only hashes change."""
    basename = path.rsplit("/", 1)[1]
    return basename[33:], basename[:32]
