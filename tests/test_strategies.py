"""The popularity strategy, checked against hand-computed graphs and a brute-force recount."""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixlayer.strategies import reach
from nixlayer.strategies.popularity import path_counts, popularity, popularity_scores


def _path(name: str, hash_char: str = "a") -> str:
    return f"/nix/store/{hash_char * 32}-{name}"


def test_nixpkgs_closure_graph_example() -> None:
    # The example from nixpkgs' closure-graph.py tests: foo → bar → baz → tux, foo → baz.
    graph = nx.DiGraph([("foo", "bar"), ("foo", "baz"), ("bar", "baz"), ("baz", "tux")])
    assert popularity_scores(graph, ["foo"]) == {"foo": 1, "bar": 2, "baz": 4, "tux": 6}


def test_diamond_counts_ancestors_once_not_paths() -> None:
    # A → B → D, A → C → D, D → E. W: A1 B1 C1 D2 E2.
    # pop(D) = W(A)+W(B)+W(C)+W(D) = 5 (a path sum would give 6); pop(E) = 5 + 2 = 7.
    graph = nx.DiGraph([("A", "B"), ("A", "C"), ("B", "D"), ("C", "D"), ("D", "E")])
    assert path_counts(graph, ["A"]) == {"A": 1, "B": 1, "C": 1, "D": 2, "E": 2}
    assert popularity_scores(graph, ["A"]) == {"A": 1, "B": 2, "C": 2, "D": 5, "E": 7}


def test_two_roots_share_a_dependency() -> None:
    # R1 → L, R2 → L, R2 → M: L is reached from both roots.
    graph = nx.DiGraph([("R1", "L"), ("R2", "L"), ("R2", "M")])
    # W(L) = 2, so pop(L) = W(R1) + W(R2) + W(L) = 4.
    assert popularity_scores(graph, ["R1", "R2"]) == {"R1": 1, "R2": 1, "L": 4, "M": 2}


def test_explicit_root_that_is_itself_referenced() -> None:
    # With roots X and Y where X → Y: W(Y) = 1 (itself) + 1 (via X).
    graph = nx.DiGraph([("X", "Y"), ("Y", "Z")])
    assert path_counts(graph, ["X", "Y"]) == {"X": 1, "Y": 2, "Z": 2}
    assert popularity_scores(graph, ["X", "Y"]) == {"X": 1, "Y": 3, "Z": 5}


def _brute_force_scores(graph: nx.DiGraph, roots: list[str]) -> dict[str, int]:
    counts = {
        node: sum(
            (1 if root == node else len(list(nx.all_simple_paths(graph, root, node))))
            for root in roots
        )
        for node in graph
    }
    return {x: sum(counts[u] for u in nx.ancestors(graph, x) | {x}) for x in graph}


@st.composite
def dags(draw: st.DrawFn) -> nx.DiGraph:
    """Edges from lower to higher ranks, the ranks a shuffle of the labels, and nodes
    added in another shuffled order: neither labels nor insertion give the order."""
    size = draw(st.integers(min_value=1, max_value=9))
    ranked = draw(st.permutations(range(size)))
    pairs = st.tuples(st.integers(0, size - 1), st.integers(0, size - 1))
    edges = draw(st.lists(pairs.filter(lambda e: e[0] < e[1]), max_size=20))
    graph = nx.DiGraph()
    graph.add_nodes_from(draw(st.permutations(range(size))))
    graph.add_edges_from((ranked[a], ranked[b]) for a, b in edges)
    return graph


@settings(max_examples=300, deadline=None)
@given(dags())
def test_scores_equal_a_brute_force_recount(graph: nx.DiGraph) -> None:
    roots = [node for node, degree in graph.in_degree() if degree == 0]
    assert popularity_scores(graph, roots) == _brute_force_scores(graph, roots)


@settings(max_examples=200, deadline=None)
@given(dags(), st.lists(st.sampled_from([1, 1, 1, 7, 1000]), min_size=9, max_size=9),
       st.booleans(), st.booleans())  # fmt: skip
