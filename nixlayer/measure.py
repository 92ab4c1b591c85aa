"""What a new build costs to push, against the build before it.

A layer's bytes depend on its set of store paths alone, so a layer of the new build
whose exact set was a layer of the old one is the same blob and does not travel. A
layer of an image that holds no store paths (the customisation layer, a base
image's) is keyed by its diff_id instead: it travels too when it changed.
Whatever the layering, the paths that are new must travel: that is the floor; the
rest of what is pushed is the excess a layering adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Layers = Sequence[frozenset[str]]


@dataclass(frozen=True)
class LayerChange:
    """One layer of the new build: ``reused`` (the same set was an old layer), ``new``
    (none of its paths were in the old build) or ``changed`` (against the old layer
    it shares most paths with: which paths came and went)."""

    index: int
    paths: frozenset[str]
    size: int
    status: str
    came: tuple[str, ...] = ()
    went: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushCost:
    """Bytes: ``floor`` (new paths), ``pushed`` (layers that are not reused), ``excess``
    (pushed - floor), ``chain`` (the new layers from the lowest one whose stack below
    differs: what docker's layer store reloads), and the layers and moved paths."""

    floor: int
    pushed: int
    total: int
    chain: int
    layers: tuple[LayerChange, ...]
    moved: tuple[tuple[str, int, int], ...]

    @property
    def excess(self) -> int:
        return self.pushed - self.floor

    @property
    def ratio(self) -> float | None:
        return self.pushed / self.floor if self.floor else None

    @property
    def reuse_percent(self) -> float:
        return 100.0 * (self.total - self.pushed) / self.total if self.total else 100.0

    def to_json(self) -> dict[str, Any]:
        """Layers numbered from 1, bottom first, as the table and ``inspect`` number them."""
        return {
            "floor": self.floor,
            "pushed": self.pushed,
            "excess": self.excess,
            "ratio": self.ratio,
            "reuse_percent": self.reuse_percent,
            "chain": self.chain,
            "total": self.total,
            "layers": [
                {
                    "index": change.index + 1,
                    "status": change.status,
                    "size": change.size,
                    "paths": sorted(change.paths),
                    "came": list(change.came),
                    "went": list(change.went),
                }
                for change in self.layers
            ],
            "moved": [{"path": p, "from": old + 1, "to": new + 1} for p, old, new in self.moved],
        }


def _layer_of(layers: Layers) -> dict[str, int]:
    return {path: index for index, layer in enumerate(layers) for path in layer}


def _change(index: int, layer: frozenset[str], size: int, old: Layers) -> LayerChange:
    overlaps = [(len(layer & old_layer), -i) for i, old_layer in enumerate(old)]
    best_overlap, best = max(overlaps, default=(0, 0))
    if not best_overlap:
        return LayerChange(index, layer, size, "new", came=tuple(sorted(layer)))
    match = old[-best]
    return LayerChange(
        index, layer, size, "changed", tuple(sorted(layer - match)), tuple(sorted(match - layer))
    )


def push_cost(old: Layers, new: Layers, sizes: Mapping[str, int]) -> PushCost:
    """The cost of pushing ``new`` where ``old`` was pushed before; ``sizes`` holds the
    NAR size of every path of ``new`` (a layer without store paths: its diff_id, and
    its blob's size). Cost: O(paths), O(layers²) set intersections to name the old
    layer each changed one came from, and one set comparison per old and new layer
    that share a path."""
    old_paths = {path for layer in old for path in layer}
    old_layer_of = _layer_of(old)
    layer_sizes = [sum(sizes[path] for path in layer) for layer in new]
    old_sets = set(old)
    changes = tuple(
        LayerChange(i, layer, layer_sizes[i], "reused")
        if layer in old_sets
        else _change(i, layer, layer_sizes[i], old)
        for i, layer in enumerate(new)
    )
    same_prefix = next(
        (i for i, layer in enumerate(new) if i >= len(old) or old[i] != layer), len(new)
    )
    new_layer_of = _layer_of(new)
    # Whether a path's old and new layer differ, compared once per pair of layers: once
    # per path, a kept layer of 50,000 paths took minutes.
    differs: dict[tuple[int, int], bool] = {}
    for path, j in new_layer_of.items():
        i = old_layer_of.get(path)
        if i is not None and (i, j) not in differs:
            differs[i, j] = old[i] != new[j]
    moved = tuple(
        (path, old_layer_of[path], new_layer_of[path])
        for path in sorted(new_layer_of)
        if path in old_layer_of and differs[old_layer_of[path], new_layer_of[path]]
    )
    return PushCost(
        floor=sum(sizes[path] for path in new_layer_of if path not in old_paths),
        pushed=sum(c.size for c in changes if c.status != "reused"),
        total=sum(layer_sizes),
        chain=sum(layer_sizes[same_prefix:]),
        layers=changes,
        moved=moved,
    )
