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
   it) joins the group of its least-changing user when that costs at most T. Three
   kinds of path never join a user, so that when a library that many paths use is
   upgraded, the paths that do not use it keep their layers instead of travelling
   with their upgraded users: the largest paths (as many as half the budget), the
   hubs (paths that a tenth of the paths laid out use directly, such as glibc or
   python; as many as a tenth of the budget) and the paths that reference nothing
   in the closure (data, static binaries);
2. beside: the groups nobody took, in order of c then name, are cut into runs. A
   cut follows group g when ``size(g) * c(g) / T + size(g) / cap``, with cap twice
   the image's bytes over the budget, exceeds a number in [0, 1) drawn from a hash
   of g's name-version: runs carry about T of that weight and about cap of bytes,
   heavy groups and hubs stand alone, and whether a cut follows g depends on g
   alone, so adding, dropping or rebuilding one group changes one run
   (content-defined chunking, as in rsync or restic). As chunkers do, a run is not
   cut there before it carries a quarter of one expected cut's weight and is always
   cut before one and a half: fewer tiny and huge runs, for a change that may move
   the cut after it.
   A run also ends before a group that changes more than twice as often as its
   first: the rarely changing would travel with it. A run of groups that change
   once (c = 1: they reference nothing laid out here) ends before any other.

Roots never join or take in others. T is the smallest value of a fixed ladder
(eight steps per doubling) whose layers fit the budget; a graph that differs a
little gets the same T and so the same layers, unless it crosses a step (then
about a tenth of the runs move). Where no T fits a small budget, neighbouring runs
merge until the layers fit (see ``_within_budget``). Layers come in order of c,
least first, the roots last in name order, so that docker's layer chain breaks as
high as possible.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixlayer.graph import Indexed, PathGraph
from nixlayer.strategies.reach import indexed_reach_sums, name_order_key, of_networkx

if TYPE_CHECKING:
    import networkx as nx

_STEPS_PER_DOUBLING = 8
_SHORTEST_RUN, _LONGEST_RUN = 0.25, 1.5  # in expected cuts: what a run carries at least, at most
_RATE_SPAN = 2  # a run's change counts stay within this factor of its first group's
_HUB_SHARE = 10  # hubs: used by 1 / _HUB_SHARE of the paths, 1 / _HUB_SHARE of the budget


@dataclass(frozen=True)
class _Graph:
    """What the passes need, by node number. ``climbs``: (path, its least-changing
    non-root user, their difference in change counts) for every path that may join a
    user, dependencies first; ``beside_order``: non-root paths by change count, then
    name; ``chance(n)``: a fixed number in [0, 1) from path n's name, drawn the first
    time it is asked for (few paths top a group) and kept in ``chances``."""

    ix: Indexed
    size: list[int]
    changes: list[int]
    roots: list[int]
    climbs: list[tuple[int, int, int]]
    beside_order: list[int]
    names: list[str]  # name-version
    chances: dict[int, float]
    cap: float  # bytes from which a group is always cut off
    hubs: frozenset[int]  # see _hubs: each stands alone

    def chance(self, node: int) -> float:
        if node not in self.chances:
            self.chances[node] = _chance(self.names[node])
        return self.chances[node]


