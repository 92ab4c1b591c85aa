"""Reading a store tree from disk: what each store path holds, from ``lstat`` alone.

A layer's tar bytes are laid out from this metadata before any file is read, so
that the layer's size is known up front and each byte of the store is read once.
Modes are the ones Nix canonicalises to, whatever the disk says. A name that
consumers would read as a whiteout (``.wh.*``) is refused as the tree is walked.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import NamedTuple

from nixlayer.blobs import WHITEOUT
from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError, kind_of, missing_folder, show_path

DIR_MODE = 0o555
FILE_MODE = 0o444
EXECUTABLE_MODE = 0o555
SYMLINK_MODE = 0o777
STORE_DIR_MODE = 0o755  # the store directory and its parents, as a multi-user Nix has them


class Kind(enum.Enum):
    DIRECTORY = "directory"
    FILE = "regular"
    SYMLINK = "symlink"


class Entry(NamedTuple):
    """One file, directory or symlink of a store path.

    ``name`` is the archive name without a leading slash (``nix/store/<base>/…``);
    ``disk_path`` is where it is read from. Store entries belong to root; only
    entries the user asks for get another ``owner``.

    A named tuple rather than a frozen dataclass: a store of a million files makes a
    million entries, and a tuple is made in a fifth of the time.
    """

    name: bytes
    kind: Kind
    mode: int
    size: int = 0
    target: bytes = b""
    disk_path: bytes = b""
    owner: tuple[int, int] = (0, 0)


def store_path_on_disk(store_root: bytes, store_path: str) -> bytes:
    """Where a logical store path (``/nix/store/…``) lives under ``--store-root``."""
    return os.path.join(store_root, os.fsencode(store_path).lstrip(b"/"))


_WHITEOUT = os.fsencode(WHITEOUT)
WHITEOUT_REASON = (
    "a name starting with '.wh.' cannot go into a layer: consumers read it as a "
    "whiteout, a deletion"
)


def _directory(name: bytes, disk_path: bytes) -> Entry:
    return Entry(name, Kind.DIRECTORY, DIR_MODE, disk_path=disk_path)


def _symlink(name: bytes, disk_path: bytes) -> Entry:
    return Entry(name, Kind.SYMLINK, SYMLINK_MODE, target=os.readlink(disk_path))


def _entry(name: bytes, disk_path: bytes, st: os.stat_result) -> Entry:
    if stat.S_ISDIR(st.st_mode):
        return _directory(name, disk_path)
    if stat.S_ISLNK(st.st_mode):
        return _symlink(name, disk_path)
    if stat.S_ISREG(st.st_mode):
        mode = EXECUTABLE_MODE if st.st_mode & stat.S_IXUSR else FILE_MODE  # as Nix decides
        return Entry(name, Kind.FILE, mode, st.st_size, disk_path=disk_path)
    raise NixlayerError(
        f"{show_path(disk_path)}: {kind_of(st.st_mode)}; an image can hold only files, "
        "folders and symlinks, not this special file"
    )


def store_dir_entries(store_dir: str) -> list[Entry]:
    """The store directory and its parents (``nix``, ``nix/store``), which every store
    layer carries so that it can be unpacked on its own."""
    parts = store_dir.strip("/").split("/")
    return [
        Entry(os.fsencode("/".join(parts[: depth + 1])), Kind.DIRECTORY, STORE_DIR_MODE)
        for depth in range(len(parts))
    ]


def store_layer_entries(
    store_root: bytes, store_dir: str, store_paths: Iterable[str]
) -> list[Entry]:
    """Everything a layer of these store paths holds, in no particular order."""
    entries = store_dir_entries(store_dir)
    for path in store_paths:
        entries.extend(walk_store_path(store_root, path))
    return entries


def _walk_folder(name: bytes, disk_path: bytes, pending: list[Entry]) -> Iterator[Entry]:
    """The entries of one folder, from what ``scandir`` says of each: a folder or a
    symlink needs no ``lstat`` (the file type comes with the name), a file does."""
    prefix = name + b"/" if name else b""
    with os.scandir(disk_path) as children:
        for child in children:
            if child.name.startswith(_WHITEOUT):  # see blobs.is_whiteout
                raise NixlayerError(f"{os.fsdecode(child.path)}: {WHITEOUT_REASON}")
            if child.is_dir(follow_symlinks=False):
                entry = _directory(prefix + child.name, child.path)
                pending.append(entry)
                yield entry
            elif child.is_symlink():
                yield _symlink(prefix + child.name, child.path)
            else:
                yield _entry(prefix + child.name, child.path, child.stat(follow_symlinks=False))


def walk_tree(disk_root: bytes, name_root: bytes) -> Iterator[Entry]:
    """Every entry of a tree on disk, its top first, from ``scandir`` and ``lstat`` only,
    named below ``name_root``. Symlinks are never followed; the top may be a file or a
    symlink."""
    try:
        top = _entry(name_root, disk_root, os.lstat(disk_root))
        yield top
        pending = [top] if top.kind is Kind.DIRECTORY else []
        while pending:
            folder = pending.pop()
            yield from _walk_folder(folder.name, folder.disk_path, pending)
    except OSError as e:
        where = show_path(e.filename or disk_root)
        if isinstance(e, FileNotFoundError):
            raise NixlayerError(f"{where}: does not exist on disk") from None
        raise NixlayerError(f"{where}: cannot read it: {e.strerror}") from None


def check_store_root(store_root: str | os.PathLike[str]) -> None:
    """The store root is a folder: else every store path would be "missing"."""
    if not os.path.isdir(store_root):
        raise NixlayerError(f"{show_path(store_root)}: {missing_folder(store_root)}", "store_root")


def walk_store_path(store_root: bytes, store_path: str) -> Iterator[Entry]:
    """Every entry of one store path, the path itself first (see ``walk_tree``)."""
    name = os.fsencode(store_path).lstrip(b"/")
    return walk_tree(store_path_on_disk(store_root, store_path), name)


def _nar_string(length: int) -> int:
    """Bytes a NAR string of this length takes: a 64-bit length, then the bytes padded to 8."""
    return 8 + (length + 7) // 8 * 8


_NODE_FRAME = _nar_string(1) * 2 + _nar_string(len("type"))  # "(" … ")" and "type"
_DIR_CHILD_FRAME = sum(_nar_string(len(s)) for s in ("entry", "(", "name", "node", ")"))


def nar_size(entries: Iterable[Entry]) -> int:
    """The exact size of the NAR serialisation of one store path's entries.

    Used where the closure input carries no ``narSize`` (plain exportReferencesGraph
    text); the NAR format is additive over entries, so no file needs to be read.
    """
    total = _nar_string(len("nix-archive-1"))
    for index, entry in enumerate(entries):
        total += _NODE_FRAME + _nar_string(len(entry.kind.value))
        if index:  # every entry but the store path itself sits in a directory
            total += _DIR_CHILD_FRAME + _nar_string(len(entry.name.rsplit(b"/", 1)[1]))
        if entry.kind is Kind.FILE:
            if entry.mode == EXECUTABLE_MODE:
                total += _nar_string(len("executable")) + _nar_string(0)
            total += _nar_string(len("contents")) + _nar_string(entry.size)
        elif entry.kind is Kind.SYMLINK:
            total += _nar_string(len("target")) + _nar_string(len(entry.target))
    return total


def with_disk_nar_sizes(closure: Closure, store_root: bytes) -> Closure:
    """The closure with every missing ``narSize`` computed from the tree on disk."""
    paths = {
        path: sp
        if sp.nar_size is not None
        else replace(sp, nar_size=nar_size(walk_store_path(store_root, path)))
        for path, sp in closure.paths.items()
    }
    return replace(closure, paths=paths)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the read (it reads empty).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class TreeFiles:
    """Opens the files of a layer for reading without following any symlink below the
    top of the tree they were walked in, even one swapped in for a directory after
    the walk: each file is opened relative to a descriptor of its directory, and each
    directory relative to its parent's, all with O_NOFOLLOW.

    ``walked`` holds the disk paths of the directories the walk listed (the layer's
    directory entries); the highest of a file's folders among them is the top of its
    walk, opened by path (the user named the way to it). The descriptors form a
    stack from there down to the current folder: members come sorted by name, so
    the next file's folder is mostly this one or close to it.
    """

    def __init__(self, walked: set[bytes]) -> None:
        self._walked = walked
        self._stack: list[tuple[bytes, int]] = []

    def open(self, disk_path: bytes) -> int:
        parent, _, name = disk_path.rpartition(b"/")
        if parent not in self._walked:  # the top of a walk, or a file nixlayer names
            return os.open(disk_path, FILE_FLAGS)
        stack = self._stack
        folder = stack[-1][1] if stack and stack[-1][0] == parent else self._enter(parent)
        return os.open(name, FILE_FLAGS, dir_fd=folder)

    def _enter(self, folder: bytes) -> int:
        """A descriptor of ``folder``, keeping those of its open ancestors."""
        stack = self._stack
        while stack and stack[-1][0] != folder and not folder.startswith(stack[-1][0] + b"/"):
            os.close(stack.pop()[1])
        if not stack:
            top = folder
            while (up := top.rpartition(b"/")[0]) in self._walked:
                top = up
            stack.append((top, os.open(top, _DIRECTORY_FLAGS)))
        below = folder[len(stack[-1][0]) + 1 :]
        for part in below.split(b"/") if below else ():
            path, fd = stack[-1]
            stack.append((path + b"/" + part, os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)))
        return stack[-1][1]

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])

    def __enter__(self) -> TreeFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
