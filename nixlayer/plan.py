"""The plan: which store paths go into which layer, as plain data with a versioned JSON form.

A plan is all that later builds, ``diff`` and ``--previous`` need to know about an
image's layering, and it is made without reading any store contents.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any

from nixlayer.closure import Closure, is_plan_json
from nixlayer.errors import NixlayerError
from nixlayer.gcpause import no_cycle_collection
from nixlayer.graph import PathGraph, find_roots, induced, path_graph
from nixlayer.jsonstream import show_json
from nixlayer.sizes import human_size
from nixlayer.strategies import STRATEGIES

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanLayer:
    """One layer: its store paths (sorted) and their NAR sizes, in the same order."""

    paths: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def nar_size(self) -> int:
        return sum(self.sizes)

    @classmethod
    def of(cls, paths: Sequence[str], closure: Closure) -> PlanLayer:
        ordered = tuple(sorted(paths))
        return cls(ordered, tuple(closure.paths[p].nar_size or 0 for p in ordered))


@dataclass(frozen=True)
class Plan:
    """Layers bottom first: the most stable, most shared paths sit lowest.

    ``notes`` say what a person should know about how the plan was made (old layers
    merged to stay within budget, groups that matched nothing).
    """

    store_dir: str
    strategy: str
    roots: tuple[str, ...]
    layers: tuple[PlanLayer, ...]
    notes: tuple[str, ...] = ()

    def layer_sets(self) -> list[frozenset[str]]:
        return [frozenset(layer.paths) for layer in self.layers]

    def sizes(self) -> dict[str, int]:
        return {
            p: s for layer in self.layers for p, s in zip(layer.paths, layer.sizes, strict=True)
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "store_dir": self.store_dir,
            "strategy": self.strategy,
            "roots": list(self.roots),
            "layers": [
                {"paths": list(layer.paths), "nar_size": layer.nar_size, "sizes": list(layer.sizes)}
                for layer in self.layers
            ],
        }

    @staticmethod
    def recognise(data: Any) -> bool:
        """Whether JSON data is meant as a plan (of any version), not as a closure."""
        return is_plan_json(data)

    @classmethod
    def from_json(cls, data: Any, source: str) -> Plan:
        """A plan written by ``to_json``, checked so that a wrong file fails clearly."""
        version = data.get("version") if isinstance(data, dict) else None
        if version is None:
            raise NixlayerError(f"{source}: not a nixlayer plan (it has no version)")
        if version != PLAN_VERSION:
            raise NixlayerError(
                f"{source}: a plan of version {show_json(version)}; this nixlayer reads "
                f"plans of version {PLAN_VERSION}"
            )
        try:
            layers = tuple(_layer_from_json(layer) for layer in data["layers"])
            plan = cls(str(data["store_dir"]), str(data["strategy"]),
                       tuple(map(str, data.get("roots", ()))), layers)  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise NixlayerError(f"{source}: a malformed plan ({error})") from None
        paths = [p for layer in layers for p in layer.paths]
        if len(paths) != len(set(paths)):
            raise NixlayerError(f"{source}: a path appears in two layers of the plan")
        return plan


def _layer_from_json(layer: dict[str, Any]) -> PlanLayer:
    paths = tuple(layer["paths"])
    if not paths:
        raise ValueError("a layer without paths")
    sizes = tuple(layer.get("sizes") or [0] * len(paths))
    if len(sizes) != len(paths) or not all(isinstance(p, str) for p in paths):
        raise ValueError("paths and sizes do not match")
    if not all(type(s) is int and s >= 0 for s in sizes):
        raise ValueError("sizes must be whole numbers")
    return PlanLayer(paths, sizes)


@no_cycle_collection()
def make_plan(
    closure: Closure,
    strategy: str,
    max_layers: int,
    roots: Sequence[str] = (),
    previous: Plan | None = None,
    groups: Sequence[Sequence[str]] = (),
    provided: frozenset[str] = frozenset(),
) -> Plan:
    """Run a strategy over the closure's graph and check what it returns.

    With a ``previous`` plan, every old layer whose paths are all still in the
    closure is kept as it was (same paths, so the same bytes and digest), at the
    bottom in its old order, and only the other paths are laid out on top, within
    what is left of the budget. ``groups`` are name globs whose paths must share
    a layer. ``provided`` paths are in the image already (a base image holds them):
    no layer carries them again. The closure must carry NAR sizes (see
    ``store.with_disk_nar_sizes``).
    """
    if strategy not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        raise NixlayerError(f"{strategy}: unknown strategy (known: {known})", "strategy")
    if max_layers < 1 and not closure.paths.keys() <= provided:
        raise NixlayerError(f"{max_layers}: must be at least 1", "max_layers")
    graph = path_graph(closure)
    roots = find_roots(graph, roots, closure.source)
    provided = provided.intersection(closure.paths)
    notes = [_provided_note(provided, closure)] if provided else []
    kept = _kept_layers(previous, closure, provided) if previous else []
    taken = {p for layer in kept for p in layer} | provided
    explicit = _explicit_groups(groups, closure, taken, notes)
    remaining = set(graph.ix.nodes) - taken - {p for group in explicit for p in group}
    kept = _make_room(kept, remaining, max_layers - len(explicit), closure, notes)
    budget = max_layers - len(kept) - len(explicit)
    if remaining and budget < 1:
        raise NixlayerError(f"{max_layers}: fewer layers than there are groups", "max_layers")
    rest = induced(graph, remaining)
    laid_out = _lay_out(rest, roots, strategy, budget) if remaining else []
    ordered = [*kept, *explicit, *laid_out]
    _check_partition(ordered, closure.paths.keys() - provided, max_layers)
    layers = tuple(PlanLayer.of(group, closure) for group in ordered)
    return Plan(closure.store_dir, strategy, tuple(roots), layers, tuple(notes))


def _provided_note(provided: frozenset[str], closure: Closure) -> str:
    size = sum(closure.paths[p].nar_size or 0 for p in provided)
    paths = "1 path is" if len(provided) == 1 else f"{len(provided)} paths are"
    return f"{paths} in the base image already ({human_size(size)})"


def _lay_out(
    subgraph: PathGraph, roots: Sequence[str], strategy: str, budget: int
) -> list[list[str]]:
    """The strategy on the paths left to lay out; their roots are the given roots
    among them, and any path whose users all sit in kept layers."""
    sub_roots = sorted({r for r in roots if r in subgraph} | set(subgraph.sources()))
    return STRATEGIES[strategy](subgraph, sub_roots, budget)


def _kept_layers(previous: Plan, closure: Closure, provided: frozenset[str]) -> list[list[str]]:
    """The old layers whose paths are all still in the closure, and none in the base or
    in a lower layer kept (an image built on a base before nixlayer left out the base's
    paths holds them twice)."""
    kept: list[list[str]] = []
    taken = set(provided)
    for layer in previous.layers:
        if taken.isdisjoint(layer.paths) and closure.paths.keys() >= set(layer.paths):
            kept.append(list(layer.paths))
            taken.update(layer.paths)
    return kept


def _make_room(
    kept: list[list[str]], remaining: set[str], budget: int, closure: Closure, notes: list[str]
) -> list[list[str]]:
    """When kept layers leave no room for the new paths, the least valuable of them (the
    smallest: cheapest to push again) go back to be laid out with the new paths."""
    if not remaining or len(kept) < budget:
        return kept

    def size(layer: list[str]) -> int:
        return sum(closure.paths[p].nar_size or 0 for p in layer)

    released = sorted(kept, key=size)[: len(kept) - budget + 1]
    for layer in released:
        remaining.update(layer)
    notes.append(f"{len(released)} layers of the previous plan were merged to stay within budget")
    return [layer for layer in kept if layer not in released]


def _explicit_groups(
    groups: Sequence[Sequence[str]], closure: Closure, taken: set[str], notes: list[str]
) -> list[list[str]]:
    """Paths whose ``name-version`` matches a group's globs, one layer per group; a path
    is in the first group that matches it, and a group that matches nothing is left out."""
    result = []
    for globs in groups:
        matched = [
            p
            for p, store_path in sorted(closure.paths.items())
            if any(fnmatch.fnmatchcase(store_path.name, g) for g in globs)
        ]
        members = [p for p in matched if p not in taken]
        if members:
            result.append(members)
            taken.update(members)
        elif matched:
            notes.append(f"the group {list(globs)} matches only paths placed already")
        else:
            notes.append(f"the group {list(globs)} matches no path")
    return result


def _check_partition(groups: list[list[str]], paths: Set[str], budget: int) -> None:
    """A plan's invariant: every path in exactly one non-empty group, within budget."""
    assigned = [path for group in groups for path in group]
    assert all(groups), "a strategy returned an empty layer"
    assert len(groups) <= budget, "a strategy exceeded the layer budget"
    assert len(assigned) == len(set(assigned)) == len(paths), "not a partition"
    assert set(assigned) == paths, "not a partition of the closure"
