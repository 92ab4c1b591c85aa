"""Reading a blob once, as it streams: its sha256 and size, and for a layer the
sha256 of its uncompressed tar and a check of its members, without unpacking it.

``verify`` checks every blob of an image with these; a base image's layers are
checked with them too before they are copied into a new image (``--from``), so
that no member name that climbs out of the root reaches a consumer unnoticed. Here
too what a whiteout is (``is_whiteout``), for the writers that refuse one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nixlayer.errors import reason, show_path

Opener = Callable[[], IO[bytes]]

_CHUNK = 1 << 20
_END_MARKER = 2 * 512
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"  # "the lower layers' contents of this folder are gone"
MAX_ID = 2**32 - 2  # Linux ids are 32-bit; chown reads the last, (uid_t)-1, as "unchanged"
_MODE_BITS = 0o177777  # the permission bits and the file type bits some tools add
_MAX_INT64 = 2**63  # Go's archive/tar (containerd, podman, skopeo) fails on larger numbers
_READS_PAST_END = 16  # more than tarfile and gzip make at the end of a whole stream
# PAX numbers as Go's archive/tar parses them; tarfile takes anything else for 0.
_PAX_NUMBERS = {
    key: re.compile(pattern, re.ASCII)
    for key, pattern in (
        ("size", r"[0-9]+"),
        ("uid", r"[0-9]+"),
        ("gid", r"[0-9]+"),
        ("mtime", r"-?[0-9]+(\.[0-9]*)?"),
    )
}

# What reading a damaged or truncated (compressed) tar can raise.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile is one
    EOFError,
    zlib.error,
    tarfile.TarError,
    ValueError,  # zstandard.ZstdError is one
)


def decompressing(source: IO[bytes], compression: str | None) -> IO[bytes]:
    """A reader of the uncompressed bytes; several gzip members or zstd frames in a
    row are one stream, as consumers read them."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    return source


def reopenable(file: IO[bytes]) -> Path:
    """A path that opens ``file`` anew, although it may have no name (Linux)."""
    return Path(f"/proc/self/fd/{file.fileno()}")


class _Counted(io.RawIOBase):
    """A reader that hashes and counts what passes through it and, for a tar stream,
    remembers the offset of its last non-zero byte, so that data after the point
    where tarfile stopped can be told from the end-of-archive zeros.

    Reading on and on past the end is an error: tarfile skips a member's data by
    reading it, and reads past the end for as long as the member's size says, which
    for a size of 10**23 is forever."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()
        self.count = 0
        self.last_data = -1
        self._reads_past_end = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        if not data and buffer:
            self._reads_past_end += 1
            if self._reads_past_end > _READS_PAST_END:
                raise EOFError("it ends inside a member, or the member's size is wrong")
        buffer[: len(data)] = data
        self.digest.update(data)
        kept = len(data.rstrip(b"\0"))
        if kept:
            self.last_data = self.count + kept - 1
        self.count += len(data)
        return len(data)

    def drain(self) -> None:
        while not self._reads_past_end and self.read(_CHUNK):
            pass

    @property
    def hexdigest(self) -> str:
        return f"sha256:{self.digest.hexdigest()}"


@dataclass
class LayerNames:
    """What a layer's names do to the layers below it, for ``verify`` to replay the
    image's layers as a consumer merges them: its whiteouts (``.wh.`` names, opaque
    markers among them), and whether each member at or above a store path is a
    directory. ``watched`` are the store directories whose members are kept: the
    layer's other files are many and cannot hide the store. Of the members inside a
    store path only the first is kept (``inside``, by store path): a layer that does
    not list that path changes it with any of them."""

    watched: frozenset[str] = frozenset()
    whiteouts: list[str] = field(default_factory=list)
    store_members: dict[str, bool] = field(default_factory=dict)
    inside: dict[str, str] = field(default_factory=dict)
    # The folders above a watched one: ``note`` runs for every member of every layer,
    # and a set lookup keeps its cost flat.
    _above: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._above = frozenset(
            store[:at] for store in self.watched for at, char in enumerate(store) if char == "/"
        )

    def note(self, name: str, directory: bool) -> None:
        if is_whiteout(name):
            self.whiteouts.append(name)
        elif name in self.watched or name in self._above or posixpath.dirname(name) in self.watched:
            self.store_members[name] = directory
        else:
            for store in self.watched:
                if name.startswith(store + "/"):
                    end = name.find("/", len(store) + 1)
                    self.inside.setdefault(name[:end], name)


def is_whiteout(name: str) -> bool:
    """Whether a layer member of this name means a deletion rather than a file: every
    consumer (the OCI image spec, Docker, containerd, podman, umoci) reads a last
    component ``.wh.NAME`` as "NAME is gone" and ``.wh..wh..opq`` as "this folder's
    lower contents are gone". No layer nixlayer writes may hold one."""
    return posixpath.basename(name).startswith(WHITEOUT)


@dataclass
class BlobRead:
    """A blob as read: its size and sha256, and for a layer the sha256 of its
    uncompressed tar (None if it could not be decompressed) and what its tar holds."""

    size: int
    digest: str
    diff_id: str | None = None
    problems: list[str] = field(default_factory=list)
    names: LayerNames = field(default_factory=LayerNames)


def read_blob(opener: Opener) -> BlobRead:
    with opener() as file:
        counted = _Counted(file)
        counted.drain()
    return BlobRead(counted.count, counted.hexdigest)


