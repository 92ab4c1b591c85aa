"""Layerings that survive upgrades: strategy invariants, --previous, --group, fleets, and
the push-cost measure against a brute-force recount."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore

from nixlayer.build import load_closure, store_layers
from nixlayer.closure import Closure, RawEntry, make_closure
from nixlayer.customisation import Customisation
from nixlayer.errors import NixlayerError
from nixlayer.fleet import plan_fleet
from nixlayer.formats import read_image
from nixlayer.measure import push_cost
from nixlayer.options import ClosureInput, Layering
from nixlayer.plan import PLAN_VERSION, Plan, make_plan
from nixlayer.strategies import STRATEGIES
from nixlayer.strategies.auto import auto
from nixlayer.strategies.cochange import _first_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from synthetic import SCENARIOS, generate, path_info, upgrade


def _closure(entries: list[dict[str, object]], name: str = "closure.json") -> Closure:
    raw = [RawEntry(str(e["path"]), tuple(e["references"]), int(e["narSize"])) for e in entries]  # type: ignore[arg-type]
    return make_closure(raw, "/nix/store", name)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Closure]:
    model = generate(500)
    return {"old": _closure(path_info(model))} | {
        scenario: _closure(path_info(upgrade(model, scenario))) for scenario in SCENARIOS
    }


@settings(max_examples=15, deadline=None)
@given(paths=st.integers(10, 300), seed=st.integers(0, 1000), budget=st.integers(1, 40))
def test_every_strategy_covers_every_path_once_within_budget(
    paths: int, seed: int, budget: int
) -> None:
    closure = _closure(path_info(generate(paths, seed)))
    for strategy in STRATEGIES:
        plan = make_plan(closure, strategy, budget)  # make_plan asserts the partition
        assert len(plan.layers) <= budget
        assigned = [p for layer in plan.layers for p in layer.paths]
        assert sorted(assigned) == sorted(closure.paths)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_previous_keeps_every_surviving_layer(synthetic: dict[str, Closure], strategy: str) -> None:
    old = make_plan(synthetic["old"], strategy, 100)
    for scenario in SCENARIOS:
        new_closure = synthetic[scenario]
        new = make_plan(new_closure, strategy, 100, previous=old)
        surviving = [s for s in old.layer_sets() if s <= new_closure.paths.keys()]
        assert new.layer_sets()[: len(surviving)] == surviving, scenario
        assert len(new.layers) <= 100


def _brute_force(old: Plan, new: Plan) -> tuple[int, int, int]:
    """floor, pushed and chain bytes, counted the slow and obvious way."""
    sizes = new.sizes()
    old_paths = set(old.sizes())
    floor = sum(size for path, size in sizes.items() if path not in old_paths)
    old_layers = [sorted(layer.paths) for layer in old.layers]
    pushed = sum(layer.nar_size for layer in new.layers if sorted(layer.paths) not in old_layers)
    chain, diverged = 0, False
    for i, layer in enumerate(new.layers):
        diverged = diverged or i >= len(old.layers) or sorted(layer.paths) != old_layers[i]
        chain += layer.nar_size if diverged else 0
    return floor, pushed, chain


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_push_cost_equals_a_brute_force_recount(
    synthetic: dict[str, Closure], scenario: str
) -> None:
    for strategy in STRATEGIES:
        old = make_plan(synthetic["old"], strategy, 60)
        new = make_plan(synthetic[scenario], strategy, 60)
        cost = push_cost(old.layer_sets(), new.layer_sets(), new.sizes())
        assert (cost.floor, cost.pushed, cost.chain) == _brute_force(old, new)
        assert cost.excess == cost.pushed - cost.floor >= 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_default_pushes_no_more_than_popularity_or_auto(
    synthetic: dict[str, Closure], scenario: str
) -> None:
    default = _pushed(synthetic["old"], synthetic[scenario])
    others = (_pushed(synthetic["old"], synthetic[scenario], s) for s in ("popularity", "auto"))
    assert default <= min(others)


def test_after_a_hub_upgrade_the_default_pushes_no_more_than_the_others_at_5000() -> None:
    """Paths that need nothing (no glibc) stay out of the hub's layer and of its
    users' layers, so their layers survive; at 5,000 paths popularity isolates a few of
    them by luck, which the default must match."""
    model = generate(5000)
    old, new = _closure(path_info(model)), _closure(path_info(upgrade(model, "hub")))
    default = _pushed(old, new)
    assert default <= min(_pushed(old, new, "popularity"), _pushed(old, new, "auto"))


def _pushed(old: Closure, new: Closure, strategy: str = "cochange") -> int:
    before, after = make_plan(old, strategy, 100), make_plan(new, strategy, 100)
    return push_cost(before.layer_sets(), after.layer_sets(), after.sizes()).pushed


@pytest.mark.parametrize("scenario", ["app", "leaf", "mid", "drop-dependency"])
def test_the_default_rebuilds_only_layers_that_hold_changed_paths(
    synthetic: dict[str, Closure], scenario: str
) -> None:
    """Without --previous: every layer of the new plan made of unchanged paths only is
    a layer of the old plan, so the upgrade moved nothing it did not touch."""
    old = make_plan(synthetic["old"], "cochange", 100)
    new = make_plan(synthetic[scenario], "cochange", 100)
    unchanged = [s for s in new.layer_sets() if s <= synthetic["old"].paths.keys()]
    assert len(unchanged) >= len(new.layers) // 2
    assert set(unchanged) <= set(old.layer_sets())


@pytest.mark.parametrize(("paths", "budget"), [(20, 3), (50, 4), (500, 8), (5000, 16)])
def test_a_small_budget_still_keeps_the_application_alone_on_top(paths: int, budget: int) -> None:
    """Hubs and paths that need nothing stand apart only as far as the budget allows:
    where no price limit fits, neighbouring runs merge, never into the app's layer."""
    plan = make_plan(_closure(path_info(generate(paths, 2))), "cochange", budget)
    assert len(plan.layers) <= budget
    assert [p.rsplit("-", 2)[-2:] for p in plan.layers[-1].paths] == [["app", "1.0"]]