def test_reach_sums_equal_a_brute_force_recount(
    graph: nx.DiGraph, values: list[int], upstream: bool, in_blocks: bool
) -> None:
    """Both ways of summing (a popcount for one weight, prefix sums for any), both ways
    of running (one pass, or the range split down to single positions when no set may
    be kept), and the sums of a few wanted nodes."""
    weights = {node: values[node] for node in graph}
    reach_set = nx.ancestors if upstream else nx.descendants
    expected = {x: sum(weights[u] for u in reach_set(graph, x) | {x}) for x in graph}
    counts = {x: len(reach_set(graph, x)) + 1 for x in graph}
    ones = dict.fromkeys(graph, 1)
    saved = reach._LIVE_BITS
    reach._LIVE_BITS = 0 if in_blocks else saved
    try:
        assert reach.reach_sums(graph, weights, upstream) == expected
        assert reach.reach_sums(graph, ones, upstream) == counts
    finally:
        reach._LIVE_BITS = saved
    ix = reach.indexed(graph)
    wanted = [values[node] != 1 for node in ix.nodes]
    sums = reach.indexed_reach_sums(ix, [weights[n] for n in ix.nodes], upstream, wanted)
    assert sums == [expected[n] if w else 0 for n, w in zip(ix.nodes, wanted, strict=True)]


@settings(max_examples=200, deadline=None)
@given(dags(), st.lists(st.integers(0, 2), min_size=9, max_size=9), st.booleans())
def test_closure_sums_equal_a_brute_force_recount(
    graph: nx.DiGraph, groups: list[int], in_blocks: bool
) -> None:
    ix = reach.indexed(graph)
    group_of = [groups[node] for node in ix.nodes]
    sizes = [node * 10 + 1 for node in ix.nodes]
    expected = [0] * (max(group_of) + 1)
    for g in range(len(expected)):
        members = [n for n in graph if groups[n] == g]
        union = set(members).union(*(nx.descendants(graph, n) for n in members))
        expected[g] = sum(n * 10 + 1 for n in union)
    saved = reach._LIVE_BITS
    reach._LIVE_BITS = 0 if in_blocks else saved
    try:
        assert reach.closure_sums(ix, sizes, group_of) == expected
    finally:
        reach._LIVE_BITS = saved


@pytest.mark.parametrize(
    "edges",
    [[(0, 1), (1, 2), (2, 1)], [(0, 0)], [(0, 1), (2, 3), (3, 2)]],
    ids=["reached from a source", "self-loop", "reached from no source"],
)
def test_indexed_refuses_a_cycle(edges: list[tuple[int, int]]) -> None:
    with pytest.raises(nx.NetworkXUnfeasible):
        reach.indexed(nx.DiGraph(edges))


def test_a_chain_is_summed_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each set of a chain is freed once its one user has read it, so the live sets
    stay under a limit that all of them together would pass."""
    chain = nx.DiGraph([(i, i + 1) for i in range(99)])
    passes = []
    sets = reach._sets
    monkeypatch.setattr(reach, "_sets", lambda *args: passes.append(args) or sets(*args))
    monkeypatch.setattr(reach, "_LIVE_BITS", 300)
    assert reach.reach_sums(chain, dict.fromkeys(chain, 1), upstream=False) == {
        i: 100 - i for i in chain
    }
    assert len(passes) == 1


def test_layers_most_popular_first_and_one_shared_top_layer() -> None:
    app, lib, glibc, extra = _path("app"), _path("lib", "b"), _path("glibc", "c"), _path("x", "d")
    graph = nx.DiGraph([(app, lib), (app, glibc), (lib, glibc), (app, extra)])
    # pop: glibc 4 (app, lib and itself twice), lib 2, extra 2, app 1; lib < x by name.
    # The shared top layer is in name order.
    assert popularity(graph, [app], 3) == [[glibc], [lib], [app, extra]]
    assert popularity(graph, [app], 10) == [[glibc], [lib], [extra], [app]]
    assert popularity(graph, [app], 1) == [[app, glibc, lib, extra]]


@settings(max_examples=300, deadline=None)
@given(dags(), st.integers(1, 12))
def test_the_most_popular_get_layers_of_their_own(graph: nx.DiGraph, budget: int) -> None:
    """Scoring only the contenders picks what ranking every score would."""
    graph = nx.relabel_nodes(graph, {n: _path(f"p{n}", "abcdfghij"[n]) for n in graph})
    roots = [node for node, degree in graph.in_degree() if degree == 0]
    scores = popularity_scores(graph, roots)
    ranked = sorted(graph, key=lambda p: (-scores[p], p.rsplit("-", 1)[1]))
    solo = [[path] for path in ranked[: budget - 1]]
    layers = popularity(graph, roots, budget)
    assert layers[: len(solo)] == solo
    assert sorted(p for layer in layers[len(solo) :] for p in layer) == sorted(ranked[budget - 1 :])


def test_ties_are_broken_by_name_then_hash() -> None:
    root = _path("root")
    zlib, abc_2, abc_1 = _path("zlib", "b"), _path("abc", "d"), _path("abc", "c")
    graph = nx.DiGraph([(root, zlib), (root, abc_2), (root, abc_1)])
    assert popularity(graph, [root], 10) == [[abc_1], [abc_2], [zlib], [root]]
