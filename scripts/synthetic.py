#!/usr/bin/env python3
"""Synthetic closures that look like real ones, and their upgrades under Nix's rule.

A closure has a few hubs most paths use (glibc, zlib, openssl, bash, python),
libraries in chains 10 to 20 deep, heavy-tailed sizes (a few paths of hundreds of MB,
many of a few KB) and one application root. A store path's hash is derived from its
name, version and the hashes of its references, so an upgrade gives the upgraded path
and every path that depends on it a new store path, as Nix does.

    python scripts/synthetic.py --paths 5000 --scenario mid -o /tmp/closures
    # writes /tmp/closures/old.json and new.json (nix path-info --json lists)
"""

from __future__ import annotations

import argparse
import graphlib
import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE = "/nix/store"
SCENARIOS = ("app", "leaf", "mid", "hub", "add-dependency", "drop-dependency")
HUBS = {  # name: (size, references)
    "glibc-2.39": (30_000_000, ()),
    "zlib-1.3.1": (130_000, ("glibc-2.39",)),
    "bash-5.2": (1_600_000, ("glibc-2.39",)),
    "openssl-3.0.14": (6_500_000, ("glibc-2.39", "zlib-1.3.1")),
    "python3-3.11.9": (110_000_000, ("glibc-2.39", "zlib-1.3.1", "openssl-3.0.14", "bash-5.2")),
}
HUB_USE = {"glibc-2.39": 0.9, "zlib-1.3.1": 0.25, "bash-5.2": 0.1, "openssl-3.0.14": 0.15,
           "python3-3.11.9": 0.2}  # fmt: skip
APP = "app-1.0"
MID_SHARE = (0.05, 0.20)  # a drawn mid library: the share of the closure that uses it


@dataclass(frozen=True)
class Package:
    name: str
    size: int
    references: tuple[str, ...]
    revision: int = 0


@dataclass
class Model:
    packages: dict[str, Package] = field(default_factory=dict)


def _size(rng: random.Random) -> int:
    """Heavy-tailed: most paths a few KB to a few MB, one in 300 hundreds of MB."""
    if rng.random() < 1 / 300:
        return int(rng.uniform(150e6, 600e6))
    return max(1024, min(int(rng.lognormvariate(10.5, 2.0)), 80_000_000))


def generate(paths: int, seed: int = 1, borrowed: tuple[int, ...] = (0, 0, 1, 1, 2)) -> Model:
    """``paths`` store paths: hubs, chains of libraries, and one application. Each
    library also uses as many libraries of earlier chains as a draw from ``borrowed``
    says (the default: 0.8 on average)."""
    rng = random.Random(seed)
    model = Model({name: Package(name, size, refs) for name, (size, refs) in HUBS.items()})
    libraries = paths - len(HUBS) - 1
    chains: list[list[str]] = []
    for index in range(libraries):
        name = f"lib{index:06d}-1.{index % 7}"
        if not chains or len(chains[-1]) >= rng.randint(10, 20):
            chains.append([])
        chain = chains[-1]
        refs = {h for h, p in HUB_USE.items() if rng.random() < p}
        if chain:
            refs.add(chain[-1])  # the chain: each library needs the one below it
        for _ in range(rng.choice(borrowed)):  # and a few from earlier chains
            if len(chains) > 1:
                other = chains[rng.randrange(len(chains) - 1)]
                refs.add(other[min(len(other) - 1, int(rng.random() ** 2 * len(other)))])
        model.packages[name] = Package(name, _size(rng), tuple(sorted(refs)))
        chain.append(name)
    tops = [chain[-1] for chain in chains] or list(HUBS)
    model.packages[APP] = Package(APP, 2_500_000, tuple(sorted({*tops, "python3-3.11.9"})))
    return model


