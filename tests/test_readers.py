"""Tests for ``nixlayer.readers``: every shape Nix prints a closure in, and bad input."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixlayer.closure import Closure, RawEntry
from nixlayer.errors import NixlayerError
from nixlayer.readers import INPUT_FORMATS, _convert_entry, read_closure

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "closures"
HELLO = FIXTURES / "hello-2.12.1"
GOLDEN = FIXTURES / "nix-path-info-golden"
HELLO_210_GRAPH = FIXTURES / "hello-attrs-graph" / "closure-graph.json"

# Every file in HELLO describes the same closure; this is the shape each one is in.
HELLO_SHAPES = {
    "path-info-list.json": "path-info-list",
    "path-info-dict.json": "path-info-dict",
    "path-info-v1.json": "path-info-dict",
    "path-info-v2.json": "path-info-v2",
    "path-info-v3.json": "path-info-v2",
    "attrs.json": "attrs",
    "references-graph.txt": "references-graph",
}

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"

P1 = "/nix/store/" + "1" * 32 + "-one"
P2 = "/nix/store/" + "2" * 32 + "-two"

# The golden entries reference these two; tests wrap them so that "foo" is the golden
# entry itself (it references itself and "bar") and "bar" is an empty leaf.
GOLDEN_FOO = "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo"
GOLDEN_BAR = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar"
GOLDEN_NAR_HASH = "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc="


def _sri(nar_hash: str | None) -> str | None:
    """A ``sha256:<nix32>`` hash (as in ``.attrs.json``) in SRI form, to compare shapes."""
    if nar_hash is None or not nar_hash.startswith("sha256:"):
        return nar_hash
    digest = bytearray(32)
    for index, char in enumerate(reversed(nar_hash.removeprefix("sha256:"))):
        byte, bit = divmod(index * 5, 8)
        value = NIX32.index(char)
        digest[byte] |= (value << bit) & 0xFF
        if byte + 1 < 32:
            digest[byte + 1] |= value >> (8 - bit)
    return "sha256-" + base64.b64encode(bytes(digest)).decode()


def _summary(closure: Closure, sizes: bool = True) -> dict[str, Any]:
    """What two shapes of one closure must agree on (the source file name differs)."""
    return {
        "store_dir": closure.store_dir,
        "paths": {
            path: (p.references, p.nar_size, _sri(p.nar_hash)) if sizes else p.references
            for path, p in closure.paths.items()
        },
    }


def _write(tmp_path: Path, content: bytes | str | Any, name: str = "closure.json") -> Path:
    """Write bytes, text, or anything else as JSON."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def _error(path: Path, **options: Any) -> str:
    """The one-line message of the NixlayerError that reading ``path`` must raise."""
    with pytest.raises(NixlayerError) as info:
        read_closure(path, **options)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- every shape of the same closure ----------------------------------------------


@pytest.fixture(scope="module")
def hello() -> Closure:
    return read_closure(HELLO / "path-info-list.json")


def test_hello_closure_content(hello: Closure) -> None:
    assert hello.store_dir == "/nix/store"
    assert {p.name for p in hello.paths.values()} == {
        "hello-2.12.1",
        "glibc-2.38-44",
        "libidn2-2.3.4",
        "libunistring-1.1",
    }
    glibc = next(p for p in hello.paths.values() if p.name == "glibc-2.38-44")
    assert glibc.path in glibc.references  # self-references are kept
    assert glibc.nar_size == 29846624
    assert glibc.nar_hash == "sha256-3vn6rjFFPbafsPLLMH3LmNmAR70oz5VUe0Oukb4uhdw="
    assert hello.source == str(HELLO / "path-info-list.json")


@pytest.mark.parametrize("name", sorted(HELLO_SHAPES))
def test_every_shape_reads_to_the_same_closure(name: str, hello: Closure) -> None:
    closure = read_closure(HELLO / name)
    sizes = HELLO_SHAPES[name] != "references-graph"
    assert _summary(closure, sizes) == _summary(hello, sizes)
    assert closure.has_nar_sizes is sizes


@pytest.mark.parametrize("name", sorted(HELLO_SHAPES))
def test_forcing_the_right_shape_reads_the_same(name: str) -> None:
    path = HELLO / name
    assert read_closure(path, input_format=HELLO_SHAPES[name]) == read_closure(path)


