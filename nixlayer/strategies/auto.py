"""``auto``: the layering nixpkgs' buildLayeredImage uses by default today
(``auto-layer.py``), kept for comparison."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nixlayer.graph import Indexed, PathGraph
from nixlayer.strategies.reach import closure_sums, name_order_key, of_networkx

if TYPE_CHECKING:
    import networkx as nx


def auto(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """``auto_indexed`` on a networkx graph of store paths with ``nar_size``."""
    return auto_indexed(of_networkx(graph), roots, budget)


def auto_indexed(graph: PathGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """Paths become primaries from the largest NAR size down. Every other path belongs
    to the set of primaries that reach it through no other primary: a dependency stays
    with the nearest primaries above it, and one shared by several unrelated
    primaries gets a layer of its own, keyed by that set. Adding primaries stops
    before the number of distinct sets would exceed the budget. Layers are ordered
    by the NAR size of their closure, ascending.

    Cost: O(V + E) per primary, so O(budget · (V + E)) in practice. A set of primaries
    is a bitmask (primary j is bit j), and the count of paths per set is kept up to
    date as a primary changes the sets of its dependencies, so that a primary costs
    a walk of its dependencies only.
    """
    ix, size = graph.ix, graph.sizes
    candidates = sorted(
        range(len(ix.nodes)), key=lambda i: (size[i], name_order_key(ix.nodes[i])), reverse=True
    )
    split = [0] * len(ix.nodes)  # each path's set of primaries
    paths_per_set = Counter(split)
    primaries: list[int] = []
    below: list[set[int]] = []  # below[j]: the paths primary j reaches
    for primary in candidates:
        if not _add_primary(ix, split, paths_per_set, primaries, below, primary, budget):
            break
    members: dict[int, list[str]] = defaultdict(list)
    for node, key in zip(ix.nodes, split, strict=True):
        members[key].append(node)
    keys = list(members)
    group_of = {key: g for g, key in enumerate(keys)}
    sizes = closure_sums(ix, size, [group_of[key] for key in split])
    groups = [(sizes[g], sorted(members[key], key=name_order_key)) for g, key in enumerate(keys)]
    return [group for _, group in sorted(groups, key=lambda sg: (sg[0], sg[1][0]))]


def _add_primary(
    ix: Indexed,
    split: list[int],
    paths_per_set: Counter[int],
    primaries: list[int],
    below: list[set[int]],
    primary: int,
    budget: int,
) -> bool:
    """Make ``primary`` the next primary, unless that gives more sets than ``budget``
    (then nothing changes). Each dependency's set loses the primaries above the new
    one, and gains it unless it keeps a primary that is itself below the new one."""
    dependencies = _reached(ix.succ, primary)
    own = 1 << len(primaries)
    users = sum(1 << j for j, reached in enumerate(below) if primary in reached)
    inside = sum(1 << j for j, p in enumerate(primaries) if p in dependencies)
    changed = [(primary, split[primary], own)]
    for dependency in dependencies:
        key = split[dependency] & ~users
        if not key & inside:
            key |= own
        changed.append((dependency, split[dependency], key))
    for node, old, new in changed:
        split[node] = new
        _move(paths_per_set, old, new)
    if len(paths_per_set) > budget:
        for node, old, new in reversed(changed):
            split[node] = old
            _move(paths_per_set, new, old)
        return False
    primaries.append(primary)
    below.append(dependencies)
    return True


def _move(paths_per_set: Counter[int], old: int, new: int) -> None:
    paths_per_set[new] += 1
    paths_per_set[old] -= 1
    if not paths_per_set[old]:
        del paths_per_set[old]


def _reached(succ: list[list[int]], start: int) -> set[int]:
    """What ``start`` reaches, itself excluded."""
    seen: set[int] = set()
    pending = [start]
    while pending:
        for node in succ[pending.pop()]:
            if node not in seen:
                seen.add(node)
                pending.append(node)
    return seen