def _ancestor_count(users: dict[str, set[str]], name: str, cap: int | None = None) -> int:
    """How many paths use ``name``, directly or not; past ``cap`` the count stops early
    and returns something above it."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for user in users[todo.pop()] - seen:
            seen.add(user)
            todo.append(user)
        if cap is not None and len(seen) > cap:
            break
    return len(seen)


def _bump(model: Model, name: str) -> Model:
    package = model.packages[name]
    bumped = replace(package, revision=package.revision + 1, size=int(package.size * 1.01) + 1)
    return Model({**model.packages, name: bumped})


def _users(model: Model) -> dict[str, set[str]]:
    users: dict[str, set[str]] = {name: set() for name in model.packages}
    for package in model.packages.values():
        for ref in package.references:
            users[ref].add(package.name)
    return users


def _mid_library(model: Model) -> str:
    """The first library by name that 10 to 20 % of the closure uses."""
    users = _users(model)
    for name in sorted(n for n in model.packages if n.startswith("lib")):
        if 0.10 <= _ancestor_count(users, name) / len(model.packages) <= 0.20:
            return name
    raise ValueError("no library used by 10-20 % of the closure")


def _leaf_library(model: Model) -> str:
    """The library that needs no other library (a chain's bottom) and that the fewest
    paths use, first by name among equals."""
    users = _users(model)
    leaves = [
        name
        for name, package in model.packages.items()
        if name.startswith("lib") and set(package.references) <= set(HUBS)
    ]
    return min(sorted(leaves), key=lambda name: _ancestor_count(users, name))


def _drawn_library(model: Model, rng: random.Random, low: float, high: float,
                   leaves_only: bool = False) -> str | None:  # fmt: skip
    """A library drawn by ``rng`` among those that ``low`` to ``high`` of the closure
    uses (only chain bottoms with ``leaves_only``); None when there is none. Candidates
    are tried in a shuffled order, each count stopping past ``high``."""
    users = _users(model)
    candidates = sorted(
        name
        for name, package in model.packages.items()
        if name.startswith("lib") and not (leaves_only and set(package.references) - set(HUBS))
    )
    rng.shuffle(candidates)
    total = len(model.packages)
    cap = int(high * total)
    for name in candidates:
        if low * total <= _ancestor_count(users, name, cap) <= cap:
            return name
    return None


def _new_dependency(model: Model, rng: random.Random | None) -> Package:
    """``newdep-0.1``, then ``newdep2-0.1`` and on when it is there already; 4 MB, or
    a size drawn by ``rng``."""
    taken = sum(1 for name in model.packages if name.startswith("newdep"))
    name = f"newdep{taken + 1 if taken else ''}-0.1"
    return Package(name, _size(rng) if rng else 4_000_000, ("glibc-2.39",))


def upgrade(model: Model, scenario: str, rng: random.Random | None = None) -> Model:
    """The next build: one change, and Nix's rule does the rest (see ``store_paths``).

    The result can be upgraded again, so that builds chain into a history. Without
    ``rng`` the upgraded library is always the same one (the same model gives the same
    upgrade); with it, it is drawn: ``leaf`` a chain bottom used by under 5 % of the
    closure, ``mid`` a library used by 5 to 20 % (``MID_SHARE``), ``drop-dependency``
    any library the application uses, ``add-dependency`` a dependency of a drawn size.
    """
    if scenario == "app":
        return _bump(model, APP)
    if scenario == "leaf":
        drawn = _drawn_library(model, rng, 0.0, MID_SHARE[0], leaves_only=True) if rng else None
        return _bump(model, drawn or _leaf_library(model))
    if scenario == "mid":
        drawn = _drawn_library(model, rng, *MID_SHARE) if rng else None
        return _bump(model, drawn or _mid_library(model))
    if scenario == "hub":
        return _bump(model, "glibc-2.39")
    app = model.packages[APP]
    if scenario == "add-dependency":
        extra = _new_dependency(model, rng)
        grown = replace(app, references=tuple(sorted({*app.references, extra.name})))
        return Model({**model.packages, extra.name: extra, APP: grown})
    if scenario == "drop-dependency":
        libraries = [ref for ref in app.references if ref.startswith("lib")]
        if not libraries:
            raise ValueError("drop-dependency: the application uses no library any more")
        dropped = rng.choice(libraries) if rng else libraries[0]
        shrunk = replace(app, references=tuple(r for r in app.references if r != dropped))
        kept = Model({**model.packages, APP: shrunk})
        reachable = _reachable(kept, APP)
        return Model({n: p for n, p in kept.packages.items() if n in reachable})
    raise ValueError(f"unknown scenario {scenario!r}")


def _reachable(model: Model, root: str) -> set[str]:
    seen = {root}
    todo = [root]
    while todo:
        for ref in model.packages[todo.pop()].references:
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return seen


def store_paths(model: Model) -> dict[str, str]:
    """Each package's store path: its hash covers its name, revision, contents (here its
    size) and references' hashes, so a change propagates to every path that depends on it."""
    order = graphlib.TopologicalSorter(
        {name: package.references for name, package in model.packages.items()}
    ).static_order()  # references first
    paths: dict[str, str] = {}
    for name in order:
        package = model.packages[name]
        refs = sorted(paths[ref] for ref in package.references)
        material = [name, package.revision, package.size, refs]
        digest = hashlib.sha256(json.dumps(material).encode()).digest()
        paths[name] = f"{STORE}/{''.join(NIX32[b % 32] for b in digest)}-{name}"
    return paths


def path_info(model: Model) -> list[dict[str, object]]:
    """The closure as ``nix path-info --json`` (Nix ≤ 2.18) prints it."""
    paths = store_paths(model)
    return [
        {
            "path": paths[name],
            "narSize": package.size,
            "references": sorted(paths[ref] for ref in package.references),
        }
        for name, package in sorted(model.packages.items())
    ]


def references_graph(model: Model, seed: int = 1) -> list[dict[str, object]]:
    """The closure as ``writeReferencesGraph`` (exportReferencesGraph with structured
    attributes) writes it, which nixpkgs' ``auto-layer.py`` reads: path, narHash,
    narSize and references, every path among its own references, as most real store
    paths are (they name themselves)."""
    paths = store_paths(model)
    rng = random.Random(seed)
    return [
        {
            "narHash": "sha256:" + "".join(rng.choices(NIX32, k=52)),
            "narSize": package.size,
            "path": paths[name],
            "references": sorted([paths[name], *(paths[ref] for ref in package.references)]),
        }
        for name, package in sorted(model.packages.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", choices=SCENARIOS, default="app")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    old = generate(args.paths, args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "old.json").write_text(json.dumps(path_info(old)))
    (args.output / "new.json").write_text(json.dumps(path_info(upgrade(old, args.scenario))))


if __name__ == "__main__":
    main()
