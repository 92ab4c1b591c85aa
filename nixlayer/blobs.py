"""Reading a blob once, as it streams: its sha256 and size, and for a layer the
sha256 of its uncompressed tar and a check of its members, without unpacking it.

``verify`` checks every blob of an image with these; a base image's layers are
checked with them too before they are copied into a new image (``--from``), so
that no member name that climbs out of the root reaches a consumer unnoticed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
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
    where tarfile stopped can be told from the end-of-archive zeros."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()
        self.count = 0
        self.last_data = -1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        kept = len(data.rstrip(b"\0"))
        if kept:
            self.last_data = self.count + kept - 1
        self.count += len(data)
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def hexdigest(self) -> str:
        return f"sha256:{self.digest.hexdigest()}"


@dataclass
class BlobRead:
    """A blob as read: its size and sha256, and for a layer the sha256 of its
    uncompressed tar (None if it could not be decompressed) and what its tar holds."""

    size: int
    digest: str
    diff_id: str | None = None
    problems: list[str] = field(default_factory=list)


def read_blob(opener: Opener) -> BlobRead:
    with opener() as file:
        counted = _Counted(file)
        counted.drain()
    return BlobRead(counted.count, counted.hexdigest)


def read_layer(opener: Opener, compression: str | None, label: str) -> BlobRead:
    """One pass over a layer blob: hashed as stored, decompressed, hashed again,
    and parsed member by member with tarfile in streaming mode."""
    with opener() as file:
        stored = _Counted(file)
        tar_stream = _Counted(decompressing(stored, compression))
        problems: list[str] = []
        try:
            end = _check_members(tar_stream, label, problems)
            tar_stream.drain()
        except READ_ERRORS as error:
            kind = compression or "plain"
            problems.append(f"{label}: cannot be read as a {kind} tar: {reason(error)}")
            _drain_quietly(stored)
            return BlobRead(stored.count, stored.hexdigest, None, problems)
        stored.drain()
    if tar_stream.last_data >= end:
        problems.append(f"{label}: data after a header tarfile cannot read (damaged)")
    elif tar_stream.count - end < _END_MARKER:
        problems.append(f"{label}: no end-of-archive marker (truncated?)")
    return BlobRead(stored.count, stored.hexdigest, tar_stream.hexdigest, problems)


def _drain_quietly(stored: _Counted) -> None:
    """Read the rest of a blob after its tar failed, so its digest and size can still
    be checked; a read error here was already reported as the tar's."""
    with suppress(OSError):
        stored.drain()


def _check_members(stream: IO[bytes], label: str, problems: list[str]) -> int:
    """Each member's name once, relative and without ``..``; a hard link only to an
    earlier file of the same layer (so each layer unpacks on its own). Returns the
    offset where the archive's end marker starts."""
    seen: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if name in seen:
                problems.append(f"{label}: holds {show_path(name)} twice")
            if name.startswith("/") or ".." in name.split("/"):
                problems.append(f"{label}: unsafe member name {show_path(name)}")
            if member.islnk() and member.linkname.removeprefix("./") not in seen:
                problems.append(
                    f"{label}: {show_path(name)} is a hard link to {show_path(member.linkname)}, "
                    "which is not earlier in this layer"
                )
            seen.add(name)
            tar.members = []  # streaming: keep no TarInfo for layers of millions of files
        return tar.offset
