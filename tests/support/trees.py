"""What an unpacked image must hold: the store paths as Nix leaves them on disk
(expected) against the rootfs a consumer unpacked (actual), entry by entry."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

STORE_DIR = "/nix/store"
MAX_REPORTED = 30  # differences listed in one failure message


def canonical_mode(st: os.stat_result) -> int:
    """The permission bits Nix gives a store entry, whatever the disk says: it keeps
    only "directory", "symlink" and a regular file's owner-executable bit."""
    if stat.S_ISDIR(st.st_mode):
        return 0o555
    if stat.S_ISLNK(st.st_mode):
        return 0o777
    return 0o555 if st.st_mode & stat.S_IXUSR else 0o444


@dataclass(frozen=True)
class Node:
    """What a consumer can observe about one entry of an unpacked tree."""

    kind: str
    mode: int
    payload: str  # a symlink's target or a file's sha256
    owner: tuple[int, int] | None


def _kind(st: os.stat_result) -> str:
    for kind, test in (("dir", stat.S_ISDIR), ("symlink", stat.S_ISLNK), ("file", stat.S_ISREG)):
        if test(st.st_mode):
            return kind
    return f"special {stat.filemode(st.st_mode)}"


def _node(path: bytes, mode: int, owner: tuple[int, int] | None) -> Node:
    st = os.lstat(path)
    kind = _kind(st)
    payload = ""
    if kind == "symlink":
        payload = os.fsdecode(os.readlink(path))
    elif kind == "file":
        with open(path, "rb") as f:
            payload = hashlib.sha256(f.read()).hexdigest()
    return Node(kind, mode, payload, owner)


def _walk(top: bytes) -> Iterable[tuple[bytes, os.stat_result]]:
    """``top`` and everything under it, symlinks not followed."""
    st = os.lstat(top)
    yield top, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(top)):
            yield from _walk(os.path.join(top, name))


def _walk_store_paths(
    store_root: Path, store_paths: Iterable[str]
) -> Iterable[tuple[str, bytes, os.stat_result]]:
    """Each entry of the store paths: its name relative to the store root, disk path, lstat."""
    root = os.fsencode(store_root)
    for store_path in store_paths:
        for path, st in _walk(os.path.join(root, os.fsencode(store_path.lstrip("/")))):
            yield os.fsdecode(os.path.relpath(path, root)), path, st


def store_entry_names(store_root: Path, store_paths: Iterable[str]) -> set[str]:
    """Names (``nix/store/<base>/…``) of every entry of the store paths, on disk."""
    return {name for name, _, _ in _walk_store_paths(store_root, store_paths)}


def expected_tree(store_root: Path, store_paths: Iterable[str]) -> dict[str, Node]:
    """The store paths as an image must reproduce them: canonical modes, owner root."""
    return {
        name: _node(path, canonical_mode(st), (0, 0))
        for name, path, st in _walk_store_paths(store_root, store_paths)
    }


def actual_tree(rootfs: Path) -> dict[str, Node]:
    """Everything in an unpacked rootfs under nix/store, modes and owners as found.

    Owners are only meaningful when unpacked as root (rootless umoci maps them).
    """
    root = os.fsencode(rootfs)
    tree = {}
    for path, st in _walk(os.path.join(root, os.fsencode(STORE_DIR.lstrip("/")))):
        name = os.fsdecode(os.path.relpath(path, root))
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else (0, 0)
        tree[name] = _node(path, stat.S_IMODE(st.st_mode), owner)
    return tree


def compare_tree(rootfs: Path, store_root: Path, store_paths: Iterable[str]) -> list[str]:
    """Differences between an unpacked image and the store paths it should hold.

    Every path, type, mode, symlink target, content and owner must match and nothing
    else may be there: the rootfs holds only ``nix/store`` (both 0755) and the store
    holds only the given paths. An empty list means the image is faithful.
    """
    problems = []
    top = sorted(os.listdir(rootfs))
    if top != ["nix"]:
        problems.append(f"rootfs holds {top}")
    return (problems + compare_store(rootfs, store_root, store_paths))[:MAX_REPORTED]


def compare_store(rootfs: Path, store_root: Path, store_paths: Iterable[str]) -> list[str]:
    """Differences between an unpacked image's ``nix/store`` and the store paths it
    should hold, whatever else the rootfs holds (an image with a customisation layer).

    ``nix`` must hold only ``store``, both 0755, and the store only the given paths,
    each entry with the same type, mode, symlink target, content and owner.
    """
    problems = []
    if sorted(os.listdir(rootfs / "nix")) != ["store"]:
        problems.append(f"nix/ holds {sorted(os.listdir(rootfs / 'nix'))}")
    for folder in ("nix", "nix/store"):
        mode = stat.S_IMODE(os.lstat(rootfs / folder).st_mode)
        if mode != 0o755:
            problems.append(f"{folder}: mode {mode:o}, expected 755")
    expected = expected_tree(store_root, store_paths)
    actual = actual_tree(rootfs)
    actual.pop(STORE_DIR.lstrip("/"), None)
    for name in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(name), actual.get(name)
        if want != got:
            problems.append(f"{name}: expected {want}, image has {got}")
    return problems[:MAX_REPORTED]


def store_file_bytes(store_root: Path, store_paths: Iterable[str]) -> int:
    """The bytes of every regular file of the store paths, on disk."""
    return sum(
        st.st_size
        for _, _, st in _walk_store_paths(store_root, store_paths)
        if stat.S_ISREG(st.st_mode)
    )


def resolve_in(rootfs: Path, path: str, max_links: int = 40) -> Path:
    """Where ``path`` leads inside an unpacked image, following symlinks as the
    container sees them: absolute targets start at the image root, not the host's."""
    pending = list(PurePosixPath(path).parts[1:])
    inside = PurePosixPath("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            inside = inside.parent
            continue
        candidate = inside / part
        disk = rootfs / str(candidate).lstrip("/")
        if not disk.is_symlink():
            inside = candidate
            continue
        links += 1
        assert links <= max_links, f"{path}: more than {max_links} symlinks in {rootfs}"
        target = PurePosixPath(os.readlink(disk))
        if target.is_absolute():
            inside, pending = PurePosixPath("/"), [*target.parts[1:], *pending]
        else:
            pending = [*target.parts, *pending]
    return rootfs / str(inside).lstrip("/")
