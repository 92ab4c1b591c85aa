"""graph.py: the closure's graph as lists of integers, and as networkx sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixlayer.closure import RawEntry, make_closure
from nixlayer.errors import NixlayerError
from nixlayer.graph import build_graph, find_cycle, find_roots, induced, path_graph, postorder
from nixlayer.strategies.reach import indexed

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
REPO = Path(__file__).resolve().parents[1]


def _path(n: int) -> str:
    return f"/nix/store/{NIX32[n % 32] * 31}{NIX32[n // 32]}-p{n}"


@st.composite
def _closures(draw: st.DrawFn, acyclic: bool = True) -> list[RawEntry]:
    """Entries in a shuffled order, references to lower ranks (any, with ``acyclic``
    False), self-references sometimes, sizes sometimes missing."""
    count = draw(st.integers(1, 12))
    ranks = draw(st.permutations(range(count)))
    entries = []
    for n in range(count):
        others = [m for m in range(count) if not acyclic or ranks[m] < ranks[n]]
        refs = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        if draw(st.booleans()):
            refs.append(n)
        size = draw(st.none() | st.integers(0, 1000))
        entries.append(RawEntry(_path(n), tuple(_path(m) for m in refs), size))
    return entries


@settings(max_examples=200, deadline=None)
@given(_closures())
def test_path_graph_is_build_graph_as_integers(entries: list[RawEntry]) -> None:
    """Same nodes, edges and attributes, in the same order, as networkx's graph; the same
    walk order as the strategies' ``indexed`` finds on it."""
    closure = make_closure(entries, "/nix/store", "c.json")
    graph, nx_graph = path_graph(closure), build_graph(closure)
    expected = nx.DiGraph()
    for p in closure.paths.values():
        references = len(p.references) - (p.path in p.references)
        expected.add_node(p.path, nar_size=p.nar_size, references=references)
    expected.add_edges_from(
        (p.path, ref) for p in closure.paths.values() for ref in p.references if ref != p.path
    )
    assert list(nx_graph.nodes(data=True)) == list(expected.nodes(data=True))
    assert list(nx_graph.edges) == list(expected.edges)
    assert indexed(nx_graph) == graph.ix
    assert find_roots(graph) == sorted(n for n, d in expected.in_degree() if d == 0)


@settings(max_examples=300, deadline=None)
@given(_closures(acyclic=False))
def test_a_cycle_is_named_as_networkx_names_it(entries: list[RawEntry]) -> None:
    closure = make_closure(entries, "/nix/store", "c.json")
    nx_graph = nx.DiGraph()
    nx_graph.add_nodes_from(closure.paths)
    nx_graph.add_edges_from(
        (p.path, ref) for p in closure.paths.values() for ref in p.references if ref != p.path
    )
    if nx.is_directed_acyclic_graph(nx_graph):
        path_graph(closure)
        return
    cycle = " -> ".join(edge[0] for edge in nx.find_cycle(nx_graph))
    with pytest.raises(NixlayerError) as caught:
        path_graph(closure)
    assert str(caught.value) == f"c.json: the references form a cycle: {cycle}"


def test_find_cycle_from_the_first_node_that_reaches_one() -> None:
    # 0 → 1 → 2 → 1, and 3 → 3's own cycle 3 → 4 → 3 comes later.
    succ = [[1], [2], [1], [4], [3]]
    assert postorder(succ, [[], [0, 2], [1], [4], [3]]) is None
    assert find_cycle(succ) == [1, 2]


def test_induced_keeps_order_and_whole_closure_counts() -> None:
    entries = [
        RawEntry(_path(0), (_path(1), _path(2))),
        RawEntry(_path(1), (_path(2),)),
        RawEntry(_path(2), ()),
    ]
    graph = path_graph(make_closure(entries, "/nix/store", "c.json"))
    part = induced(graph, {_path(1), _path(2)})
    assert part.ix.nodes == [_path(1), _path(2)]
    assert part.ix.succ == [[1], []]
    assert part.references == [1, 0]
    assert part.sources() == [_path(1)]
    assert induced(graph, set(graph.ix.nodes)) is graph


@pytest.mark.parametrize(
    "args", [["--help"], ["plan", "-q", "fixtures/store-closure.json", "-o", "/dev/null"]]
)
def test_the_command_line_plans_without_networkx(args: list[str]) -> None:
    """Importing networkx takes longer than planning a small closure: neither the help
    nor a plan loads it."""
    probe = (
        "import sys\n"
        "from nixlayer.cli import main\n"
        f"sys.argv = ['nixlayer', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "print('networkx' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stderr.splitlines()[-1] == "False"
