"""The closure: store paths and their references, checked to be a closed, valid set.

Every reader produces ``RawEntry`` values in whatever shape Nix printed them;
``make_closure`` is the single place where they are checked and merged, so that every
input shape gets the same rules and the same error messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nixlayer.errors import NixlayerError
from nixlayer.jsonstream import show_json

DEFAULT_STORE_DIR = "/nix/store"

# A store path's base name: 32 characters of Nix's base-32 alphabet (no e, o, u, t),
# a dash, and a name of at most 211 characters from Nix's name alphabet, not
# starting with a dot.
_BASENAME = re.compile(
    r"[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]{0,210}"
)


@dataclass(frozen=True)
class StorePath:
    """One valid store object: its full path, references (full paths) and NAR size.

    ``nar_size`` is None when the input shape does not carry it (plain
    ``exportReferencesGraph`` text); ``references`` are sorted and may include the
    path itself, as Nix prints them.
    """

    path: str
    references: tuple[str, ...]
    nar_size: int | None = None
    nar_hash: str | None = None

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def name(self) -> str:
        """The part after the hash (``name-version``)."""
        return self.basename[33:]


@dataclass(frozen=True)
class Closure:
    """A closed set of store paths: every reference is itself in the set."""

    store_dir: str
    paths: dict[str, StorePath]
    source: str

    @property
    def has_nar_sizes(self) -> bool:
        return all(p.nar_size is not None for p in self.paths.values())


@dataclass(frozen=True)
class RawEntry:
    """A store path as a reader found it, before any checks.

    ``path`` and ``references`` are full store paths; ``valid`` is False for the
    ``null`` or ``valid: false`` entries Nix prints for paths it does not have.
    """

    path: str
    references: tuple[str, ...]
    nar_size: int | None = None
    nar_hash: str | None = None
    valid: bool = True


def is_plan_json(data: Any) -> bool:
    """Whether JSON data is a nixlayer plan (of any version; see ``plan.Plan``), which
    a user may give where a closure is expected, or the other way round."""
    return isinstance(data, dict) and "layers" in data and "version" in data


def check_store_path(path: str, store_dir: str, source: str) -> None:
    """Refuse a path that is not ``STORE_DIR/<hash>-<name>``: no other directory,
    no nested path, no ``..``, no NUL, a hash of exactly 32 base-32 characters."""
    directory, _, basename = path.rpartition("/")
    if directory != store_dir:
        raise NixlayerError(
            f"{source}: {show_json(path)} is not in the store directory {store_dir}"
        )
    if not _BASENAME.fullmatch(basename):
        raise NixlayerError(f"{source}: {show_json(path)} is not a valid Nix store path name")


def all_store_paths(paths: Iterable[str], store_dir: str) -> bool:
    """Whether ``check_store_path`` passes every one of ``paths``: the same rule, for
    many paths at once."""
    prefix = store_dir + "/"
    start = len(prefix)
    valid = _BASENAME.fullmatch
    return all(path.startswith(prefix) and valid(path, start) for path in paths)


def make_closure(entries: Iterable[RawEntry], store_dir: str, source: str) -> Closure:
    """Check and merge raw entries into a ``Closure``.

    Duplicate entries for one path are accepted when they agree; a disagreement, an
    invalid entry, a malformed path or a reference outside the set is an error.
    """
    paths: dict[str, StorePath] = {}
    for entry in entries:
        check_store_path(entry.path, store_dir, source)
        if not entry.valid:
            raise NixlayerError(f"{source}: {entry.path} is not a valid path in the Nix store")
        for ref in entry.references:
            check_store_path(ref, store_dir, source)
        store_path = StorePath(
            path=entry.path,
            references=tuple(sorted(set(entry.references))),
            nar_size=entry.nar_size,
            nar_hash=entry.nar_hash,
        )
        known = paths.setdefault(entry.path, store_path)
        if known != store_path:
            raise NixlayerError(f"{source}: two entries for {entry.path} disagree")
    for store_path in paths.values():
        for ref in store_path.references:
            if ref not in paths:
                raise NixlayerError(
                    f"{source}: {store_path.path} references {ref}, which is not in the closure"
                )
    if not paths:
        raise NixlayerError(f"{source}: the closure holds no store paths")
    return Closure(store_dir=store_dir, paths=paths, source=source)