def test_a_large_path_does_not_join_the_layer_of_a_path_that_uses_it(
    synthetic: dict[str, Closure],
) -> None:
    """The budget's half largest paths top their own groups: none of them sits in a
    layer with one of its users unless both were left over side by side."""
    closure = synthetic["old"]
    plan = make_plan(closure, "cochange", 100)
    largest = sorted(closure.paths, key=lambda p: -(closure.paths[p].nar_size or 0))[:50]
    layer_of = {p: i for i, layer in enumerate(plan.layers) for p in layer.paths}
    users = {p: [u for u, e in closure.paths.items() if p in e.references] for p in largest}
    shared = [p for p in largest for u in users[p] if u != p and layer_of[u] == layer_of[p]]
    assert len(shared) <= 5


def test_the_application_layer_holds_the_application_alone(
    synthetic: dict[str, Closure],
) -> None:
    plan = make_plan(synthetic["old"], "cochange", 20)  # a tight budget
    (app_layer,) = [layer for layer in plan.layers if any("app-1.0" in p for p in layer.paths)]
    assert len(app_layer.paths) == 1
    assert plan.layers[-1] == app_layer  # it changes most often: on top


def test_auto_follows_nixpkgs_semantics() -> None:
    """big and small become primaries first (largest narSize); shared, reached by
    both, gets a layer keyed by both until it becomes a primary itself."""
    name = {n: f"/nix/store/{c * 32}-{n}" for n, c in zip(
        ("app", "big", "small", "shared", "own"), "abcdf", strict=True)}  # fmt: skip
    graph = nx.DiGraph(
        [(name[a], name[b]) for a, b in
         [("app", "big"), ("app", "small"), ("big", "shared"), ("small", "shared"), ("big", "own")]]
    )  # fmt: skip
    sizes = {"app": 1, "big": 100, "small": 50, "shared": 10, "own": 5}
    nx.set_node_attributes(graph, {name[n]: s for n, s in sizes.items()}, "nar_size")

    def named(groups: list[list[str]]) -> list[list[str]]:
        return [[p.split("-", 1)[1] for p in group] for group in groups]

    assert named(auto(graph, [name["app"]], 4)) == [["shared"], ["small"], ["big", "own"], ["app"]]
    assert named(auto(graph, [name["app"]], 2)) == [["big", "own", "shared"], ["app", "small"]]


def test_groups_share_a_layer(synthetic: dict[str, Closure], tmp_path: Path) -> None:
    plan = make_plan(synthetic["old"], "cochange", 50, groups=[["lib00001*"], ["no-such-*"]])
    grouped = [layer for layer in plan.layers if any("lib00001" in p for p in layer.paths)]
    assert len(grouped) == 1
    assert all("lib00001" in p for p in grouped[0].paths)
    assert any("matches no path" in note for note in plan.notes)


def test_fleet_shares_identical_layers() -> None:
    closures = [_closure(path_info(generate(300, seed)), f"c{seed}") for seed in (1, 2, 3)]
    fleet = plan_fleet(closures, "cochange", 60)
    assert fleet.shared_bytes == fleet.ceiling > 0
    for closure, plan in zip(closures, fleet.plans, strict=True):
        assert sorted(plan.sizes()) == sorted(closure.paths)
        assert len(plan.layers) <= 60
    shared = set.intersection(*(set(p.layer_sets()) for p in fleet.plans))
    glibc = next(p for p in closures[0].paths if p.endswith("glibc-2.39"))
    assert any(glibc in layer for layer in shared)


