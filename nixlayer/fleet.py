"""Fleets: several images planned together, so that the store paths they share land in
identical layers in all of them (a family of services on one nixpkgs shares glibc,
openssl, python: each shared layer is then stored and pulled once)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from nixlayer.closure import Closure, RawEntry, make_closure
from nixlayer.errors import NixlayerError
from nixlayer.plan import Plan, PlanLayer, make_plan


@dataclass(frozen=True)
class FleetPlan:
    """A plan per image, and how many bytes of shared paths sit in shared layers."""

    plans: tuple[Plan, ...]
    shared_bytes: int  # bytes of layers that are identical in more than one image
    ceiling: int  # bytes of paths that are in more than one image


def _union(closures: Sequence[Closure]) -> Closure:
    """One closure of all images' paths; two images that disagree on a path are an error."""
    store_dirs = {c.store_dir for c in closures}
    if len(store_dirs) != 1:
        raise NixlayerError(f"the closures use different store directories: {store_dirs}")
    entries = [
        RawEntry(p.path, p.references, p.nar_size, p.nar_hash)
        for closure in closures
        for p in closure.paths.values()
    ]
    return make_closure(entries, store_dirs.pop(), " + ".join(c.source for c in closures))


def _split(plan: Plan, closures: Sequence[Closure]) -> list[list[PlanLayer]]:
    """Each union layer cut by which images hold its paths, so that every piece is
    either wholly in an image or not in it; each image gets its pieces, in order."""
    per_image: list[list[PlanLayer]] = [[] for _ in closures]
    for layer in plan.layers:
        pieces: dict[frozenset[int], list[int]] = defaultdict(list)
        for i, path in enumerate(layer.paths):
            owners = frozenset(n for n, c in enumerate(closures) if path in c.paths)
            pieces[owners].append(i)
        for owners, indexes in sorted(pieces.items(), key=lambda item: -len(item[0])):
            piece = PlanLayer(
                tuple(layer.paths[i] for i in indexes), tuple(layer.sizes[i] for i in indexes)
            )
            for n in owners:
                per_image[n].append(piece)
    return per_image


def plan_fleet(closures: Sequence[Closure], strategy: str, max_layers: int) -> FleetPlan:
    """Plan the union of the closures, then cut its layers per image. The union's
    budget starts at what all images together may have and shrinks until every image
    fits ``max_layers``."""
    union = _union(closures)
    budget = max_layers * len(closures)  # each image's share of the union is what counts
    while True:
        plan = make_plan(union, strategy, budget)
        per_image = _split(plan, closures)
        worst = max(len(layers) for layers in per_image)
        if worst <= max_layers:
            break
        if budget == 1:
            raise NixlayerError(f"{max_layers}: too few layers for this fleet", "max_layers")
        budget = max(1, budget - (worst - max_layers))
    plans = tuple(
        Plan(c.store_dir, strategy, tuple(r for r in plan.roots if r in c.paths), tuple(layers))
        for c, layers in zip(closures, per_image, strict=True)
    )
    layer_owners: dict[PlanLayer, int] = defaultdict(int)
    for layers in per_image:
        for layer in layers:
            layer_owners[layer] += 1
    sizes = union.paths
    shared_paths = [p for p in sizes if sum(p in c.paths for c in closures) > 1]
    return FleetPlan(
        plans,
        shared_bytes=sum(layer.nar_size for layer, n in layer_owners.items() if n > 1),
        ceiling=sum(sizes[p].nar_size or 0 for p in shared_paths),
    )