@pytest.mark.parametrize(
    ("name", "wrong"),
    [(n, f) for n in sorted(HELLO_SHAPES) for f in INPUT_FORMATS if f != HELLO_SHAPES[n]],
)
def test_forcing_a_wrong_shape_is_an_error(name: str, wrong: str) -> None:
    _error(HELLO / name, input_format=wrong)


def test_text_closure_has_no_sizes() -> None:
    closure = read_closure(HELLO / "references-graph.txt")
    assert all(p.nar_size is None and p.nar_hash is None for p in closure.paths.values())


@pytest.mark.parametrize("name", ["path-info-v2.json", "attrs.json", "references-graph.txt"])
def test_utf8_bom_is_accepted(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, b"\xef\xbb\xbf" + (HELLO / name).read_bytes(), name)
    assert _summary(read_closure(path)) == _summary(read_closure(HELLO / name))


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (HELLO / "path-info-v3.json").read_bytes()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))
    closure = read_closure(Path("-"))
    assert closure.source == "<stdin>"
    assert len(closure.paths) == 4


def test_stdin_error_names_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(b"")))
    with pytest.raises(NixlayerError, match=r"^<stdin>: the file is empty$"):
        read_closure(Path("-"))


# --- structured attrs ---------------------------------------------------------------


@pytest.fixture()
def hello_210_attrs(tmp_path: Path) -> Path:
    """nix2container's real hello-2.10 graph, inside an ``.attrs.json`` as Nix writes it."""
    graph = json.loads(HELLO_210_GRAPH.read_text())
    attrs = {
        "__structuredAttrs": True,
        "exportReferencesGraph": {"graph": [graph[0]["path"]]},
        "name": "hello-image",
        "outputs": {"out": "/nix/store/" + "0" * 32 + "-hello-image"},
        "graph": graph,
        "version": "2.10",
    }
    return _write(tmp_path, attrs, ".attrs.json")


def _check_hello_210(closure: Closure) -> None:
    assert {p.name for p in closure.paths.values()} == {
        "hello-2.10",
        "glibc-2.33-59",
        "libidn2-2.3.2",
        "libunistring-0.9.10",
        "bash-5.1-p12",
    }
    glibc = closure.paths["/nix/store/s9qbqh7gzacs7h68b2jfmn9l6q4jwfjz-glibc-2.33-59"]
    assert glibc.nar_size == 31243544
    assert glibc.nar_hash == "sha256:0a0hr6qc18xmd6wzfq269pbzxaz6h65c3pz3fksg05a9zqy4b6y3"
    assert glibc.references == (
        "/nix/store/nq7z9djyxaj6j7w9mgp94a6sds1jppi4-libidn2-2.3.2",
        glibc.path,
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"input_format": "attrs"},
        {"attrs_key": "graph"},
        {"input_format": "attrs", "attrs_key": "graph"},
    ],
)
def test_hello_210_attrs(hello_210_attrs: Path, options: dict[str, str]) -> None:
    _check_hello_210(read_closure(hello_210_attrs, **options))


def test_hello_210_graph_value_alone_is_a_path_info_list() -> None:
    _check_hello_210(read_closure(HELLO_210_GRAPH))


def test_attrs_key_picks_one_of_several_graphs(hello: Closure) -> None:
    path = HELLO / "attrs-two-graphs.json"
    message = _error(path)
    assert '"closure"' in message
    assert '"libc"' in message
    assert _summary(read_closure(path, attrs_key="closure")) == _summary(hello)
    libc = read_closure(path, attrs_key="libc")
    assert {p.name for p in libc.paths.values()} == {
        "glibc-2.38-44",
        "libidn2-2.3.4",
        "libunistring-1.1",
    }


def test_attrs_key_missing(hello_210_attrs: Path) -> None:
    message = _error(hello_210_attrs, attrs_key="closure")
    assert 'no attribute "closure"' in message
    assert '"graph"' in message


@pytest.mark.parametrize("key", ["name", "outputs", "__structuredAttrs"])
def test_attrs_key_not_a_graph(hello_210_attrs: Path, key: str) -> None:
    assert "not a list" in _error(hello_210_attrs, attrs_key=key)


