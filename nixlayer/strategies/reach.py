"""Sums over what each store path reaches, without materialising the transitive closure
of the whole graph at once."""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import networkx as nx

Node = TypeVar("Node", bound=Hashable)


@dataclass(frozen=True)
class Indexed(Generic[Node]):
    """A graph as lists of integers, which the passes below walk many times faster than
    networkx's views: ``nodes[i]`` is node i, ``succ[i]`` and ``pred[i]`` its
    neighbours' numbers, and ``order`` every node after its predecessors."""

    nodes: list[Node]
    succ: list[list[int]]
    pred: list[list[int]]
    order: list[int]


def indexed(graph: nx.DiGraph) -> Indexed:
    """The graph as an ``Indexed``; raises ``nx.NetworkXUnfeasible`` on a cycle."""
    nodes = list(graph)
    number = {node: i for i, node in enumerate(nodes)}
    succ = [[number[s] for s in graph.succ[node]] for node in nodes]
    pred: list[list[int]] = [[] for _ in nodes]
    for i, successors in enumerate(succ):
        for s in successors:
            pred[s].append(i)
    return Indexed(nodes, succ, pred, _topological(pred, succ))


def _topological(before: list[list[int]], after: list[list[int]]) -> list[int]:
    """Every node after all of its ``before`` neighbours (Kahn's algorithm)."""
    waiting = [len(b) for b in before]
    order = [i for i, count in enumerate(waiting) if not count]
    for i in order:  # grows as nodes become ready
        for j in after[i]:
            waiting[j] -= 1
            if not waiting[j]:
                order.append(j)
    if len(order) != len(before):
        raise nx.NetworkXUnfeasible("the graph has a cycle")
    return order


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
    with ``wanted``, only the sums of those nodes (the others are 0).

    The sets are bitsets (Python integers), built in topological order: a node's set
    is its neighbours' sets OR-ed together, plus itself, and each set is freed once
    no node still needs it. Its sum is that of its largest neighbour's set plus the
    weights of what the others add. The bits are numbered in depth-first order along
    the same edges, so that what a set holds, and what a neighbour adds to it, are a
    few runs of consecutive bits, each summed as a difference of two prefix sums.
    When the weights take a few values only (a count, or cochange's two rates), a
    set's sum is counted outright instead: a popcount per value.

    Time about O(E · V / 64) word operations plus O(runs); memory that of the sets
    still live. That can reach V² / 16 bytes, so on large graphs the sets are built
    a block of ``_BLOCK`` bit numbers at a time, one pass each, and the sums added up
    (200,000 paths: 1 GB less, 10 % more time). The sets of ``wanted`` nodes are
    summed whole, run by run, and the others not at all.
    """
    before, after = (ix.pred, ix.succ) if upstream else (ix.succ, ix.pred)
    bit = _depth_first_numbers(before, after)
    prefix = _prefix_sums(weights, bit)
    order = ix.order if upstream else ix.order[::-1]
    sums = [0] * len(bit)
    width = max(len(bit), 1) if len(bit) <= _ONE_PASS else _BLOCK
    for low in range(0, len(bit), width):
        block = _Block(low, min(low + width, len(bit)), bit, weights, prefix, wanted)
        for node, part in enumerate(block.sums(order, before, after)):
            sums[node] += part
    return sums


_ONE_PASS = 1 << 16  # graphs up to this size take one pass (sets of at most 8 KiB)
_BLOCK = 1 << 15  # larger ones, this many bit numbers per pass (sets of at most 4 KiB)


class _Block:
    """The part of the sums that the nodes numbered ``low`` to ``high`` contribute."""

    def __init__(
        self,
        low: int,
        high: int,
        bit: list[int],
        weights: Sequence[int],
        prefix: list[int],
        wanted: Sequence[bool] | None,
    ) -> None:
        self.low, self.high, self.bit, self.weights, self.prefix = low, high, bit, weights, prefix
        self.wanted = wanted
        self.classes = None if wanted else _weight_classes(weights, bit, low, high)

    def sums(self, order: list[int], before: list[list[int]], after: list[list[int]]) -> list[int]:
        if self.wanted is not None:
            return self._sums_of_wanted(order, before, after, self.wanted)
        if self.classes is None:
            return self._sums_by_runs(order, before, after)
        return self._sums_by_count(order, before, after, *self.classes)

    def _sums_by_count(
        self,
        order: list[int],
        before: list[list[int]],
        after: list[list[int]],
        common: int,
        others: list[tuple[int, int]],
    ) -> list[int]:
        """Few distinct weights: a set's sum is a popcount per weight."""
        low, high, bit, weights = self.low, self.high, self.bit, self.weights
        users_left = [len(a) for a in after]
        sets = [0] * len(bit)
        sums = [0] * len(bit)
        for node in order:
            sources = before[node]
            inside = low <= bit[node] < high
            own = 1 << (bit[node] - low) if inside else 0
            for source in sources:
                own |= sets[source]
                users_left[source] -= 1
                if not users_left[source]:
                    sets[source] = 0
            if len(sources) == 1:  # a chain: one more node than its source
                sums[node] = sums[sources[0]] + (weights[node] if inside else 0)
            else:
                total = common * own.bit_count()
                for class_weight, members in others:
                    total += class_weight * (own & members).bit_count()
                sums[node] = total
            if users_left[node]:
                sets[node] = own
        return sums

    def _sums_of_wanted(
        self,
        order: list[int],
        before: list[list[int]],
        after: list[list[int]],
        wanted: Sequence[bool],
    ) -> list[int]:
        """The sets of all nodes, and the sums of the wanted ones, each set run by run."""
        low, high, bit = self.low, self.high, self.bit
        users_left = [len(a) for a in after]
        sets = [0] * len(bit)
        sums = [0] * len(bit)
        for node in order:
            own = 1 << (bit[node] - low) if low <= bit[node] < high else 0
            for source in before[node]:
                own |= sets[source]
                users_left[source] -= 1
                if not users_left[source]:
                    sets[source] = 0
            if wanted[node]:
                sums[node] = _sum_of_runs(own, self.prefix, low)
            if users_left[node]:
                sets[node] = own
        return sums

    def _sums_by_runs(
        self, order: list[int], before: list[list[int]], after: list[list[int]]
    ) -> list[int]:
        """Any weights: a node's sum is its largest source's plus the runs of bits the
        others add, each a difference of prefix sums."""
        low, high, bit, weights = self.low, self.high, self.bit, self.weights
        users_left = [len(a) for a in after]
        sets = [0] * len(bit)
        sizes = [0] * len(bit)  # how many nodes each live set holds
        sums = [0] * len(bit)
        for node in order:
            sources = before[node]
            inside = low <= bit[node] < high
            own = 1 << (bit[node] - low) if inside else 0
            total = weights[node] if inside else 0
            if sources:
                base = max(sources, key=sizes.__getitem__)
                total += sums[base]
                union = sets[base]
                if len(sources) > 1:
                    base_set = union
                    for source in sources:
                        union |= sets[source]
                    total += _sum_of_runs(union & ~base_set, self.prefix, low)
                own |= union
                for source in sources:
                    users_left[source] -= 1
                    if not users_left[source]:
                        sets[source] = 0
            sums[node] = total
            if users_left[node]:
                sets[node] = own
                sizes[node] = own.bit_count()
        return sums


def closure_sums(ix: Indexed, weights: Sequence[int], group_of: Sequence[int]) -> list[int]:
    """For groups of nodes (``group_of[i]``: node i's, numbered from 0): the sum of
    ``weights`` over the union of what the group's nodes reach, themselves included.

    One pass from the leaves up builds each node's set of dependencies as in
    ``indexed_reach_sums``, OR-ing it into its group's; each group's set is summed
    once, by runs.
    """
    bit = _depth_first_numbers(ix.succ, ix.pred)
    prefix = _prefix_sums(weights, bit)
    users_left = [len(p) for p in ix.pred]
    sets = [0] * len(bit)
    groups = [0] * (max(group_of, default=-1) + 1)
    for node in reversed(ix.order):
        own = 1 << bit[node]
        for dependency in ix.succ[node]:
            own |= sets[dependency]
            users_left[dependency] -= 1
            if not users_left[dependency]:
                sets[dependency] = 0
        if users_left[node]:
            sets[node] = own
        groups[group_of[node]] |= own
    return [_sum_of_runs(members, prefix) for members in groups]


def _prefix_sums(weights: Sequence[int], bit: list[int]) -> list[int]:
    """``prefix[k]``: the weights of the nodes numbered below k."""
    prefix = [0] * (len(bit) + 1)
    for node, k in enumerate(bit):
        prefix[k + 1] = weights[node]
    for k in range(len(bit)):
        prefix[k + 1] += prefix[k]
    return prefix


def _weight_classes(
    weights: Sequence[int], bit: list[int], low: int, high: int
) -> tuple[int, list[tuple[int, int]]] | None:
    """For few distinct weights: the most common one, and each other one (less the
    common one) with the set of its nodes numbered ``low`` to ``high``; None if many."""
    values = set(weights)
    if not values or len(values) > 3:
        return None
    masks = dict.fromkeys(values, 0)
    for node, weight in enumerate(weights):
        if low <= bit[node] < high:
            masks[weight] |= 1 << (bit[node] - low)
    common = max(values, key=lambda w: masks[w].bit_count())
    return common, [(w - common, m) for w, m in masks.items() if w != common]


def _depth_first_numbers(before: list[list[int]], after: list[list[int]]) -> list[int]:
    """Bit numbers in depth-first preorder along ``before`` edges, from the nodes no
    node lists as ``before``: what a node reaches then mostly has consecutive numbers."""
    number = [-1] * len(before)
    count = 0
    for start in range(len(before)):
        if after[start]:
            continue
        stack = [start]
        while stack:
            node = stack.pop()
            if number[node] < 0:
                number[node] = count
                count += 1
                stack.extend(n for n in reversed(before[node]) if number[n] < 0)
    return number


_NONZERO = re.compile(rb"[^\x00]")
_BITS = [tuple(k for k in range(8) if byte >> k & 1) for byte in range(256)]


def _sum_of_runs(bits: int, prefix: list[int], low: int = 0) -> int:
    """The weights of the set bits (bit k: the node numbered ``low`` + k): each run of
    ones [a, b) adds prefix[b] - prefix[a]. Runs start and end where ``bits`` differs
    from itself shifted by one."""
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


def closure_counts(graph: nx.DiGraph) -> dict[str, int]:
    """How many store paths each path's closure holds (itself included): how many
    upgrades would rebuild it, since a path changes when anything it needs does."""
    return reach_sums(graph, dict.fromkeys(graph, 1), upstream=False)


def name_order_key(path: str) -> tuple[str, str]:
    """Ties are broken by ``name-version`` (the part after the hash), then the hash,
    so that the order does not move when only hashes change."""
    basename = path.rsplit("/", 1)[1]
    return basename[33:], basename[:32]
