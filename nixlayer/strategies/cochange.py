"""``cochange``: nixlayer's default. Paths that change together share a layer, and the
application's layer carries nothing that changes less often than it does.

Under Nix, a store path is rebuilt whenever anything in its closure is. Count how
often each path changes as the number of upgrades that rebuild it, c(p): one per
path in its closure, and for a root (the application, rebuilt on every commit) as
many as all the others together. A layer is pushed whenever any of its paths
changes, so putting path groups together costs the bytes that then travel without
having changed:

- a group g below a group h (h's top path depends on g's): every change of g
  changes h too, and g travels needlessly when h changes alone, about
  ``size(g) * (c(h) - c(g))``;
- two unrelated groups a and b (typically two library stacks only the application
  uses): each travels when the other changes, about ``size(a) * c(b) + size(b) * c(a)``.

Starting from one layer per path, the cheapest of these merges is made until the
layers fit the budget: small paths join the stacks that use them, small stacks
share layers, and large paths, with a high price, keep layers of their own. Roots
never take others in. Each merge's price depends only on the groups involved, so an
upgrade elsewhere leaves these decisions, and so the layers, as they were. Layers
are ordered by how often they change, least first, so that docker's layer chain
breaks as high as possible.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx

from nixlayer.strategies.reach import name_order_key, reach_sums


@dataclass
class _Group:
    top: str
    members: list[str]
    size: int
    changes: int  # c: how many upgrades change it
    tops: list[str] = field(default_factory=list)


class _Merger:
    """Groups, the path → group map, and heaps of candidate merges with lazy updates:
    prices only rise as groups grow, so a stale entry is re-priced when it surfaces."""

    def __init__(self, graph: nx.DiGraph, roots: Sequence[str]) -> None:
        self.graph = graph
        self.roots = set(roots)
        everything = graph.number_of_nodes()
        rate = {p: (everything if p in self.roots else 1) for p in graph}
        changes = reach_sums(graph, rate, upstream=False)
        self.groups = {
            p: _Group(p, [p], graph.nodes[p]["nar_size"], changes[p], [p]) for p in graph
        }
        self.group_of = {p: p for p in graph}
        self.below: list[tuple[int, tuple[str, str], str]] = []
        self.beside: list[tuple[int, tuple[str, str], str]] = []
        for name in graph:
            self._push(name)

    def _parent_group(self, group: _Group) -> _Group | None:
        """The group of a path that uses the group's top and changes least often."""
        candidates = {
            self.group_of[parent]
            for top in group.tops
            for parent in self.graph.predecessors(top)
            if self.group_of[parent] not in self.roots
        } - {group.top}
        if not candidates:
            return None
        return min((self.groups[c] for c in candidates), key=lambda g: (g.changes, _key(g.top)))

    def _price_below(self, group: _Group) -> int | None:
        parent = self._parent_group(group)
        return None if parent is None else group.size * (parent.changes - group.changes)

    def _push(self, name: str) -> None:
        group = self.groups[name]
        if name in self.roots:
            return
        price = self._price_below(group)
        if price is not None:
            heapq.heappush(self.below, (price, _key(name), name))
        else:
            heapq.heappush(self.beside, (group.size * group.changes, _key(name), name))

    def _price(self, group: _Group, below: bool) -> int | None:
        return self._price_below(group) if below else group.size * group.changes

    def _fresh(self, heap: list[tuple[int, tuple[str, str], str]], below: bool) -> str | None:
        """The cheapest live entry, re-priced until its price is current."""
        while heap:
            price, key, name = heap[0]
            group = self.groups.get(name)
            current = None if group is None else self._price(group, below)
            if current is None:  # merged away, or no longer of this kind
                heapq.heappop(heap)
            elif current != price:
                heapq.heapreplace(heap, (current, key, name))
            else:
                return name
        return None

    def _cheapest_pair_beside(self) -> tuple[str, str] | None:
        first = self._fresh(self.beside, below=False)
        if first is None:
            return None
        entry = heapq.heappop(self.beside)
        second = self._fresh(self.beside, below=False)
        while second == first:  # the same group, pushed again when it grew
            heapq.heappop(self.beside)
            second = self._fresh(self.beside, below=False)
        heapq.heappush(self.beside, entry)
        return None if second is None else (first, second)

    def merge_cheapest(self) -> bool:
        """Make the cheapest merge there is; False when none is left."""
        below = self._fresh(self.below, below=True)
        pair = self._cheapest_pair_beside()
        below_price = None if below is None else self._price_below(self.groups[below])
        beside_price = None
        if pair is not None:
            a, b = self.groups[pair[0]], self.groups[pair[1]]
            beside_price = a.size * b.changes + b.size * a.changes
        if (
            below is not None
            and below_price is not None
            and (beside_price is None or below_price <= beside_price)
        ):
            group = self.groups[below]
            parent = self._parent_group(group)
            assert parent is not None
            self._join(group, parent, beside=False)
            return True
        if pair is not None:
            self._join(self.groups[pair[1]], self.groups[pair[0]], beside=True)
            return True
        return False

    def _join(self, group: _Group, into: _Group, beside: bool) -> None:
        """``group`` into ``into``: below it (into keeps its top and change count) or
        beside it (both tops kept, change counts added: closures taken as disjoint)."""
        into.members.extend(group.members)
        into.size += group.size
        if beside:
            into.changes += group.changes
            into.tops.extend(group.tops)
        for member in group.members:
            self.group_of[member] = into.top
        del self.groups[group.top]
        self._push(into.top)


def _key(path: str) -> tuple[str, str]:
    return name_order_key(path)


def cochange(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """See the module's docstring. Cost: the change counts (see ``reach_sums``), then
    O((V + E) log V) for the merges."""
    merger = _Merger(graph, roots)
    while len(merger.groups) > budget and merger.merge_cheapest():
        pass
    groups = sorted(merger.groups.values(), key=lambda g: (g.changes, _key(g.top)))
    return _within_budget([g.members for g in groups], graph, budget)


def _within_budget(groups: list[list[str]], graph: nx.DiGraph, budget: int) -> list[list[str]]:
    """When there are more roots than layers, the smallest layers share the top one."""
    if len(groups) <= budget:
        return groups
    size = nx.get_node_attributes(graph, "nar_size")
    by_size = sorted(range(len(groups)), key=lambda i: sum(size[p] for p in groups[i]))
    merged = set(by_size[: len(groups) - budget + 1])
    kept = [group for i, group in enumerate(groups) if i not in merged]
    return [*kept, [path for i in sorted(merged) for path in groups[i]]]