def test_attrs_key_entries_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, {"graph": [{"path": P1, "references": []}, "oops"]})
    assert 'attribute "graph" entry 2 is a string, not an object' in _error(path, attrs_key="graph")


def test_attrs_without_graph(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x", "args": ["-e", "builder.sh"], "outputs": [{"path": 1}]})
    assert "no exportReferencesGraph list" in _error(path)


# --- Nix's golden path-info entries ------------------------------------------------


def _golden(version: int, name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"json-{version}" / f"{name}.json").read_text())


def _wrap_golden(version: int, name: str) -> Any:
    """The golden entry as "foo", with the empty golden entry as "bar": a closed closure."""
    foo, bar = _golden(version, name), _golden(version, "empty_pure")
    if version == 1:
        return {f"/nix/store/{GOLDEN_FOO}": foo, f"/nix/store/{GOLDEN_BAR}": bar}
    return {
        "version": version,
        "storeDir": "/nix/store",
        "info": {GOLDEN_FOO: foo, GOLDEN_BAR: bar},
    }


@pytest.mark.parametrize(
    ("version", "name"),
    [(1, "pure"), (1, "impure"), (1, "pure_noversion")]
    + [(v, n) for v in (2, 3) for n in ("pure", "impure")],
)
def test_golden_entries_in_a_closure(tmp_path: Path, version: int, name: str) -> None:
    closure = read_closure(_write(tmp_path, _wrap_golden(version, name)))
    foo = closure.paths[f"/nix/store/{GOLDEN_FOO}"]
    bar = closure.paths[f"/nix/store/{GOLDEN_BAR}"]
    assert foo.references == (bar.path, foo.path)
    assert (foo.nar_size, foo.nar_hash) == (34878, GOLDEN_NAR_HASH)
    assert (bar.references, bar.nar_size, bar.nar_hash) == ((), 0, GOLDEN_NAR_HASH)
    assert closure.store_dir == "/nix/store"


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("name", ["pure", "impure", "empty_pure", "empty_impure"])
def test_golden_entry_converter(version: int, name: str) -> None:
    """Base names stay base names here; ``read_closure`` joins them to the store dir."""
    entry, store_dir = _convert_entry("P", _golden(version, name), "entry", "f.json")
    prefix = "/nix/store/" if version == 1 else ""
    empty = name.startswith("empty")
    references = () if empty else (f"{prefix}{GOLDEN_BAR}", f"{prefix}{GOLDEN_FOO}")
    assert entry == RawEntry(
        path="P",
        references=references,
        nar_size=0 if empty else 34878,
        nar_hash=GOLDEN_NAR_HASH,
    )
    assert store_dir == "/nix/store"


def test_golden_noversion_declares_no_store_dir() -> None:
    _, store_dir = _convert_entry("P", _golden(1, "pure_noversion"), "entry", "f.json")
    assert store_dir is None


def test_golden_entry_alone_is_not_closed(tmp_path: Path) -> None:
    path = _write(
        tmp_path, {"version": 3, "storeDir": "/nix/store", "info": {GOLDEN_FOO: _golden(3, "pure")}}
    )
    assert "not in the closure" in _error(path)


def test_nix32_helper_agrees_with_golden_ca() -> None:
    """The two golden spellings of one ca hash: checks the helper that compares shapes."""
    nix32 = _golden(1, "pure")["ca"].removeprefix("fixed:r:")
    assert _sri(nix32) == _golden(2, "pure")["ca"]["hash"]


# --- store directories --------------------------------------------------------------


def _in_store(data: Any, store_dir: str) -> Any:
    """A copy of a fixture with every ``/nix/store`` replaced."""
    return json.loads(json.dumps(data).replace("/nix/store", store_dir))


@pytest.mark.parametrize("name", ["path-info-v1.json", "path-info-v2.json", "path-info-v3.json"])
def test_store_dir_from_the_file(tmp_path: Path, name: str) -> None:
    data = _in_store(json.loads((HELLO / name).read_text()), "/gnu/store")
    closure = read_closure(_write(tmp_path, data))
    assert closure.store_dir == "/gnu/store"
    assert all(path.startswith("/gnu/store/") for path in closure.paths)
    assert read_closure(_write(tmp_path, data), store_dir="/gnu/store/") == closure