def read_layer(
    opener: Opener, compression: str | None, label: str, watched: frozenset[str] = frozenset()
) -> BlobRead:
    """One pass over a layer blob: hashed as stored, decompressed, hashed again,
    and parsed member by member with tarfile in streaming mode; ``watched`` are the
    store directories whose members ``LayerNames`` keeps."""
    names = LayerNames(watched)
    with opener() as file:
        stored = _Counted(file)
        tar_stream = _Counted(decompressing(stored, compression))
        problems: list[str] = []
        try:
            end = _check_members(tar_stream, label, problems, names)
            tar_stream.drain()
        except READ_ERRORS as error:
            kind = compression or "plain"
            problems.append(f"{label}: cannot be read as a {kind} tar: {reason(error)}")
            _drain_quietly(stored)
            return BlobRead(stored.count, stored.hexdigest, None, problems, names)
        stored.drain()
    if tar_stream.last_data >= end:
        problems.append(f"{label}: data after a header tarfile cannot read (damaged)")
    elif tar_stream.count - end < _END_MARKER:
        problems.append(f"{label}: no end-of-archive marker (truncated?)")
    return BlobRead(stored.count, stored.hexdigest, tar_stream.hexdigest, problems, names)


def _drain_quietly(stored: _Counted) -> None:
    """Read the rest of a blob after its tar failed, so its digest and size can still
    be checked; a read error here was already reported as the tar's."""
    with suppress(OSError):
        stored.drain()


def _check_members(stream: IO[bytes], label: str, problems: list[str], names: LayerNames) -> int:
    """Each member's name once, relative and without ``..``; a hard link only to an
    earlier file of the same layer (so each layer unpacks on its own); numbers and
    whiteouts every consumer reads alike. Returns the offset where the archive's end
    marker starts."""
    seen: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tar:
        for member in tar:
            name = _clean(member.name)
            if name in seen:
                problems.append(f"{label}: holds {show_path(name)} twice")
            if climbs_out(name) or "\0" in name:
                problems.append(f"{label}: unsafe member name {show_path(name)}")
            if member.islnk():
                _check_hard_link(_clean(member.linkname), name, seen, label, problems)
            problems.extend(f"{label}: {show_path(name)}: {p}" for p in _number_problems(member))
            if is_whiteout(name):
                problems.extend(f"{label}: {p}" for p in _whiteout_problems(name))
            names.note(name, member.isdir())
            seen.add(name)
            tar.members = []  # streaming: keep no TarInfo for layers of millions of files
    if tar.pax_headers.keys() - {"comment"}:
        problems.append(
            f"{label}: a PAX global header sets {', '.join(sorted(tar.pax_headers))}, which "
            "some consumers apply to every later member and others ignore"
        )
    problems.extend(
        f"{label}: {show_path(whiteout)} deletes a name this same layer holds, which "
        "consumers apply in different orders"
        for whiteout in names.whiteouts
        if whiteout_target(whiteout) in seen
    )
    return tar.offset


def _clean(name: str) -> str:
    """A member name as consumers take it (``./a//b/`` is ``a/b``, the root is ``.``);
    one that climbs out stays as it is, to be reported."""
    return name if climbs_out(name) else posixpath.normpath(name)


def _check_hard_link(
    target: str, name: str, seen: set[str], label: str, problems: list[str]
) -> None:
    if target not in seen:
        problems.append(
            f"{label}: {show_path(name)} is a hard link to {show_path(target)}, "
            "which is not earlier in this layer"
        )
    elif is_whiteout(target):
        problems.append(
            f"{label}: {show_path(name)} is a hard link to the whiteout {show_path(target)}, "
            "which consumers do not unpack as a file"
        )


def _number_problems(member: tarfile.TarInfo) -> list[str]:
    """Owner, mode, size and time as consumers take them: ids are 32-bit on Linux, a
    mode holds permission (and file type) bits, and Go's archive/tar, which
    containerd, podman and skopeo read layers with, fails on a PAX number that is not
    a plain decimal one, or beyond 64 bits."""
    problems = [
        f"PAX {key} {value!r} is not a decimal number"
        for key, value in member.pax_headers.items()
        if key in _PAX_NUMBERS and not _PAX_NUMBERS[key].fullmatch(value)
    ]
    problems += [
        f"{key} {value} is out of range (0 to {MAX_ID})"
        for key, value in (("uid", member.uid), ("gid", member.gid))
        if not 0 <= value <= MAX_ID
    ]
    if member.mode & ~_MODE_BITS or member.mode < 0:
        problems.append(f"mode {member.mode:o} has bits beyond a file's mode")
    if not (math.isfinite(member.mtime) and abs(member.mtime) < _MAX_INT64):
        problems.append(f"mtime {member.mtime} is out of range")
    if member.size >= _MAX_INT64:
        problems.append(f"size {member.size} is out of range")
    return problems


def _whiteout_problems(name: str) -> list[str]:
    """A whiteout consumers read alike deletes one named thing beside it, or is the
    opaque marker; ``.wh.`` or ``.wh..`` would delete its own folder or the one above,
    and other ``.wh..wh.`` names are Docker's AUFS metadata, which others unpack."""
    base = posixpath.basename(name)
    rest = base.removeprefix(WHITEOUT)
    if rest in ("", ".", "..") or (rest.startswith(WHITEOUT) and base != OPAQUE):
        return [f"{show_path(name)} is a whiteout that consumers read differently"]
    return []


def whiteout_target(whiteout: str) -> str | None:
    """The name a whiteout deletes; None for an opaque marker, which deletes what lower
    layers hold in its folder."""
    folder, base = posixpath.split(whiteout)
    if base == OPAQUE:
        return None
    return posixpath.join(folder, base.removeprefix(WHITEOUT))


def climbs_out(name: str) -> bool:
    """Whether a member name is absolute or has a ``..`` part: unpacked as it says, it
    lands outside the folder it is unpacked into."""
    return name.startswith("/") or ".." in name.split("/")
