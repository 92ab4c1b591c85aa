"""The history harness's parts: synthetic upgrades that chain, and the naive
append-only model that bench_reuse.py --history measures nixlayer against."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_reuse import draw_scenarios, naive_step
from synthetic import MID_SHARE, SCENARIOS, _ancestor_count, _users, generate, store_paths, upgrade


def _changed(old: dict[str, str], new: dict[str, str]) -> set[str]:
    return {name for name, path in new.items() if old.get(name) != path}


def test_every_scenario_upgrades_an_upgraded_model_again() -> None:
    model = generate(300)
    for scenario in SCENARIOS:
        for rng in (None, random.Random(3)):
            once = upgrade(model, scenario, rng)
            twice = upgrade(once, scenario, rng)
            assert _changed(store_paths(once), store_paths(twice)), (scenario, rng)


def test_a_second_add_dependency_adds_another() -> None:
    once = upgrade(generate(100), "add-dependency")
    twice = upgrade(once, "add-dependency")
    assert {"newdep-0.1", "newdep2-0.1"} <= twice.packages.keys()
    assert once.packages["newdep-0.1"].size == 4_000_000


def test_a_drawn_mid_library_is_used_by_its_share_and_the_draw_repeats() -> None:
    model = generate(1000)
    users = _users(model)
    drawn = [upgrade(model, "mid", random.Random(seed)) for seed in range(5)]
    for seed, upgraded in enumerate(drawn):
        (name,) = [n for n, p in upgraded.packages.items() if p != model.packages[n]]
        share = _ancestor_count(users, name) / len(model.packages)
        assert MID_SHARE[0] <= share <= MID_SHARE[1]
        assert upgrade(model, "mid", random.Random(seed)) == upgraded
    assert len({tuple(sorted(m.packages.items())) for m in drawn}) > 1


def test_the_mix_draws_the_same_scenarios_for_a_seed() -> None:
    first = draw_scenarios("mid-heavy", 50, random.Random(7))
    assert first == draw_scenarios("mid-heavy", 50, random.Random(7))
    assert set(first) <= set(SCENARIOS)


def test_the_naive_model_appends_then_rewrites_the_deadest_layer() -> None:
    sizes = {p: 10 for p in "abcdefgh"} | {"c": 15, "e": 15}
    stack = [frozenset("ab"), frozenset("cd"), frozenset("ef")]
    # c dies, g comes: 15 dead bytes of 80 is within 25 %, so g goes on top
    appended, rewritten = naive_step(stack, set("abdefg"), sizes, max_layers=10)
    assert (appended, rewritten) == ([*stack, frozenset("g")], 0)
    # c and e die, h comes: 30 of 90 is past 25 %; "cd" and "ef" are as dead and as
    # live, so the higher one, "ef", goes and its f joins h on top: 15 of 75 dead
    compacted, rewritten = naive_step(appended, set("abdfgh"), sizes, max_layers=10)
    assert (compacted, rewritten) == ([stack[0], stack[1], frozenset("g"), frozenset("fh")], 1)
    # the layer budget: the deadest layer goes too, and its live paths join the new ones
    squeezed, rewritten = naive_step(stack, set("abcdefh"), sizes, max_layers=3)
    assert (squeezed, rewritten) == ([frozenset("cd"), frozenset("ef"), frozenset("abh")], 1)
