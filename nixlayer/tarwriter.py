"""The tar writer: one reproducible tar per layer, laid out from metadata, streamed once.

A layer's size is known from ``lstat`` before its first byte is written, and its
sha256 is computed while the bytes stream, so no layer is ever tarred twice to
learn its size or digest. Headers are built here directly (USTAR, with PAX
records only where a name, link target or size needs them), so that every byte
is under our control: no uid, user name, host mtime or umask leaks in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nixlayer.errors import NixlayerError
from nixlayer.store import Entry, Kind

TAR_FORMAT = 1  # bump whenever the bytes written for the same entries change
BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
READ_CHUNK = 1 << 20
MAX_OCTAL_SIZE = 0o77777777777  # the largest size a USTAR header can hold (8 GiB - 1)
MAX_OCTAL_ID = 0o7777777  # the largest uid or gid it can hold

_TYPEFLAGS = {Kind.FILE: b"0", Kind.SYMLINK: b"2", Kind.DIRECTORY: b"5"}
_HARDLINK = b"1"
_PAX = b"x"
_PAX_NAME = b"././@PaxHeader"

Emit = Callable[[bytes | memoryview], None]


@dataclass(frozen=True, slots=True)
class Member:
    """An entry as it goes into the tar; ``link_to`` names the earlier twin of a
    hard-linked file, which the tar then stores as a link, not a second copy."""

    entry: Entry
    link_to: bytes | None = None

    @property
    def data_size(self) -> int:
        return self.entry.size if self.entry.kind is Kind.FILE and self.link_to is None else 0


@dataclass(frozen=True)
class LayerLayout:
    """Everything needed to stream a layer, and its exact size in bytes."""

    members: tuple[Member, ...]
    size: int
    mtime: int


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _ustar_header(
    name: bytes,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    """A 512-byte USTAR header with empty user and group names.

    ``name`` is split into prefix and name where it is too long for the name
    field alone; callers send longer or non-ASCII names through PAX records.
    """
    prefix, short_name = _split_name(name) or (b"", name[:100])
    block = b"".join(
        (
            short_name.ljust(100, b"\0"),
            _octal(mode, 8),
            *(_octal(i if i <= MAX_OCTAL_ID else 0, 8) for i in owner),
            _octal(size if size <= MAX_OCTAL_SIZE else 0, 12),
            _octal(mtime, 12),
            b" " * 8,
            typeflag,
            linkname[:100].ljust(100, b"\0"),
            b"ustar\x0000",
            bytes(64),
            _octal(0, 8),
            _octal(0, 8),
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """USTAR's prefix/name split at a slash, or None if the name cannot fit."""
    if len(name) <= 100:
        return b"", name
    cut = name.rfind(b"/", 0, min(156, len(name) - 1))
    if cut <= 0 or len(name) - cut - 1 > 100:
        return None
    return name[:cut], name[cut + 1 :]


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"<length> key=value\\n"``, where the length counts its own digits."""
    body = b" %s=%s\n" % (key, value)
    length = len(body) + len(str(len(body)))
    while length != len(body) + len(str(length)):
        length += 1
    return b"%d%s" % (length, body)


def _pax_records(name: bytes, linkname: bytes, size: int, owner: tuple[int, int]) -> bytes:
    """The PAX records a member needs, in a fixed order; empty for most members."""
    records = []
    if owner[1] > MAX_OCTAL_ID:
        records.append((b"gid", b"%d" % owner[1]))
    if len(linkname) > 100 or not linkname.isascii():
        records.append((b"linkpath", linkname))
    if not name.isascii() or _split_name(name) is None:
        records.append((b"path", name))
    if size > MAX_OCTAL_SIZE:
        records.append((b"size", b"%d" % size))
    if owner[0] > MAX_OCTAL_ID:
        records.append((b"uid", b"%d" % owner[0]))
    if not records:
        return b""
    if not all(_is_utf8(value) for _, value in records):
        records.insert(0, (b"hdrcharset", b"BINARY"))
    return b"".join(_pax_record(key, value) for key, value in records)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def header(
    name: bytes,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    """The header blocks of one tar member: a PAX extended header first when needed."""
    pax = _pax_records(name, linkname, size, owner)
    member = _ustar_header(name, mode, size, mtime, typeflag, linkname, owner)
    if not pax:
        return member
    pax_header = _ustar_header(_PAX_NAME, 0o644, len(pax), mtime, _PAX)
    return pax_header + pax + padding(len(pax)) + member


def file_header(name: bytes, size: int, mtime: int, mode: int = 0o444) -> bytes:
    """The header of a plain file member, for archives that hold layers and metadata."""
    return header(name, mode, size, mtime, _TYPEFLAGS[Kind.FILE])


def _member_header(member: Member, mtime: int) -> bytes:
    entry = member.entry
    if member.link_to is not None:
        return header(entry.name, entry.mode, 0, mtime, _HARDLINK, member.link_to, entry.owner)
    name = entry.name + b"/" if entry.kind is Kind.DIRECTORY else entry.name
    typeflag = _TYPEFLAGS[entry.kind]
    return header(name, entry.mode, member.data_size, mtime, typeflag, entry.target, entry.owner)


def _link_twins(entries: list[Entry]) -> list[Member]:
    """Files sharing an inode inside the layer: the first name (in tar order) holds
    the bytes, later names become hard links to it."""
    first_name: dict[tuple[int, int], bytes] = {}
    members = []
    for entry in entries:
        link_to = None
        if entry.inode is not None:
            link_to = first_name.setdefault(entry.inode, entry.name)
            link_to = None if link_to == entry.name else link_to
        members.append(Member(entry, link_to))
    return members


def lay_out(entries: Iterable[Entry], mtime: int) -> LayerLayout:
    """Plan a layer's tar from metadata alone: members sorted bytewise, exact size."""
    members = tuple(_link_twins(sorted(entries, key=lambda entry: entry.name)))
    size = len(END_OF_ARCHIVE) + sum(
        len(_member_header(m, mtime)) + m.data_size + len(padding(m.data_size)) for m in members
    )
    return LayerLayout(members=members, size=size, mtime=mtime)