def test_fleet_on_the_command_line(tmp_path: Path) -> None:
    """One plan per closure in the folder; what two images share sits in identical layers."""
    for seed in (1, 2):
        (tmp_path / f"svc{seed}.json").write_text(json.dumps(path_info(generate(300, seed))))
    files = [tmp_path / "svc1.json", tmp_path / "svc2.json"]
    (tmp_path / "plans").mkdir()
    run_ok("plan", "--fleet", *files, "-o", tmp_path / "plans", "-q")
    plans = [Plan.from_json(json.loads((tmp_path / "plans" / f"svc{s}.plan.json").read_text()),
                            f"svc{s}") for s in (1, 2)]  # fmt: skip
    shared = set(plans[0].layer_sets()) & set(plans[1].layer_sets())
    common = set(plans[0].sizes()) & set(plans[1].sizes())
    assert common and {p for layer in shared for p in layer} == common


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--root", "/nix/store/x"], "--root: not with --fleet"),
        (["--group", "g.json"], "--group: not with --fleet"),
        (["-o", "a-file"], "-o a-file: a fleet's plans go into a folder, one per closure"),
        (["same"], "another closure's plan would also be"),
    ],
    ids=["root", "group", "output-not-a-folder", "same-name"],
)
def test_fleet_refuses_what_it_cannot_do(extra: list[str], said: str, tmp_path: Path) -> None:
    closure = tmp_path / "c.json"
    closure.write_text(json.dumps(path_info(generate(50))))
    (tmp_path / "a-file").write_text("")
    (tmp_path / "out").mkdir()
    files = [closure, closure] if extra == ["same"] else [closure, tmp_path / "no-such.json"]
    flags = [] if extra == ["same"] else extra
    output = [] if "-o" in flags else ["-o", "out"]
    result = run_nixlayer("plan", "--fleet", *files, *output, *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert said in result.stderr.decode() and result.stderr.count(b"\n") == 1, result.stderr
    assert os.listdir(tmp_path / "out") == []


def test_diff_on_the_command_line(synthetic: dict[str, Closure], tmp_path: Path) -> None:
    files = {}
    for name in ("old", "app"):
        files[name] = tmp_path / f"{name}.json"
        entries = [
            {"path": p.path, "narSize": p.nar_size, "references": list(p.references)}
            for p in synthetic[name].paths.values()
        ]
        files[name].write_text(json.dumps(entries))
    plan = tmp_path / "old-plan.json"
    run_ok("plan", files["old"], "-o", plan, "-q")
    report = json.loads(run_ok("diff", plan, files["app"], "--json").stdout)
    assert report["excess"] == report["pushed"] - report["floor"] == 0
    assert [layer["status"] for layer in report["layers"]].count("new") == 1
    failed = run_nixlayer("diff", plan, files["app"], "--fail-over", "1000")
    assert failed.returncode == 1 and b"--fail-over" in failed.stderr
    text = run_ok("diff", plan, files["app"]).stdout.decode()
    assert "floor" in text and "reused" in text


def test_previous_without_room_releases_the_smallest_layers(synthetic: dict[str, Closure]) -> None:
    old = make_plan(synthetic["old"], "cochange", 100)
    extra = RawEntry("/nix/store/" + "z" * 32 + "-extra-1.0", (), 5_000)
    entries = [RawEntry(p.path, p.references, p.nar_size) for p in synthetic["old"].paths.values()]
    grown = make_closure([*entries, extra], "/nix/store", "grown.json")
    new = make_plan(grown, "cochange", 100, previous=old)
    assert len(new.layers) == 100
    assert any("merged to stay within budget" in note for note in new.notes)
    smallest = frozenset(min(old.layers, key=lambda layer: layer.nar_size).paths)
    assert smallest not in new.layer_sets()
    assert sum(s in new.layer_sets() for s in old.layer_sets()) == 99


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_paths_a_base_image_provides_get_no_layer(
    synthetic: dict[str, Closure], strategy: str
) -> None:
    """What a base image holds is neither laid out again nor kept from --previous."""
    old = make_plan(synthetic["old"], strategy, 100)
    provided = frozenset(old.layers[0].paths) | {old.layers[len(old.layers) // 2].paths[0]}
    in_base = synthetic["app"].paths[old.layers[0].paths[0]].name
    new = make_plan(synthetic["app"], strategy, 100, previous=old, groups=[[in_base]],
                    provided=provided)  # fmt: skip
    laid_out = [p for layer in new.layers for p in layer.paths]
    new_paths = synthetic["app"].paths.keys()
    assert sorted(laid_out) == sorted(new_paths - provided)
    assert all(provided.isdisjoint(layer) for layer in new.layer_sets())
    kept = [s for s in old.layer_sets() if s.isdisjoint(provided) and s <= new_paths]
    assert len(kept) >= len(old.layers) - 3  # less the two with provided paths, the app's
    assert set(kept) <= set(new.layer_sets())
    assert new.notes[0].startswith(f"{len(provided)} paths are in the base image already")
    assert new.notes[1] == f"the group {[in_base]} matches only paths placed already"


def test_previous_with_a_path_in_two_layers_keeps_the_lower(
    synthetic: dict[str, Closure],
) -> None:
    """Images built on a base before nixlayer left out the base's paths hold some paths
    twice; as --previous, the lower layer is kept and the plan is still a partition."""
    old = make_plan(synthetic["old"], "cochange", 100)
    twice = old.layers[0].paths[0]
    doubled = replace(old.layers[1], paths=(*old.layers[1].paths, twice),
                      sizes=(*old.layers[1].sizes, 0))  # fmt: skip
    previous = replace(old, layers=(old.layers[0], doubled, *old.layers[2:]))
    new = make_plan(synthetic["app"], "cochange", 100, previous=previous)
    assert new.layer_sets()[0] == old.layer_sets()[0]
    assert frozenset(doubled.paths) not in new.layer_sets()


def test_a_last_build_given_as_a_closure_is_planned_as_it_was_built(
    synthetic: dict[str, Closure], fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """On a base of 8 layers the store gets 92 of --max-layers 100: the old closure is
    planned with those 92 again, so every old layer but the app's is reused."""
    base_file = tmp_path / "base.tar"
    run_ok("from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
           "-o", base_file)  # fmt: skip
    base = read_image(str(base_file))
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(path_info(generate(500))))
    assert load_closure(ClosureInput(old_file), print).paths == synthetic["old"].paths

    def plan(closure: Closure, previous: str | None = None) -> Plan:
        layering = Layering(previous=previous)
        source = ClosureInput(old_file)
        return store_layers(closure, Path("/"), Customisation(), base, layering, source)[0]

    old = plan(synthetic["old"])
    new = plan(synthetic["app"], str(old_file))
    assert len(old.layers) <= 92
    assert sum(s in new.layer_sets() for s in old.layer_sets()) == len(old.layers) - 1


def test_a_plan_file_with_an_empty_layer_is_refused() -> None:
    data = {"version": PLAN_VERSION, "store_dir": "/nix/store", "strategy": "cochange",
            "roots": [], "layers": [{"paths": [], "nar_size": 0, "sizes": []}]}  # fmt: skip
    with pytest.raises(
        NixlayerError, match=r"plan\.json: a malformed plan \(a layer without paths\)"
    ):
        Plan.from_json(data, "plan.json")


@settings(max_examples=300, deadline=None)
@given(
    drops=st.lists(st.integers(0, 60), min_size=1, max_size=300),
    wanted=st.integers(0, 400),
    start=st.integers(0, 300),
)
def test_the_price_limit_search_finds_the_first_step_that_fits(
    drops: list[int], wanted: int, start: int
) -> None:
    """Any count that never rises with the step: the first step at or under ``wanted``
    (or the top), each step tried at most once, none outside the range."""
    counts = [sum(drops[step:]) for step in range(len(drops))]
    top = len(counts) - 1
    tried: list[int] = []

    def count(step: int) -> int:
        tried.append(step)
        return counts[step]

    expected = next((step for step, c in enumerate(counts) if c <= wanted), top)
    assert _first_fit(count, wanted, min(start, top), top) == expected
    assert all(0 <= step <= top for step in tried)
    assert len(tried) == len(set(tried))
    assert len(tried) <= 3 * top.bit_length() + 4  # a search that crept would not be


@pytest.mark.parametrize("first", [0, 1, 44, 160, 299, 300])
def test_the_price_limit_search_halves_where_a_line_says_nothing(first: int) -> None:
    """A count that drops from 1 to 0 at ``first``: a line through two tries points at
    the try that fitted, so only halving keeps the tries few."""
    counts = [1] * first + [0] * (301 - first)
    tried: list[int] = []

    def count(step: int) -> int:
        tried.append(step)
        return counts[step]

    assert _first_fit(count, 0, 299, 300) == first
    assert len(tried) <= 3 * (300).bit_length() + 4


@pytest.mark.parametrize("off", [-20, -5, 0, 5, 20])
def test_the_price_limit_search_needs_few_tries_near_an_estimate(off: int) -> None:
    """Layer counts fall about 5 % a step near the fit (synthetic closures): from an
    estimate 20 steps off, four tries find the first step that fits."""
    counts = [round(1000 * math.exp(-0.05 * step)) for step in range(401)]
    tried: list[int] = []

    def count(step: int) -> int:
        tried.append(step)
        return counts[step]

    assert _first_fit(count, 99, 47 + off, 400) == 47  # 1000·e^(-0.05·47) = 95
    assert len(tried) <= 4
