"""``cochange``: nixlayer's default. Paths that change together share a layer, the
application's layer carries nothing that changes less often than it does, and each
decision is local, so that an upgrade moves only the layers it touches.

Under Nix, a store path is rebuilt whenever anything in its closure is. Count how
often each path changes as the number of upgrades that rebuild it, c(p): one per
path in its closure. A layer is pushed whenever any of its paths changes, so
putting paths together costs the bytes that then travel without having changed:

- a group g below the group of a path that uses it, whose count is c(h): every
  change of g changes h too, and g travels needlessly when h changes alone, about
  ``size(g) * (c(h) - c(g))``;
- unrelated groups side by side (typically library stacks only the application
  uses): each travels when another changes, about ``size(a) * c(b)``.

Given a price limit T, two passes make the layers:

1. below: from the bottom of the graph up, a path's group (it and what has joined
   it) joins the group of its least-changing user when that costs at most T. The
   largest paths (as many as half the budget) never join a user: when a library
   that many paths use is upgraded, the big paths that do not use it keep their
   layers instead of travelling with their upgraded users;
2. beside: the groups nobody took, in order of c then name, are cut into runs. A
   cut follows group g when ``size(g) * c(g) / T + size(g) / cap``, with cap twice
   the image's bytes over the budget, exceeds a number in [0, 1) drawn from a hash
   of g's name-version: runs carry about T of that weight and about cap of bytes,
   heavy groups stand alone, and whether a cut follows g depends on g alone, so
   adding, dropping or rebuilding one group changes one run (content-defined
   chunking, as in rsync or restic). As chunkers do, a run is not cut before it
   carries a quarter of one expected cut's weight and is always cut before one and
   a half: fewer tiny and huge runs, for a change that may move the cut after it.
   A run also ends before a group that changes more than twice as often as its
   first: the rarely changing would travel with it.

Roots never join or take in others. T is the smallest value of a fixed ladder
(eight steps per doubling) whose layers fit the budget; a graph that differs a
little gets the same T and so the same layers, unless it crosses a step (then
about a tenth of the runs move). Layers come in order of c, least first, the roots
last, so that docker's layer chain breaks as high as possible.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx

from nixlayer.strategies.reach import Indexed, indexed, indexed_reach_sums, name_order_key

_STEPS_PER_DOUBLING = 8
_SHORTEST_RUN, _LONGEST_RUN = 0.25, 1.5  # in expected cuts: what a run carries at least, at most
_RATE_SPAN = 2  # a run's change counts stay within this factor of its first group's


@dataclass(frozen=True)
class _Graph:
    """What the passes need, by node number. ``climbs``: (path, its least-changing
    non-root user, their difference in change counts) for every path that may join a
    user, dependencies first; ``beside_order``: non-root paths by change count, then
    name; ``chance``: a fixed number in [0, 1) from each path's name."""

    ix: Indexed
    size: list[int]
    changes: list[int]
    roots: list[int]
    climbs: list[tuple[int, int, int]]
    beside_order: list[int]
    chance: list[float]
    cap: float  # bytes from which a group is always cut off


