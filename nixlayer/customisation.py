"""The customisation layer: the image root outside the store.

It holds links into the store for ``--contents`` (as nixpkgs' symlinkJoin lays them
out: real directories, a symlink per file), files copied from the host, and the
directories and symlinks the user asks for. Its entries follow the same rules as
store layers (owner 0 unless given, fixed mtime, sorted), with the modes of a root
file system rather than of the read-only store. No name in it may be a whiteout, nor
may anything but a folder stand where a parent of the store directory is.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from nixlayer.blobs import MAX_ID, is_whiteout
from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError, carried_by, show_path
from nixlayer.store import (
    EXECUTABLE_MODE,
    SYMLINK_MODE,
    WHITEOUT_REASON,
    Entry,
    Kind,
    walk_store_path,
    walk_tree,
)

ROOT_DIR_MODE = 0o755
ROOT_FILE_MODE = 0o644
ROOT_EXECUTABLE_MODE = 0o755


@dataclass(frozen=True)
class AddFiles:
    """``--add SRC:DEST[:MODE]``: a host file or folder copied to DEST."""

    source: Path
    dest: str
    mode: int | None = None


@dataclass(frozen=True)
class MakeDirectory:
    """``--mkdir DEST[:MODE[:UID:GID]]``."""

    dest: str
    mode: int = ROOT_DIR_MODE
    owner: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class MakeSymlink:
    """``--symlink DEST:TARGET``."""

    dest: str
    target: str


@dataclass(frozen=True)
class Customisation:
    """Everything the user asked to put in the image root."""

    contents: tuple[str, ...] = ()
    link_paths: tuple[str, ...] = ("/",)
    adds: tuple[AddFiles, ...] = ()
    directories: tuple[MakeDirectory, ...] = ()
    symlinks: tuple[MakeSymlink, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.contents or self.adds or self.directories or self.symlinks)


# DOTALL: a newline is as good a character of a file name as any.
_ADD = re.compile(r"(?P<source>.+):(?P<dest>/[^:]*)(?::(?P<mode>[0-7]{3,4}))?", re.DOTALL)
_MKDIR = re.compile(
    r"(?P<dest>/[^:]*)(?::(?P<mode>[0-7]{3,4})(?::(?P<uid>[0-9]+):(?P<gid>[0-9]+))?)?"
)
_SYMLINK = re.compile(r"(?P<dest>/[^:]*):(?P<target>.+)", re.DOTALL)


def _match(pattern: re.Pattern[str], value: str, form: str) -> re.Match[str]:
    if "\0" in value:  # from a settings file: argv cannot hold one
        shown = value.replace("\0", "\\0")
        raise NixlayerError(f"{shown}: holds a NUL byte, which no path or link can")
    match = pattern.fullmatch(value)
    if match is None:
        raise NixlayerError(f"{value}: expected {form}")
    return match


def parse_add(value: str) -> AddFiles:
    match = _match(_ADD, value, "SRC:DEST[:MODE] with an absolute DEST")
    mode = match["mode"]
    return AddFiles(Path(match["source"]), match["dest"], int(mode, 8) if mode else None)


def parse_mkdir(value: str) -> MakeDirectory:
    match = _match(_MKDIR, value, "DEST[:MODE[:UID:GID]] with an absolute DEST")
    ids = (match["uid"], match["gid"]) if match["uid"] else ("0", "0")
    # (compared as text first: int() refuses over 4300 digits)
    if any(len(i.lstrip("0")) > len(str(MAX_ID)) or int(i) > MAX_ID for i in ids):
        raise NixlayerError(
            f"{value}: a uid or gid must be at most {MAX_ID} (Linux ids are 32-bit)"
        )
    mode = int(match["mode"], 8) if match["mode"] else ROOT_DIR_MODE
    return MakeDirectory(match["dest"], mode, (int(ids[0]), int(ids[1])))


def parse_symlink(value: str) -> MakeSymlink:
    match = _match(_SYMLINK, value, "DEST:TARGET with an absolute DEST")
    return MakeSymlink(match["dest"], match["target"])


def parse_link_paths(value: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in value.split(",") if p.strip())
    if not paths:  # not "all of them": that is --link-paths not given, or /
        raise NixlayerError(f"{value}: names no path (like /bin,/etc)")
    for path in paths:
        _image_name(path, allow_root=True)
    return paths


def _image_name(dest: str, allow_root: bool = False) -> bytes:
    """An absolute image path as a tar name (no leading slash), refusing ``..``."""
    parts = [part for part in dest.split("/") if part not in ("", ".")]
    if not dest.startswith("/") or ".." in parts or "\0" in dest:
        raise NixlayerError(f"{dest}: must be an absolute path without '..'")
    if any(is_whiteout(part) for part in parts):
        raise NixlayerError(f"{dest}: {WHITEOUT_REASON}")
    if not parts and not allow_root:
        raise NixlayerError(f"{dest}: cannot replace the image root itself")
    return os.fsencode("/".join(parts))


class _Origin(NamedTuple):
    """What asked for an entry: the option (``directories``) and its value, and the
    kind of entry as the layer's history names it (``mkdir``), for clashes."""

    option: str
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"

    def problem(self, message: str) -> NixlayerError:
        """An error about this value, for its option to be named by the front end."""
        return NixlayerError(f"{self.value}: {message}", self.option)