def write_layer(
    layout: LayerLayout, write: Emit, on_bytes: Callable[[int], None] = lambda n: None
) -> str:
    """Stream the layer's tar through ``write`` and return its sha256 (hex).

    Stops with an error if a file no longer has the size it had when the layer
    was laid out: the bytes would not match the size already announced.
    """
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(READ_CHUNK))
    written = 0

    def emit(data: bytes | memoryview) -> None:
        nonlocal written
        digest.update(data)
        write(data)
        written += len(data)
        on_bytes(len(data))

    for member in layout.members:
        emit(_member_header(member, layout.mtime))
        if member.data_size:
            _stream_file(member.entry, buffer, emit)
            emit(padding(member.data_size))
    emit(END_OF_ARCHIVE)
    assert written == layout.size, "layer size differs from its layout"
    return digest.hexdigest()


def _stream_file(entry: Entry, buffer: memoryview, emit: Emit) -> None:
    """Copy exactly ``entry.size`` bytes, never following a symlink swapped in."""
    path = os.fsdecode(entry.disk_path)
    try:
        fd = os.open(entry.disk_path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise NixlayerError(f"{path}: cannot read it: {e.strerror}") from None
    with open(fd, "rb", buffering=0) as file:
        remaining = entry.size
        while remaining:
            count = file.readinto(buffer[: min(len(buffer), remaining)])
            if not count:
                raise NixlayerError(f"{path}: the file shrank while it was being read")
            emit(buffer[:count])
            remaining -= count
        if file.read(1):
            raise NixlayerError(f"{path}: the file grew while it was being read")