def cochange(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """See the module's docstring. Cost: the change counts (see ``reach_sums``), then
    O(V) per value of T tried: about six, searching out from an estimate."""
    g = _prepare(graph, roots, budget)

    def fits(step: int) -> bool:
        return len(_runs(g, _limit(step))[0]) + len(g.roots) <= budget

    weight = sum(g.size[n] * g.changes[n] for n in g.beside_order)  # a run carries about T
    estimate = round(_STEPS_PER_DOUBLING * math.log2(max(2.0, weight / budget)))
    top = _STEPS_PER_DOUBLING * (max(1, sum(g.size)) * len(g.size)).bit_length()
    step = _first_fit(fits, min(estimate, top), top)
    return _within_budget(_layers(g, _limit(step)), g, budget)


def _first_fit(fits: Callable[[int], bool], start: int, top: int) -> int:
    """The smallest step in [0, top] where ``fits`` holds (``top`` if none), for a
    monotone ``fits``: strides of a doubling out from ``start`` until the step is
    bracketed, then bisection."""
    stride = _STEPS_PER_DOUBLING
    if fits(start):
        low, high = start - stride, start
        while low >= 0 and fits(low):
            low, high = low - stride, low
    else:
        low, high = start, start + stride
        while high < top and not fits(high):
            low, high = high, high + stride
    low, high = max(low, -1), min(high, top)
    while high - low > 1:  # fits(high) holds (or high is top), fits(low) does not
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _limit(step: int) -> float:
    return 2.0 ** (step / _STEPS_PER_DOUBLING)


def _prepare(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> _Graph:
    ix = indexed(graph)
    everyone = range(len(ix.nodes))
    root_set = set(roots)
    is_root = [node in root_set for node in ix.nodes]
    changes = indexed_reach_sums(ix, [1] * len(ix.nodes), upstream=False)
    keys = [name_order_key(node) for node in ix.nodes]
    rank = [0] * len(keys)
    for position, node in enumerate(sorted(everyone, key=keys.__getitem__)):
        rank[node] = position
    size = [data for _, data in graph.nodes(data="nar_size")]  # in ix.nodes order
    largest = sorted((n for n in everyone if not is_root[n]), key=lambda n: (-size[n], rank[n]))
    fixed = set(largest[: budget // 2])
    by_change = [changes[n] * len(rank) + rank[n] for n in everyone]  # change count, then name

    def climb(node: int) -> tuple[int, int, int] | None:
        users = [u for u in ix.pred[node] if not is_root[u]]
        if is_root[node] or node in fixed or not users:
            return None
        user = min(users, key=by_change.__getitem__)
        return node, user, changes[user] - changes[node]

    climbs = [c for c in map(climb, reversed(ix.order)) if c is not None]
    beside_order = sorted((n for n in everyone if not is_root[n]), key=by_change.__getitem__)
    chance = [_chance(key[0]) for key in keys]
    cap = 2 * max(1, sum(size)) / budget
    root_list = [n for n in everyone if is_root[n]]
    return _Graph(ix, size, changes, root_list, climbs, beside_order, chance, cap)


def _chance(name: str) -> float:
    """A number in [0, 1) fixed by a path's name-version, not its hash: a rebuilt path
    keeps it."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "big") / (1 << 56)


def _runs(g: _Graph, limit: float) -> tuple[list[list[int]], list[int]]:
    """Both passes at price limit ``limit``: the runs of group tops, bottom first, and
    for each path the user whose group it joined (-1 where it tops a group)."""
    joined = [-1] * len(g.size)
    group_size = list(g.size)
    for node, user, delta in g.climbs:  # dependencies first: a group is complete
        if group_size[node] * delta <= limit:
            joined[node] = user
            group_size[user] += group_size[node]
    tops = [node for node in g.beside_order if joined[node] < 0]
    changes, per_byte = g.changes, 1 / g.cap
    cut = [group_size[t] * (changes[t] / limit + per_byte) for t in tops]
    runs: list[list[int]] = []
    run: list[int] = []
    filled = 0.0
    for index, top in enumerate(tops):
        run.append(top)
        filled += cut[index]
        if index + 1 == len(tops):
            runs.append(run)
            break
        following = tops[index + 1]
        chosen = filled >= _SHORTEST_RUN and cut[index] >= 1.0 - g.chance[top]
        faster = changes[following] > _RATE_SPAN * changes[run[0]]
        if chosen or faster or cut[index + 1] >= 1.0 or filled + cut[index + 1] > _LONGEST_RUN:
            runs.append(run)
            run, filled = [], 0.0
    return runs, joined


def _layers(g: _Graph, limit: float) -> list[list[int]]:
    """The runs with every group's members, then the roots, as node numbers."""
    runs, joined = _runs(g, limit)
    top = list(range(len(joined)))
    members: dict[int, list[int]] = {}
    for node in g.ix.order:  # users first, so a user's top is known before its own
        if joined[node] >= 0:
            top[node] = top[joined[node]]
        members.setdefault(top[node], []).append(node)
    layers = [[m for t in run for m in members[t]] for run in runs]
    return [*layers, *([root] for root in g.roots)]


def _within_budget(layers: list[list[int]], g: _Graph, budget: int) -> list[list[str]]:
    """Node numbers to paths, bottom first; when there are more roots than layers, the
    smallest layers share the top one."""
    named = [[g.ix.nodes[n] for n in layer] for layer in layers]
    if len(named) <= budget:
        return named
    by_size = sorted(range(len(layers)), key=lambda i: sum(g.size[n] for n in layers[i]))
    merged = set(by_size[: len(layers) - budget + 1])
    kept = [layer for i, layer in enumerate(named) if i not in merged]
    return [*kept, [path for i in sorted(merged) for path in named[i]]]
