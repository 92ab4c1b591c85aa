"""The closure reader's quick ways give what the careful ones give, or leave it to them.

``jsonstream`` decodes whole windows of members at once (``_Loader.batch``), and
``readers._quick_closure`` checks all entries at once: each must give exactly the
values, and the errors, of the member-by-member walk and the entry-by-entry readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixlayer import jsonstream, readers
from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError
from nixlayer.readers import INPUT_FORMATS, read_closure

STORE = "/nix/store"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
_VALID = [f"{STORE}/{c * 32}-p{i}" for i, c in enumerate(NIX32[:6])]
_INVALID = [f"{STORE}/short-p", "/elsewhere/" + "a" * 32 + "-p", f"{STORE}/{'a' * 32}-.dot"]
_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "value", call()
    except NixlayerError as error:
        return "error", str(error)


# --- jsonstream: batches of members --------------------------------------------------

_SCALARS = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False)
    | st.text(alphabet="ab}{][,:\"\\ \n\u00e9", max_size=6)
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["path", "references", "a", "}", "b"]), inner, max_size=4)
    ),
    max_leaves=12,
)
_DOCUMENTS = st.lists(_VALUES, max_size=8) | st.dictionaries(
    st.sampled_from([*_VALID, "info", "closure", "x"]), _VALUES, max_size=8
)


def _mangled(draw: st.DrawFn, text: str) -> str:
    """The text, or the text with a piece cut out or a character put in."""
    if not text or draw(st.booleans()):
        return text
    at = draw(st.integers(0, len(text) - 1))
    if draw(st.booleans()):
        return text[:at] + text[at + draw(st.integers(1, 3)) :]
    return text[:at] + draw(st.sampled_from(list('{}[],:"x1 '))) + text[at:]


def _load(path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, batch: int) -> tuple[str, Any]:
    def load() -> Any:
        with path.open("rb") as file:
            window = jsonstream.TextWindow(file, "doc.json")
            return jsonstream.load(window, lambda fields: fields, lambda key: key == "info")

    with monkeypatch.context() as patch:
        patch.setattr(jsonstream, "_CHUNK", chunk)
        patch.setattr(jsonstream, "_BATCH", batch)
        return _outcome(load)


@_SETTINGS
@given(data=st.data(), document=_DOCUMENTS, chunk=st.sampled_from([1, 5, 16, 64, 1 << 20]))
def test_batches_decode_what_members_one_by_one_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: st.DataObject, document: Any, chunk: int
) -> None:
    """Batches tried wherever they can be (``_BATCH`` 1), windows of a few characters:
    the same values, duplicate keys and errors, down to line and column."""
    text = json.dumps(document, indent=data.draw(st.sampled_from([None, 1])))
    duplicate = text.replace('"x":', '"x": 1, "x":', 1)
    text = data.draw(st.sampled_from([text, duplicate]))
    path = tmp_path / "doc.json"
    path.write_text(_mangled(data.draw, text), encoding="utf-8")
    careful = _load(path, monkeypatch, chunk, batch=1 << 30)
    assert _load(path, monkeypatch, chunk, batch=1) == careful


def test_a_batch_is_decoded_where_the_window_holds_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [{"path": path, "references": [path]} for path in _VALID * 3000]
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"x": 1, "info": entries}), encoding="utf-8")
    batches = []
    batch = jsonstream._Loader.batch

    def counted(self: Any, opening: str, closing: str) -> Any:
        result = batch(self, opening, closing)
        batches.append(result is not None)
        return result

    monkeypatch.setattr(jsonstream._Loader, "batch", counted)
    assert _load(path, monkeypatch, 1 << 18, jsonstream._BATCH) == (
        "value",
        {"x": 1, "info": entries},
    )
    assert sum(batches) >= 3


# --- readers: all entries at once --------------------------------------------------

_PATHS = st.sampled_from(_VALID) | st.sampled_from(_INVALID)
_ODD = st.sampled_from([None, -1, 2**63, 1.5, "12", True, [], {}, "sha256-x!"])


@st.composite
def _entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Entries over a small pool of paths, most of them right, some with a field of
    the wrong type, an invalid flag, a store directory, fields nixlayer ignores."""
    pool = draw(st.lists(st.sampled_from(_VALID), min_size=1, max_size=5, unique=True))
    entries = []
    rarely = st.integers(0, 4).map(lambda n: n == 0)
    extra_paths = draw(st.lists(_PATHS, max_size=2)) if draw(rarely) else []
    references = st.sampled_from(pool) | st.sampled_from(pool) | st.sampled_from(pool) | _PATHS
    for path in pool + extra_paths:
        entry: dict[str, Any] = {
            "path": path,
            "references": draw(st.lists(references, max_size=4)),
            "narSize": draw(st.integers(0, 10**6)),
            "narHash": "sha256-" + "A" * 43 + "=",
        }
        fields = ["narSize", "narHash", "references", "path"]
        for field in draw(st.sets(st.sampled_from(fields), max_size=1)) if draw(rarely) else ():
            if draw(st.integers(0, 3)) == 0:
                entry[field] = draw(_ODD)
            else:
                del entry[field]
        others = ["valid", "storeDir", "deriver", "signatures"]
        extra = draw(st.sets(st.sampled_from(others), max_size=2))
        for field in extra:
            entry[field] = draw(
                {
                    "valid": st.sampled_from([True, True, True, False, None, "yes"]),
                    "storeDir": st.sampled_from([STORE, STORE, STORE + "/", "/other", "rel", 1]),
                    "deriver": st.just(STORE + "/x.drv"),
                    "signatures": st.just(["cache:abc}"]),
                }[field]
            )
        entries.append(entry)
    return entries


