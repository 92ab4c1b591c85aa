"""Read a closure in every shape Nix prints one.

Nix has printed closures in six shapes over the years (see ``INPUT_FORMATS``). Each
shape gets a small pure parser from decoded text to ``RawEntry`` values; all the JSON
path-info shapes share one per-entry converter, so a field means the same thing in every
Nix version. Checks on the store paths themselves (syntax, store directory, closedness,
duplicates, invalid paths) are left to ``make_closure``, so every shape gets the same
rules and messages. Every problem in the input is a one-line ``NixlayerError`` naming
the file, never another exception type.

JSON streams through ``jsonstream``, one entry at a time, and only the fields used
here are kept (``_compactor``), so that a closure of a million paths needs about the
memory of its file, not 3.4 times it as with ``json.loads``.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from nixlayer.closure import (
    DEFAULT_STORE_DIR,
    Closure,
    RawEntry,
    StorePath,
    all_store_paths,
    is_plan_json,
    make_closure,
)
from nixlayer.errors import NixlayerError, reason, show_path
from nixlayer.gcpause import no_cycle_collection
from nixlayer.jsonstream import TextWindow, load, show_json

INPUT_FORMATS = (
    "path-info-list",  # nix path-info --json, Nix <= 2.18 and Lix: [{"path": ...}, ...]
    "path-info-dict",  # Nix 2.19 and later (format 1): {"/nix/store/...": {...} | null}
    "path-info-v2",  # Nix >= 2.33 --json-format 2 or 3: {"version", "storeDir", "info"}
    "attrs",  # .attrs.json of a structured-attrs build with exportReferencesGraph
    "references-graph",  # plain exportReferencesGraph text
)

_STDIN = Path("-")
_MAX_NAR_SIZE = 2**63 - 1
# At most 18 digits, so that int() never meets Python's digit limit; a larger count
# could never be followed by that many lines anyway.
_COUNT = re.compile(r"[0-9]{1,18}")
# SRI, nix32 and hex hashes, with or without an algorithm prefix: ASCII only, so that a
# hash is safe to copy into image metadata later.
_NAR_HASH = re.compile(r"[A-Za-z0-9+/=:_-]+")

_JsonObject = dict[str, Any]
# The fields of an entry that the readers use, in any Nix version.
_ENTRY_FIELDS = frozenset(("path", "references", "narSize", "narHash", "valid", "storeDir"))
# Those that need no more than ``_quick_closure``'s checks.
_PLAIN_FIELDS = frozenset(("path", "references", "narSize", "narHash"))


@dataclass(frozen=True)
class _Parsed:
    """Entries as one shape printed them, before the store directory is settled.

    ``store_dirs`` holds every store directory the file declares, each with where it
    does; ``base_names`` is True when paths and references are base names (formats 2
    and 3), to be joined to the store directory once that is known.
    """

    entries: list[RawEntry]
    store_dirs: list[tuple[str, str]]
    base_names: bool = False


def read_closure(
    path: Path,
    input_format: str | None = None,
    attrs_key: str | None = None,
    store_dir: str | None = None,
    name: str | None = None,
) -> Closure:
    """Read the closure in ``path`` (``-`` for stdin) and check it.

    ``input_format`` forces one of ``INPUT_FORMATS`` (None: detect it); ``attrs_key``
    picks the exportReferencesGraph list in an ``.attrs.json`` (it implies ``attrs``);
    ``store_dir`` is the store directory the user asked for, None if they did not;
    ``name`` is what messages call the input (None: its path, or ``<stdin>``).
    """
    source = name or ("<stdin>" if path == _STDIN else show_path(path))
    shape = _check_options(input_format, attrs_key)
    with no_cycle_collection(), _open_input(path, source) as file:
        window = TextWindow(file, source)
        first = window.first_visible()
        if shape == "references-graph" or (shape is None and first not in ("[", "{")):
            parsed = _Parsed(_parse_references_graph(window.lines(), source), store_dirs=[])
        else:
            # The top level's members other than store paths are walked too: "info", and
            # the exportReferencesGraph lists of an .attrs.json, hold the entries.
            data = load(window, _compactor(), stream=lambda key: not key.startswith("/"))
            shape = shape or _detect_json_shape(data)
            closure = _quick_closure(data, shape, attrs_key, store_dir, source)
            if closure is not None:
                return closure
            parsed = _read_attrs(data, attrs_key, source) if shape == "attrs" else (
                _JSON_READERS[shape](data, source))  # fmt: skip
        directory = _settle_store_dir(parsed.store_dirs, store_dir, source)
        entries = parsed.entries
        if parsed.base_names:
            shared: dict[str, str] = {}
            entries = [_in_store(entry, directory, shared) for entry in entries]
        return make_closure(entries, directory, source)


def _check_options(input_format: str | None, attrs_key: str | None) -> str | None:
    """Refuse an unknown format, or an attrs key with a format that has no attributes."""
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise NixlayerError(
            f"{input_format}: unknown (expected one of: {', '.join(INPUT_FORMATS)})",
            "input_format",
        )
    if attrs_key is None:
        return input_format
    if input_format not in (None, "attrs"):
        raise NixlayerError(
            f"{attrs_key}: applies only to the attrs input format, not {input_format}",
            "attrs_key",
        )
    return "attrs"


@contextmanager
def _open_input(path: Path, source: str) -> Iterator[IO[bytes]]:
    if path == _STDIN:
        yield sys.stdin.buffer
        return
    try:
        file = path.open("rb")
    except OSError as error:
        raise NixlayerError(f"{source}: cannot read: {reason(error)}") from None
    with file:
        yield file


def _compactor() -> Callable[[_JsonObject], _JsonObject]:
    """An object of the input without the fields no reader here uses (``signatures``,
    ``deriver``, ``ca``, ...), and with its path and references shared with equal
    strings read before: a store path is named once as an entry and again by every
    path that refers to it, and one copy of it is enough."""
    shared: dict[Any, Any] = {}
    share = shared.setdefault

    def compact(fields: _JsonObject) -> _JsonObject:
        # Where it has other fields, its keys are these constants: json's scanner
        # makes new ones for every entry it is given alone.
        if fields.keys() <= _ENTRY_FIELDS:
            kept = fields
        else:
            kept = {key: fields[key] for key in _ENTRY_FIELDS if key in fields}
        path = kept.get("path")
        if type(path) is str:
            kept["path"] = share(path, path)
        references = kept.get("references")
        if type(references) is list:
            try:  # noqa: SIM105 (suppress() would cost a context manager an entry)
                kept["references"] = list(map(share, references, references))
            except TypeError:  # a list or object among them: refused later
                pass
        return kept

    return compact


def _quick_closure(
    data: Any, shape: str, attrs_key: str | None, store_dir: str | None, source: str
) -> Closure | None:
    """The closure in the usual case, checked as the readers and ``make_closure`` check
    it, but over all paths at once: each distinct path's syntax once (not once per
    reference), closedness as one set inclusion. None at anything out of the ordinary
    (an invalid path, two entries for one path) or in error: the readers entry by entry
    then find it, and word it, as ever.

    A closure of 50,000 paths and 300,000 references is read in a third of the time
    (see scripts/BENCHMARKS.md).
    """
    found = _quick_entries(data, shape, attrs_key, source)
    if found is None:
        return None
    pairs, declared, base_names = found
    paths: dict[str, StorePath] = {}  # by base name where ``base_names``
    referenced: set[str] = set()
    store_dirs: dict[str, str] = {}  # as entries declare them: normalised
    plain, valid_hash = _PLAIN_FIELDS, _NAR_HASH.fullmatch
    try:
        for key, info in pairs:
            if type(info) is not dict:
                return None
            path = info.get("path") if key is None else key
            references, size = info.get("references"), info.get("narSize")
            nar_hash = info.get("narHash")
            if type(path) is not str or type(references) is not list:
                return None
            if not info.keys() <= plain:
                if info.get("valid", True) is not True:
                    return None
                entry_dir = info.get("storeDir")
                if entry_dir is not None and entry_dir not in store_dirs:
                    if type(entry_dir) is not str or _store_dir_problem(entry_dir):
                        return None
                    store_dirs[entry_dir] = _normalise_store_dir(entry_dir)
            if size is not None and (type(size) is not int or not 0 <= size <= _MAX_NAR_SIZE):
                return None
            if nar_hash is not None and (type(nar_hash) is not str or not valid_hash(nar_hash)):
                return None
            unique = set(references)
            referenced |= unique
            store_path = StorePath(path, tuple(sorted(unique)), size, nar_hash)
            if paths.setdefault(path, store_path) is not store_path:
                return None
    except TypeError:  # a reference that is not a string
        return None
    if not paths or not referenced.issubset(paths):
        return None
    declared += [(entry_dir, "an entry") for entry_dir in set(store_dirs.values())]
    try:
        directory = _settle_store_dir(declared, store_dir, source)
    except NixlayerError:
        return None
    if base_names:  # the same order: the names share their store directory
        full = {name: f"{directory}/{name}" for name in paths}
        paths = {
            full[name]: StorePath(full[name], tuple(map(full.__getitem__, p.references)),
                                  p.nar_size, p.nar_hash)
            for name, p in paths.items()
        }  # fmt: skip
    if not all_store_paths(paths, directory):
        return None
    return Closure(store_dir=directory, paths=paths, source=source)


def _quick_entries(
    data: Any, shape: str, attrs_key: str | None, source: str
) -> tuple[Iterable[tuple[str | None, Any]], list[tuple[str, str]], bool] | None:
    """For ``_quick_closure``: (key, entry) pairs, the key None where the entry names
    its path itself; the store directories declared; whether paths are base names. None
    where the top level is out of the ordinary."""
    if shape == "path-info-list" and type(data) is list:
        return zip(itertools.repeat(None), data), [], False
    if shape == "path-info-dict" and type(data) is dict:
        return data.items(), [], False
    if shape == "attrs" and type(data) is dict:
        keys = _graph_keys(data) if attrs_key is None else [attrs_key]
        graph = data.get(keys[0]) if len(keys) == 1 else None
        if type(graph) is not list:
            return None
        return zip(itertools.repeat(None), graph), [], False
    if shape != "path-info-v2" or type(data) is not dict or data.get("version") not in (2, 3):
        return None
    info = data.get("info")
    try:
        declared = _store_dir_field(data, "the top level", source)
    except NixlayerError:
        return None
    if type(info) is not dict or type(data["version"]) is not int:
        return None
    return info.items(), [] if declared is None else [(declared, "the top level")], True


def _detect_json_shape(data: list[Any] | _JsonObject) -> str:
    """Tell the JSON shapes apart by their top level (see ``INPUT_FORMATS``).

    An integer ``version`` beside ``info`` marks formats 2 and 3; keys starting with
    ``/`` are store paths (attribute names of a derivation never are); an empty object
    is an empty path-info dict, so the user hears that the closure holds no paths.
    """
    if isinstance(data, list):
        return "path-info-list"
    if type(data.get("version")) is int and "info" in data:
        return "path-info-v2"
    if not data or any(key.startswith("/") for key in data):
        return "path-info-dict"
    return "attrs"


def _read_list(data: Any, source: str) -> _Parsed:
    """``[{"path": ..., "references": [...], ...}, ...]``; ``valid: false`` if invalid."""
    return _gather(_listed(_expect_list(data, "the top level", source), "entry", source), source)


def _read_dict(data: Any, source: str) -> _Parsed:
    """``{"/nix/store/...": {...} or null}``; entries may carry ``version`` and ``storeDir``."""
    top = _expect_object(data, "the top level", source)
    return _gather(((key, info, f"entry {_show(key)}") for key, info in top.items()), source)


def _read_v2(data: Any, source: str) -> _Parsed:
    """``{"version": 2 or 3, "storeDir": ..., "info": {BASENAME: {...} or null}}``."""
    top = _expect_object(data, "the top level", source)
    version = top.get("version")
    if type(version) is not int or version not in (2, 3):
        raise NixlayerError(
            f'{source}: "version" is {_show(version)}; nixlayer reads path-info versions 2 and 3'
        )
    info = _expect_object(top.get("info"), '"info"', source)
    declared = _store_dir_field(top, "the top level", source)
    return _gather(
        ((key, value, f'"info" entry {_show(key)}') for key, value in info.items()),
        source,
        declared=[] if declared is None else [(declared, "the top level")],
        base_names=True,
    )


_JSON_READERS = {
    "path-info-list": _read_list,
    "path-info-dict": _read_dict,
    "path-info-v2": _read_v2,
}


def _read_attrs(data: Any, attrs_key: str | None, source: str) -> _Parsed:
    """``{KEY: [{"path", "narHash", "narSize", "references", ...}], ...other attributes}``."""
    attrs = _expect_object(data, "the top level", source)
    key = _only_graph_key(attrs, source) if attrs_key is None else attrs_key
    if key not in attrs:
        raise NixlayerError(
            f"{source}: no attribute {_show(key)} (exportReferencesGraph lists here: "
            f"{_show_keys(_graph_keys(attrs))})"
        )
    graph = _expect_list(attrs[key], f"attribute {_show(key)}", source)
    return _gather(_listed(graph, f"attribute {_show(key)} entry", source), source)


def _graph_keys(attrs: _JsonObject) -> list[str]:
    """Attributes that look like an exportReferencesGraph list: a non-empty list of
    objects with ``path`` and ``references`` (no other structured attribute is)."""
    return [
        key
        for key, value in attrs.items()
        if isinstance(value, list)
        and value
        and all(
            isinstance(item, dict) and "path" in item and "references" in item for item in value
        )
    ]


def _only_graph_key(attrs: _JsonObject, source: str) -> str:
    keys = _graph_keys(attrs)
    if not keys and is_plan_json(attrs):
        raise NixlayerError(f"{source}: a nixlayer plan, not a closure")
    if not keys:
        raise NixlayerError(
            f"{source}: no exportReferencesGraph list (a list of objects with "
            '"path" and "references") in this JSON object'
        )
    if len(keys) > 1:
        raise NixlayerError(
            f"{source}: several exportReferencesGraph lists ({_show_keys(keys)}); "
            "say which one as the attrs key"
        )
    return keys[0]


def _listed(items: list[Any], label: str, source: str) -> Iterator[tuple[str, Any, str]]:
    """(path, info, where) for list entries, which name their path inside themselves."""
    for number, item in enumerate(items, 1):
        where = f"{label} {number}"
        fields = _expect_object(item, where, source)
        if "path" not in fields:
            raise NixlayerError(f'{source}: {where} has no "path"')
        path = fields["path"]
        if not isinstance(path, str):
            raise NixlayerError(f'{source}: {where} has "path" {_show(path)}, not a string')
        yield path, fields, where


def _gather(
    items: Iterable[tuple[str, Any, str]],
    source: str,
    declared: list[tuple[str, str]] | None = None,
    base_names: bool = False,
) -> _Parsed:
    """Convert (path, info, where) triples, collecting the store directories declared."""
    entries = []
    store_dirs = list(declared or [])
    for path, info, where in items:
        entry, store_dir = _convert_entry(path, info, where, source)
        entries.append(entry)
        if store_dir is not None:
            store_dirs.append((store_dir, where))
    return _Parsed(entries, store_dirs, base_names)


def _convert_entry(path: str, info: Any, where: str, source: str) -> tuple[RawEntry, str | None]:
    """One store object's info, in any ``nix path-info --json`` version or a references
    graph, as a ``RawEntry`` and the ``storeDir`` it declares (Nix >= 2.33), if any.

    ``null`` and ``valid: false`` mark a path Nix does not have. Fields nixlayer does
    not use (``ca``, ``deriver``, ``signatures``, ...) are ignored whatever their type,
    since their shape changed between Nix versions.
    """
    if info is None:
        return RawEntry(path=path, references=(), valid=False), None
    fields = _expect_object(info, where, source)
    store_dir = _store_dir_field(fields, where, source)
    valid = fields.get("valid", True)
    if not isinstance(valid, bool):
        raise NixlayerError(f'{source}: {where} has "valid" {_show(valid)}, not true or false')
    if not valid:
        return RawEntry(path=path, references=(), valid=False), store_dir
    entry = RawEntry(
        path=path,
        references=_references_field(fields, where, source),
        nar_size=_nar_size_field(fields, where, source),
        nar_hash=_nar_hash_field(fields, where, source),
    )
    return entry, store_dir


def _references_field(fields: _JsonObject, where: str, source: str) -> tuple[str, ...]:
    if "references" not in fields:
        raise NixlayerError(f'{source}: {where} has no "references"')
    references = fields["references"]
    if not isinstance(references, list) or not all(isinstance(ref, str) for ref in references):
        raise NixlayerError(f'{source}: {where} has "references" that are not a list of strings')
    return tuple(references)


def _nar_size_field(fields: _JsonObject, where: str, source: str) -> int | None:
    """The NAR size in bytes; ``bool`` is refused although Python calls it an ``int``."""
    size = fields.get("narSize")
    if size is None:
        return None
    if type(size) is not int or not 0 <= size <= _MAX_NAR_SIZE:
        raise NixlayerError(
            f'{source}: {where} has "narSize" {_show(size)}, not a size in bytes (0 to 2**63-1)'
        )
    return size


def _nar_hash_field(fields: _JsonObject, where: str, source: str) -> str | None:
    """The NAR hash as given (SRI, nix32 or hex): only its characters are checked."""
    nar_hash = fields.get("narHash")
    if nar_hash is None:
        return None
    if not isinstance(nar_hash, str) or not _NAR_HASH.fullmatch(nar_hash):
        raise NixlayerError(f'{source}: {where} has "narHash" {_show(nar_hash)}, not a hash')
    return nar_hash


def _store_dir_field(fields: _JsonObject, where: str, source: str) -> str | None:
    store_dir = fields.get("storeDir")
    if store_dir is None:
        return None
    problem = _store_dir_problem(store_dir) if isinstance(store_dir, str) else _NOT_ABSOLUTE
    if problem:
        raise NixlayerError(f'{source}: {where} has "storeDir" {_show(store_dir)}, {problem}')
    return _normalise_store_dir(store_dir)


def _settle_store_dir(declared: list[tuple[str, str]], requested: str | None, source: str) -> str:
    """The file's store directory if it declares one (all declarations must agree, and
    agree with the user's), else the user's, else ``/nix/store``."""
    problem = None if requested is None else _store_dir_problem(requested)
    if problem:
        raise NixlayerError(f"{requested}: {problem}", "store_dir")
    if not declared:
        return DEFAULT_STORE_DIR if requested is None else _normalise_store_dir(requested)
    file_dir, file_where = declared[0]
    for store_dir, where in declared[1:]:
        if store_dir != file_dir:
            raise NixlayerError(
                f"{source}: {where} has store directory {store_dir}, "
                f"but {file_where} has {file_dir}"
            )
    if requested is not None and _normalise_store_dir(requested) != file_dir:
        raise NixlayerError(
            f"{source}: the file is for store directory {file_dir}, "
            f"but store directory {requested} was asked for"
        )
    return file_dir


_NOT_ABSOLUTE = "not an absolute directory (it must start with /)"


def _store_dir_problem(store_dir: str) -> str | None:
    """What makes ``store_dir`` unfit, in words; None if it is fit: absolute, below
    ``/``, with no ``.``, ``..`` or empty part and no NUL. Every name in a layer starts
    with the store directory, so it must not climb out; nor may a part be a whiteout
    name (see ``blobs.is_whiteout``), which consumers would take for a deletion."""
    parts = store_dir.rstrip("/").split("/")[1:]
    if not store_dir.startswith("/"):
        return _NOT_ABSOLUTE
    if "\0" in store_dir:
        return "holds a NUL character"
    if not parts:
        return "the root /; the store needs a folder of its own, like /nix/store"
    if "" in parts:
        return "has an empty part (//)"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' part; it must name its folder without climbing"
    from nixlayer.blobs import is_whiteout  # the layers' rule, at the one place it applies

    if any(map(is_whiteout, parts)):
        return "has a part starting '.wh.', which consumers take for a deletion"
    return None


def _normalise_store_dir(store_dir: str) -> str:
    """``/nix/store/`` and ``/nix/store`` are the same directory."""
    return store_dir.rstrip("/") or "/"


def _in_store(entry: RawEntry, store_dir: str, shared: dict[str, str]) -> RawEntry:
    """Formats 2 and 3 print base names; ``make_closure`` wants full paths, each
    made once (``shared``), as ``_compactor`` shares the paths of other formats."""

    def full(name: str) -> str:
        path = f"{store_dir}/{name}"
        return shared.setdefault(path, path)

    return replace(
        entry, path=full(entry.path), references=tuple(full(ref) for ref in entry.references)
    )


def _parse_references_graph(lines: Iterable[str], source: str) -> list[RawEntry]:
    """Plain ``exportReferencesGraph`` text: per path, a path line, a deriver line
    (empty unless Nix shows derivers), the number of references, then one line each.
    Read a line at a time; each store path is kept once, however often it is named."""
    numbered = enumerate(_without_trailing_blank_lines(lines), 1)
    share = {}.setdefault
    entries = []
    for number, path in numbered:
        header = list(itertools.islice(numbered, 2))  # the deriver, the count
        if len(header) < 2:
            raise NixlayerError(
                f"{source}: line {number}: the record for {_show(path)} ends "
                "before its number of references"
            )
        count_line, count = header[1]
        if not _COUNT.fullmatch(count):
            raise NixlayerError(
                f"{source}: line {count_line}: expected the number of references of "
                f"{_show(path)}, found {_show(count)}"
            )
        references = [share(ref, ref) for _, ref in itertools.islice(numbered, int(count))]
        if len(references) < int(count):
            raise NixlayerError(
                f"{source}: line {count_line}: {_show(path)} has {count} references, "
                f"but only {len(references)} lines follow"
            )
        entries.append(RawEntry(path=share(path, path), references=tuple(references)))
    return entries


def _without_trailing_blank_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines, less the empty ones at the end (a file may end in several newlines);
    empty lines before a line with text are kept, and read as what they are."""
    held = 0
    for line in lines:
        if line:
            yield from itertools.repeat("", held)
            held = 0
            yield line
        else:
            held += 1


def _expect_object(value: Any, what: str, source: str) -> _JsonObject:
    if not isinstance(value, dict):
        raise NixlayerError(f"{source}: {what} is {_json_type(value)}, not an object")
    return value


def _expect_list(value: Any, what: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        raise NixlayerError(f"{source}: {what} is {_json_type(value)}, not a list")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _show(value: Any) -> str:
    """A value from the input as JSON on one short line, safe in an error message;
    a list or object is named by its type only (it may be large or deeply nested)."""
    if isinstance(value, (list, dict)):
        return _json_type(value)
    return show_json(value)


def _show_keys(keys: list[str]) -> str:
    return ", ".join(_show(key) for key in keys) or "none"