def cochange(graph: nx.DiGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """``cochange_indexed`` on a networkx graph as ``graph.build_graph`` makes it."""
    return cochange_indexed(of_networkx(graph), roots, budget)


def cochange_indexed(graph: PathGraph, roots: Sequence[str], budget: int) -> list[list[str]]:
    """See the module's docstring. Cost: the change counts (see ``reach_sums``), then
    O(V) per value of T tried: about five, searching out from an estimate."""
    g = _prepare(graph, roots, budget)

    @functools.cache
    def runs_at(step: int) -> tuple[list[list[int]], list[int]]:
        return _runs(g, _limit(step))

    weight = sum(g.size[n] * g.changes[n] for n in g.beside_order)  # a run carries about T
    estimate = round(_STEPS_PER_DOUBLING * math.log2(max(2.0, weight / budget)))
    top = _STEPS_PER_DOUBLING * (max(1, sum(g.size)) * len(g.size)).bit_length()
    wanted = max(budget - len(g.roots), 0)
    step = _first_fit(lambda s: len(runs_at(s)[0]), wanted, min(estimate, top), top)
    return _within_budget(_layers(g, *runs_at(step)), g, budget)


def _first_fit(count: Callable[[int], int], wanted: int, start: int, top: int) -> int:
    """The smallest step in [0, top] whose ``count`` is at most ``wanted`` (``top`` if
    none), for a count that never rises with the step.

    Each guess is where a line through the logarithms of the counts at two steps
    crosses ``wanted``: the steps either side of the bracket found so far, or, until
    it has two sides, the last two tried. Where the two are level, or before the
    second try, a fall of 6 % a step stands in (what synthetic closures show near the
    fit). Until the bracket has two sides, while the count stays flat, which says
    nothing, the tries move out by 2, 4, 8, ... steps. A guess stays inside the
    bracket, so that every try narrows it; once it has two sides, a try that did not
    halve it makes the next one halve it.
    """
    low, high = -1, top  # the highest step known not to fit; the lowest known to fit, or top
    tried: dict[int, float] = {}  # step: the logarithm of its count (+ 0.5: 0 has one)
    last: list[tuple[int, float]] = []  # the two steps the next guess is drawn from
    widths: list[int] = []  # the bracket's, after each try once it has two sides
    target = math.log(wanted + 0.5)
    flat, guess = 0, min(max(start, 0), max(top - 1, 0))  # trying top itself tells nothing
    while high - low > 1:
        counted = count(guess)
        low, high = (low, guess) if counted <= wanted else (guess, high)
        tried[guess] = math.log(counted + 0.5)
        if low in tried and high in tried:
            widths.append(high - low)
            last = [(low, tried[low]), (high, tried[high])]
            stalled = len(widths) > 1 and 2 * widths[-1] > widths[-2]
            guess = (low + high) // 2 if stalled else _crossing(last, target)
        else:
            flat = flat + 1 if last and last[-1][1] == tried[guess] else 0
            last = [*last[-1:], (guess, tried[guess])]
            crossing = _crossing(last, target)
            fitted = high == guess
            guess = min(crossing, guess - 2**flat) if fitted else max(crossing, guess + 2**flat)
        guess = min(max(guess, low + 1), high - 1)
    return high


def _crossing(points: list[tuple[int, float]], target: float) -> int:
    """The first step at which the line through ``points`` (one or two (step, value)
    pairs; a fall of 0.06 a step where they are level or alone) is at most ``target``."""
    step, value = points[-1]
    slope = -0.06
    if len(points) == 2 and points[0][0] != step:
        drawn = (value - points[0][1]) / (step - points[0][0])
        slope = drawn if drawn < 0 else slope
    return step + math.ceil((target - value) / slope)


def _limit(step: int) -> float:
    return 2.0 ** (step / _STEPS_PER_DOUBLING)


def _prepare(graph: PathGraph, roots: Sequence[str], budget: int) -> _Graph:
    ix, size, references = graph.ix, graph.sizes, graph.references
    root_set = set(roots)
    is_root = [node in root_set for node in ix.nodes]
    changes = indexed_reach_sums(ix, [1] * len(ix.nodes), upstream=False)
    keys = [name_order_key(node) for node in ix.nodes]
    by_change = sorted(range(len(keys)), key=lambda n: (changes[n], keys[n]))
    rank = [0] * len(keys)  # place in by_change
    for place, node in enumerate(by_change):
        rank[node] = place
    beside_order = [n for n in by_change if not is_root[n]]
    fixed = set(heapq.nsmallest(budget // 2, beside_order, key=lambda n: (-size[n], keys[n])))
    hubs = frozenset(_hubs(ix, beside_order, keys, budget))
    climbs = []
    for node in reversed(ix.order):  # dependencies first
        users = [u for u in ix.pred[node] if not is_root[u]]
        stays = node in fixed or node in hubs or not references[node]
        if users and not is_root[node] and not stays:
            user = min(users, key=rank.__getitem__)
            climbs.append((node, user, changes[user] - changes[node]))
    cap = 2 * max(1, sum(size)) / budget
    root_list = sorted((n for n, root in enumerate(is_root) if root), key=keys.__getitem__)
    names = [key[0] for key in keys]
    return _Graph(ix, size, changes, root_list, climbs, beside_order, names, {}, cap, hubs)


def _hubs(
    ix: Indexed, candidates: list[int], keys: list[tuple[str, str]], budget: int
) -> list[int]:
    """The paths that a tenth of the paths laid out use directly, the most used first,
    as many as a tenth of the budget: each stands alone, and a small budget (the few
    layers --previous leaves) must still hold the rest."""
    used = [n for n in candidates if len(ix.pred[n]) * _HUB_SHARE >= len(ix.nodes)]
    return heapq.nsmallest(budget // _HUB_SHARE, used, key=lambda n: (-len(ix.pred[n]), keys[n]))


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
    weights = [group_size[t] * (changes[t] / limit + per_byte) for t in tops]
    cut = [max(w, 1.0) if t in g.hubs else w for t, w in zip(tops, weights, strict=True)]
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
        chosen = filled >= _SHORTEST_RUN and cut[index] >= 1.0 - g.chance(top)
        first = changes[run[0]]
        faster = changes[following] > _RATE_SPAN * first or first == 1 < changes[following]
        if chosen or faster or cut[index + 1] >= 1.0 or filled + cut[index + 1] > _LONGEST_RUN:
            runs.append(run)
            run, filled = [], 0.0
    return runs, joined


def _layers(g: _Graph, runs: list[list[int]], joined: list[int]) -> list[list[int]]:
    """The runs with every group's members, then the roots, as node numbers."""
    top = list(range(len(joined)))
    members: dict[int, list[int]] = {}
    for node in g.ix.order:  # users first, so a user's top is known before its own
        if joined[node] >= 0:
            top[node] = top[joined[node]]
        members.setdefault(top[node], []).append(node)
    layers = [[m for t in run for m in members[t]] for run in runs]
    return [*layers, *([root] for root in g.roots)]


def _within_budget(layers: list[list[int]], g: _Graph, budget: int) -> list[list[str]]:
    """Node numbers to paths, bottom first. Where the rules above leave more layers than
    the budget (a small one, or many roots), the two neighbouring runs that hold the
    fewest bytes together become one, until the layers fit: the order by c stays,
    and the roots keep layers of their own. Only where the roots alone fill the
    budget do the smallest layers share the top one."""
    runs, roots = len(layers) - len(g.roots), len(g.roots)
    merged = [(layer, sum(g.size[n] for n in layer)) for layer in layers[:runs]]
    while len(merged) > 1 and len(merged) + roots > budget:
        pair = min(range(len(merged) - 1), key=lambda i: merged[i][1] + merged[i + 1][1])
        (low, low_size), (high, high_size) = merged[pair], merged.pop(pair + 1)
        merged[pair] = (low + high, low_size + high_size)
    ordered = [layer for layer, _ in merged] + layers[runs:]
    if len(ordered) > budget:
        by_size = sorted(range(len(ordered)), key=lambda i: sum(g.size[n] for n in ordered[i]))
        shared = set(by_size[: len(ordered) - budget + 1])
        kept = [layer for i, layer in enumerate(ordered) if i not in shared]
        ordered = [*kept, [n for i in sorted(shared) for n in ordered[i]]]
    return [[g.ix.nodes[n] for n in layer] for layer in ordered]