def _serialise(entries: list[dict[str, Any]], shape: str, top_dir: Any) -> str:
    if shape == "path-info-list":
        return json.dumps(entries)
    keyed = {str(e.get("path")): {k: v for k, v in e.items() if k != "path"} for e in entries}
    if shape == "path-info-dict":
        return json.dumps({p: None if e.get("valid") is False else e for p, e in keyed.items()})
    if shape == "path-info-v2":
        info = {}
        for path, entry in keyed.items():
            refs = entry.get("references")
            if isinstance(refs, list):
                entry["references"] = [
                    r.removeprefix(STORE + "/") for r in refs if isinstance(r, str)
                ]
            info[path.removeprefix(STORE + "/")] = entry
        return json.dumps({"version": 2, "storeDir": top_dir, "info": info})
    return json.dumps({"closure": entries, "name": "x"})


@_SETTINGS
@given(
    entries=_entries(),
    shape=st.sampled_from([s for s in INPUT_FORMATS if s != "references-graph"]),
    forced=st.booleans(),
    top_dir=st.sampled_from([STORE, "/other"]),
    requested=st.sampled_from([None, STORE, STORE + "/", "/other"]),
)
def test_the_quick_closure_is_the_careful_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entries: list[dict[str, Any]],
    shape: str,
    forced: bool,
    top_dir: str,
    requested: str | None,
) -> None:
    path = tmp_path / "closure.json"
    path.write_text(_serialise(entries, shape, top_dir), encoding="utf-8")

    def read() -> tuple[Closure, list[str]]:
        closure = read_closure(path, shape if forced else None, store_dir=requested)
        return closure, list(closure.paths)

    quick = _outcome(read)
    with monkeypatch.context() as patch:  # undone before hypothesis's next example
        patch.setattr(readers, "_quick_closure", lambda *args: None)
        assert quick == _outcome(read)


@pytest.mark.parametrize(
    "name",
    [
        "attrs.json",
        "path-info-dict.json",
        "path-info-list.json",
        "path-info-v1.json",
        "path-info-v2.json",
        "path-info-v3.json",
    ],
)
def test_the_quick_closure_reads_what_nix_prints(name: str) -> None:
    """Every JSON shape of the hello fixture goes the quick way."""
    with (Path(__file__).parent.parent / "fixtures/closures/hello-2.12.1" / name).open(
        "rb"
    ) as file:
        window = jsonstream.TextWindow(file, name)
        data = jsonstream.load(window, readers._compactor(), lambda key: not key.startswith("/"))
    shape = readers._detect_json_shape(data)
    assert readers._quick_closure(data, shape, None, None, name) is not None