@pytest.mark.parametrize("name", ["path-info-v1.json", "path-info-v2.json", "path-info-v3.json"])
def test_store_dir_conflicting_with_the_request(name: str) -> None:
    message = _error(HELLO / name, store_dir="/gnu/store")
    assert "/nix/store" in message
    assert "/gnu/store" in message


@pytest.mark.parametrize("name", ["path-info-list.json", "attrs.json", "references-graph.txt"])
def test_store_dir_requested_for_shapes_without_one(tmp_path: Path, name: str) -> None:
    text = (HELLO / name).read_text().replace("/nix/store", "/gnu/store")
    closure = read_closure(_write(tmp_path, text, name), store_dir="/gnu/store")
    assert closure.store_dir == "/gnu/store"
    assert "not in the store directory /nix/store" in _error(tmp_path / name)


def test_store_dirs_disagree_between_entries(tmp_path: Path) -> None:
    data = json.loads((HELLO / "path-info-v2.json").read_text())
    next(iter(data["info"].values()))["storeDir"] = "/gnu/store"
    message = _error(_write(tmp_path, data))
    assert "/gnu/store" in message
    assert "/nix/store" in message


# --- bad input ---------------------------------------------------------------------


def _item(path: Any = P1, **fields: Any) -> dict[str, Any]:
    return {"path": path, "references": [], **fields}


