"""The plan: which store paths go into which layer, as plain data with a versioned JSON form.

A plan is all that later builds, ``diff`` and ``--previous`` need to know about an
image's layering, and it is made without reading any store contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError
from nixlayer.graph import build_graph, find_roots
from nixlayer.strategies import STRATEGIES

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanLayer:
    """One layer: its store paths (sorted) and the sum of their NAR sizes."""

    paths: tuple[str, ...]
    nar_size: int


@dataclass(frozen=True)
class Plan:
    """Layers bottom first: the most stable, most shared paths sit lowest."""

    store_dir: str
    strategy: str
    roots: tuple[str, ...]
    layers: tuple[PlanLayer, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "store_dir": self.store_dir,
            "strategy": self.strategy,
            "roots": list(self.roots),
            "layers": [
                {"paths": list(layer.paths), "nar_size": layer.nar_size} for layer in self.layers
            ],
        }


def make_plan(closure: Closure, strategy: str, max_layers: int, roots: Sequence[str] = ()) -> Plan:
    """Run a strategy over the closure's graph and check what it returns.

    The closure must carry NAR sizes (see ``store.with_disk_nar_sizes``).
    """
    if strategy not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        raise NixlayerError(f"--strategy {strategy}: unknown strategy (known: {known})")
    if max_layers < 1:
        raise NixlayerError(f"--max-layers {max_layers}: must be at least 1")
    graph = build_graph(closure)
    roots = find_roots(graph, roots, closure.source)
    groups = STRATEGIES[strategy](graph, roots, max_layers)
    _check_partition(groups, closure, max_layers)
    layers = tuple(
        PlanLayer(
            paths=tuple(sorted(group)),
            nar_size=sum(closure.paths[p].nar_size or 0 for p in group),
        )
        for group in groups
    )
    return Plan(closure.store_dir, strategy, tuple(roots), layers)


def _check_partition(groups: list[list[str]], closure: Closure, budget: int) -> None:
    """A strategy's invariant: every path in exactly one non-empty group, within budget."""
    assigned = [path for group in groups for path in group]
    assert all(groups), "a strategy returned an empty layer"
    assert len(groups) <= budget, "a strategy exceeded the layer budget"
    assert len(assigned) == len(set(assigned)) == len(closure.paths), "not a partition"
    assert set(assigned) == closure.paths.keys(), "not a partition of the closure"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def plan_table(plan: Plan) -> str:
    """A short table for people: one row a layer, with its size and what it holds."""
    rows = [f"{'layer':>5}  {'size':>10}  {'paths':>5}  first path"]
    for index, layer in enumerate(plan.layers, 1):
        first = layer.paths[0].rsplit("/", 1)[1]
        rows.append(f"{index:>5}  {human_size(layer.nar_size):>10}  {len(layer.paths):>5}  {first}")
    total = sum(layer.nar_size for layer in plan.layers)
    rows.append(f"{len(plan.layers)} layers, {human_size(total)} of store paths ({plan.strategy})")
    return "\n".join(rows)