class _Root:
    """The image root being assembled: one entry per name, clashes refused.

    Directories merge; an explicit directory (a mkdir, an added folder)
    takes precedence over one implied as a parent; anything else at a taken name
    is a clash that names both origins. Nothing may go inside the store directory,
    and only a directory may stand where one of its parents is: the layer lies above
    the store layers, and a file or symlink there would hide the whole store.
    """

    def __init__(self, store_dir: str) -> None:
        self.store_name = os.fsencode(store_dir.strip("/"))
        self.entries: dict[bytes, tuple[Entry, _Origin, bool]] = {}

    def put(self, entry: Entry, origin: _Origin, explicit: bool = True) -> None:
        name = entry.name
        if name == self.store_name or name.startswith(self.store_name + b"/"):
            raise origin.problem(f"{_show(name)} is inside the store directory")
        if self.store_name.startswith(name + b"/") and entry.kind is not Kind.DIRECTORY:
            raise origin.problem(
                f"{_show(name)} is a parent of the store directory "
                f"{_show(self.store_name)}; {_a(entry.kind)} there would hide the store"
            )
        self._put_parents(name, origin)
        known = self.entries.get(name)
        if known is None or self._replaces(known, entry, explicit):
            self.entries[name] = (entry, origin, explicit)
        elif not self._merges(known, entry, explicit):
            raise NixlayerError(f"{_show(name)} is given twice: by {known[1]} and by {origin}")

    def _put_parents(self, name: bytes, origin: _Origin) -> None:
        parent = posixpath.dirname(name)
        if not parent:
            return
        known = self.entries.get(parent)
        if known is None:
            self.put(Entry(parent, Kind.DIRECTORY, ROOT_DIR_MODE), origin, explicit=False)
        elif known[0].kind is not Kind.DIRECTORY:
            raise NixlayerError(
                f"{_show(name)} needs {_show(parent)} to be a directory, but {known[1]} "
                f"makes it a {known[0].kind.value} file"
            )

    @staticmethod
    def _replaces(known: tuple[Entry, _Origin, bool], entry: Entry, explicit: bool) -> bool:
        return known[0].kind is entry.kind is Kind.DIRECTORY and explicit and not known[2]

    @staticmethod
    def _merges(known: tuple[Entry, _Origin, bool], entry: Entry, explicit: bool) -> bool:
        same = known[0] == entry
        both_dirs = known[0].kind is entry.kind is Kind.DIRECTORY
        return same or (both_dirs and not explicit)


def _a(kind: Kind) -> str:
    return "a symlink" if kind is Kind.SYMLINK else "a file"


def _show(name: bytes) -> str:
    return show_path(b"/" + name)