BAD_INPUTS: list[tuple[Any, str | None, str]] = [
    # (content, forced format, part of the message)
    (b"", None, "the file is empty"),
    (b" \n\t\n", None, "the file is empty"),
    (b"\xef\xbb\xbf", None, "the file is empty"),
    (b"[\xff]", None, "not valid UTF-8 (byte 0xff at offset 1)"),
    (b"{foo}", None, "not valid JSON: Expecting property name"),
    (b"[1 2]", None, "not valid JSON"),
    (b'[{"path": "/nix/store/', None, "truncated JSON"),
    (b'[{"path": "x", "references": []}', None, "truncated JSON"),
    (b'{"a": [1, 2', None, "truncated JSON"),
    (f'[{{"path": "{P1}", "references": [], "narSize": NaN}}]'.encode(), None, "NaN"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (b"[" + b"1" * 5000 + b"]", None, "too many digits"),
    # wrong top level
    ({}, "path-info-list", "the top level is an object, not a list"),
    ([], "path-info-dict", "the top level is a list, not an object"),
    (42, "attrs", "the top level is a number, not an object"),
    ('"x"', "path-info-v2", "the top level is a string, not an object"),
    # entries
    ([1], None, "entry 1 is a number, not an object"),
    ([_item(), None], None, "entry 2 is null, not an object"),
    ({P1: 3}, None, f'entry "{P1}" is a number, not an object'),
    ({P1: []}, None, f'entry "{P1}" is a list, not an object'),
    ({"version": 2, "info": {"x": "y"}}, None, '"info" entry "x" is a string, not an object'),
    ([{"references": []}], None, 'entry 1 has no "path"'),
    ([{"path": P1}], None, 'entry 1 has no "references"'),
    ({P1: {}}, None, f'entry "{P1}" has no "references"'),
    ([_item(1)], None, 'entry 1 has "path" 1, not a string'),
    ([_item(None)], None, 'entry 1 has "path" null, not a string'),
    ([_item(references="x")], None, '"references" that are not a list of strings'),
    ([_item(references=[1])], None, '"references" that are not a list of strings'),
    ([_item(references=None)], None, '"references" that are not a list of strings'),
    ([_item(references={P1: 1})], None, '"references" that are not a list of strings'),
    ([_item(narSize=-1)], None, '"narSize" -1, not a size'),
    ([_item(narSize=1.5)], None, '"narSize" 1.5, not a size'),
    ([_item(narSize=100.0)], None, '"narSize" 100.0, not a size'),
    ([_item(narSize=True)], None, '"narSize" true, not a size'),
    ([_item(narSize="12")], None, '"narSize" "12", not a size'),
    ([_item(narSize=[1])], None, '"narSize" a list, not a size'),
    ([_item(narSize=2**63)], None, '"narSize" 9223372036854775808, not a size'),
    ([_item(narSize=10**30)], None, "not a size"),
    ([_item(narHash=42)], None, '"narHash" 42, not a hash'),
    ([_item(narHash="sha256 abc\n")], None, "not a hash"),
    ([_item(valid="no")], None, '"valid" "no", not true or false'),
    ([_item(storeDir="nix/store")], None, '"storeDir" "nix/store", not an absolute'),
    ([_item(storeDir=7)], None, '"storeDir" 7, not an absolute'),
    # invalid paths (make_closure words these)
    ([{"path": P1, "valid": False}], None, "is not a valid path"),
    ({P1: None}, None, "is not a valid path"),
    ({"version": 3, "storeDir": "/nix/store", "info": {P1[11:]: None}}, None, "not a valid path"),
    # formats 2 and 3
    ({"version": 4, "info": {}}, None, '"version" is 4; nixlayer reads path-info versions 2 and 3'),
    ({"version": 1, "info": {}}, None, '"version" is 1'),
    ({"info": {}}, "path-info-v2", '"version" is null'),
    ({"version": 2, "info": []}, None, '"info" is a list, not an object'),
    ({"version": 2, "storeDir": "", "info": {}}, None, 'the top level has "storeDir" ""'),
    # closure checks (make_closure's)
    ([], None, "holds no store paths"),
    ({}, None, "holds no store paths"),
    ([_item(references=[P2])], None, "not in the closure"),
    ([_item("/nix/store/x-y")], None, "not a valid Nix store path name"),
    # plain text
    (f"{P1}\n", None, "line 1: the record for"),
    (f"{P1}\n\n", None, "ends before its number of references"),
    (f"{P1}\n\nx\n", None, 'line 3: expected the number of references of "/nix/store/1111'),
    (f"{P1}\n\n-1\n", None, 'found "-1"'),
    (f"{P1}\n\n\u0662\n", None, "expected the number of references"),
    (f"{P1}\n\n{'9' * 30}\n", None, "expected the number of references"),
    (f"{P1}\n\n2\n{P1}\n", None, "has 2 references, but only 1 lines follow"),
    (f"{P1}\n\n1\n{P1}\n{P2}\n", None, "line 5: the record for"),
    (f"{P1}\n\n1\n{P2}\n", None, "not in the closure"),
    ('"just a string"', None, "the record for"),
    # forced shapes that do not fit
    (f"{P1}\n\n0\n", "path-info-list", "not valid JSON"),
    ({P1: {"references": []}}, "attrs", "no exportReferencesGraph list"),
]


@pytest.mark.parametrize(("content", "input_format", "expected"), BAD_INPUTS)
def test_bad_input(tmp_path: Path, content: Any, input_format: str | None, expected: str) -> None:
    path = _write(tmp_path, content)
    assert expected in _error(path, input_format=input_format)


def test_unreadable_files(tmp_path: Path) -> None:
    assert "cannot read: No such file or directory" in _error(tmp_path / "missing.json")
    assert "cannot read" in _error(tmp_path)


def test_good_edge_cases(tmp_path: Path) -> None:
    """The largest NAR size, nulls for optional fields, paths listed twice alike."""
    data = [
        _item(narSize=2**63 - 1, narHash=None, storeDir=None, ca=None, deriver=None),
        _item(narSize=2**63 - 1),
        {"path": P2, "references": [P1, P2], "valid": True, "signatures": [{"keyName": "k"}]},
    ]
    closure = read_closure(_write(tmp_path, data))
    assert closure.paths[P1].nar_size == 2**63 - 1
    assert closure.paths[P2].references == (P1, P2)
    text = f"{P2}\n\n2\n{P1}\n{P2}\n{P1}\n\n0"  # no final newline
    assert set(read_closure(_write(tmp_path, text, "graph")).paths) == {P1, P2}


def test_bad_options(tmp_path: Path) -> None:
    path = HELLO / "attrs.json"
    with pytest.raises(NixlayerError, match=r"^input_format json: unknown") as raised:
        read_closure(path, input_format="json")
    assert raised.value.message.startswith("json: unknown")
    with pytest.raises(NixlayerError, match=r"^attrs_key closure: applies only to the attrs"):
        read_closure(path, input_format="path-info-list", attrs_key="closure")


# --- no input crashes ---------------------------------------------------------------


def _read_or_refuse(path: Path, input_format: str | None, attrs_key: str | None) -> None:
    """Either a closure or a one-line NixlayerError naming the file; nothing else."""
    try:
        read_closure(path, input_format=input_format, attrs_key=attrs_key)
    except NixlayerError as error:
        assert "\n" not in str(error)
        assert str(error).startswith(f"{path}: ")


_FORMATS = st.sampled_from((None, *INPUT_FORMATS))
_ATTRS_KEYS = st.sampled_from((None, "closure", "k"))
_FIELDS = ["path", "references", "narSize", "narHash", "valid", "storeDir", "version", "info"]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from([P1, P2, P1[11:], "/nix/store", 2, 3, 2**63]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from([*_FIELDS, P1, P2, "closure"]) | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)
_FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _attrs_key_for(input_format: str | None, attrs_key: str | None) -> str | None:
    """An attrs key only where it is allowed (elsewhere it is a flag error, tested above)."""
    return attrs_key if input_format in (None, "attrs") else None


@_FUZZ
@given(data=st.binary(max_size=300), input_format=_FORMATS)
def test_arbitrary_bytes(tmp_path: Path, data: bytes, input_format: str | None) -> None:
    _read_or_refuse(_write(tmp_path, data), input_format, None)


@_FUZZ
@given(value=_JSON, input_format=_FORMATS, attrs_key=_ATTRS_KEYS)
def test_arbitrary_json(
    tmp_path: Path, value: Any, input_format: str | None, attrs_key: str | None
) -> None:
    path = _write(tmp_path, json.dumps(value))
    _read_or_refuse(path, input_format, _attrs_key_for(input_format, attrs_key))


@_FUZZ
@given(lines=st.lists(st.sampled_from([P1, P2, "", "0", "1", "2", "x", "\r"]), max_size=12))
def test_arbitrary_references_graph_text(tmp_path: Path, lines: list[str]) -> None:
    _read_or_refuse(_write(tmp_path, "\n".join(lines)), None, None)


# --- streaming: the same result wherever the file's chunks end ------------------------


def _outcome(path: Path, input_format: str | None = None) -> Any:
    """A closure's summary, or the message that refuses the file."""
    try:
        return _summary(read_closure(path, input_format=input_format))
    except NixlayerError as error:
        return str(error)


_STREAMED_FILES = [
    *((path, None) for path in sorted(FIXTURES.rglob("*.json"))),
    (HELLO / "references-graph.txt", None),
]


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_every_cut_between_chunks_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """The reader decodes the file a chunk at a time and hands each entry to json's
    scanner: a chunk that ends inside a number, a string, a key, an escape or a
    UTF-8 sequence must change nothing, neither a closure nor an error message."""
    import nixlayer.jsonstream

    cases = [(_write(tmp_path, content, f"bad-{n}.json"), form)
             for n, (content, form, _) in enumerate(BAD_INPUTS)]  # fmt: skip
    cases.append((_write(tmp_path, b'[{"x": "\xc3\xa9\xc3\xa9", \xff', "utf8.json"), None))
    cases.append((_write(tmp_path, b'[{"path": "/nix/store/x"}, 12', "tail.json"), None))
    whole = [_outcome(path, form) for path, form in [*_STREAMED_FILES, *cases]]
    monkeypatch.setattr(nixlayer.jsonstream, "_CHUNK", chunk)
    assert [_outcome(path, form) for path, form in [*_STREAMED_FILES, *cases]] == whole


@_FUZZ
@given(value=_JSON, indent=st.sampled_from([None, 0, 2]), chunk=st.integers(1, 9))
def test_arbitrary_json_in_small_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: Any, indent: int | None, chunk: int
) -> None:
    import nixlayer.jsonstream

    path = _write(tmp_path, json.dumps(value, indent=indent))
    whole = _outcome(path)
    with monkeypatch.context() as patched:
        patched.setattr(nixlayer.jsonstream, "_CHUNK", chunk)
        assert _outcome(path) == whole