def _root_mode(entry: Entry) -> int:
    """Store modes (read-only) made into those of a root file system (owner-writable)."""
    if entry.kind is Kind.DIRECTORY:
        return ROOT_DIR_MODE
    if entry.kind is Kind.SYMLINK:
        return SYMLINK_MODE
    return ROOT_EXECUTABLE_MODE if entry.mode == EXECUTABLE_MODE else ROOT_FILE_MODE


def _under_link_paths(relative: bytes, link_names: Sequence[bytes]) -> bool:
    """Inside a linked subtree, or a directory on the way to one."""
    return any(
        not link
        or relative == link
        or relative.startswith(link + b"/")
        or link.startswith(relative + b"/")
        for link in link_names
    )


def _link_contents(root: _Root, store_root: bytes, store_path: str, links: list[bytes]) -> None:
    """symlinkJoin's layout: a real directory per directory, a symlink per file."""
    prefix = os.fsencode(store_path.lstrip("/"))
    origin = _Origin("contents", "contents", store_path)
    entries = walk_store_path(store_root, store_path)
    top = next(entries)
    if top.kind is not Kind.DIRECTORY:
        raise origin.problem("is a single file, not a directory to link from")
    for entry in entries:
        relative = entry.name[len(prefix) + 1 :]
        if not _under_link_paths(relative, links):
            continue
        if entry.kind is Kind.DIRECTORY:
            root.put(Entry(relative, Kind.DIRECTORY, ROOT_DIR_MODE), origin, explicit=False)
        else:
            target = os.fsencode(store_path) + b"/" + relative
            root.put(Entry(relative, Kind.SYMLINK, SYMLINK_MODE, target=target), origin)


def _add_files(root: _Root, add: AddFiles) -> None:
    """Copy a host file or folder; symlinks in it stay links and are never followed."""
    origin = _Origin("adds", "add", f"{show_path(add.source)}:{add.dest}")
    with carried_by("adds"):
        dest = _image_name(add.dest, allow_root=True)
    try:
        tree = list(walk_tree(os.fsencode(add.source), dest))
    except NixlayerError as error:
        raise origin.problem(str(error)) from None
    for index, entry in enumerate(tree):
        if not entry.name and entry.kind is not Kind.DIRECTORY:
            raise origin.problem("only a folder can be added at the image root")
        if not entry.name:
            continue  # the image root itself, when DEST is /
        mode = add.mode if index == 0 and add.mode is not None else _root_mode(entry)
        explicit = index == 0 or entry.kind is not Kind.DIRECTORY
        root.put(entry._replace(mode=mode), origin, explicit)


def customisation_entries(
    customisation: Customisation, closure: Closure, store_root: bytes
) -> list[Entry]:
    """The entries of the customisation layer; empty when nothing was asked for."""
    root = _Root(closure.store_dir)
    with carried_by("link_paths"):
        links = [_image_name(p, allow_root=True) for p in customisation.link_paths]
    for store_path in customisation.contents:
        if store_path not in closure.paths:
            raise NixlayerError(
                f"{store_path}: not a path of the closure {closure.source}", "contents"
            )
        _link_contents(root, store_root, store_path, links)
    for add in customisation.adds:
        _add_files(root, add)
    for directory in customisation.directories:
        with carried_by("directories"):
            name = _image_name(directory.dest)
        entry = Entry(name, Kind.DIRECTORY, directory.mode, owner=directory.owner)
        root.put(entry, _Origin("directories", "mkdir", directory.dest))
    for symlink in customisation.symlinks:
        with carried_by("symlinks"):
            name = _image_name(symlink.dest)
        entry = Entry(name, Kind.SYMLINK, SYMLINK_MODE, target=os.fsencode(symlink.target))
        root.put(entry, _Origin("symlinks", "symlink", symlink.dest))
    return [entry for entry, _, _ in root.entries.values()]


def describe(customisation: Customisation) -> str:
    """The history comment of the customisation layer."""
    parts: Iterable[str] = (
        *(f"contents {p}" for p in customisation.contents),
        *(f"add {a.dest}" for a in customisation.adds),
        *(f"mkdir {d.dest}" for d in customisation.directories),
        *(f"symlink {s.dest}" for s in customisation.symlinks),
    )
    return "customisation: " + ", ".join(parts)
