"""The tar writer: one reproducible tar per layer, laid out from metadata, streamed once.

A layer's size is known from ``lstat`` before its first byte is written, and its
sha256 is computed while the bytes stream, so no layer is ever tarred twice to
learn its size or digest. Headers are built here directly (USTAR, with PAX
records only where a name, link target or size needs them), so that every byte
is under our control: no uid, user name, host mtime or umask leaks in.

A file is stored in full under each of its names, as Nix's own serialisation (the
NAR) has it, never as a tar hard link to a twin: which files of a store share an
inode depends on the machine (``nix-store --optimise``), and the image's bytes must
depend on the closure alone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from operator import attrgetter
from zlib import adler32

from nixlayer.errors import NixlayerError, show_path
from nixlayer.store import Entry, Kind, TreeFiles

TAR_FORMAT = 2  # bump whenever the bytes written for the same entries change
BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZEROS = memoryview(END_OF_ARCHIVE)
READ_CHUNK = 1 << 20  # the size of the buffers the layer's bytes stream through
_SPARE_BUFFERS = 2  # buffers being hashed and written while another fills
_THREADED_FROM = 8 * READ_CHUNK  # bytes in large files that make a second thread worth it
# Whether a layer may be written by a second thread; off where layers are already made
# in parallel (formats/oci.py), so that the cores are not shared out twice.
WRITER_THREAD: ContextVar[bool] = ContextVar("nixlayer_writer_thread", default=True)
MAX_OCTAL_SIZE = 0o77777777777  # the largest size a USTAR header can hold (8 GiB - 1)
MAX_OCTAL_ID = 0o7777777  # the largest uid or gid it can hold

_TYPEFLAGS = {Kind.FILE: b"0", Kind.SYMLINK: b"2", Kind.DIRECTORY: b"5"}
_FILE, _DIRECTORY = _TYPEFLAGS[Kind.FILE], _TYPEFLAGS[Kind.DIRECTORY]
_PAX = b"x"
_PAX_NAME = b"././@PaxHeader"

Emit = Callable[[bytes | memoryview], None]


@dataclass(frozen=True)
class LayerLayout:
    """Everything needed to stream a layer, and its exact size in bytes.

    ``members`` are the entries in tar order. ``extended`` names the few members
    whose header needs PAX records, so that the others take the quick path without
    being tested again.
    """

    members: tuple[Entry, ...]
    size: int
    mtime: int
    extended: frozenset[bytes] = frozenset()


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


# Magic and version, empty user and group names, device numbers 0.
_USTAR_MIDDLE = b"ustar\x0000" + bytes(64) + _octal(0, 8) + _octal(0, 8)


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` for a 512-byte block, in C: the low half of a block's Adler-32
    is 1 + the sum of its bytes modulo 65521, exact for 256 bytes (at most 65280)."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


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
    uid, gid = owner
    head = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0" % (
        short_name.ljust(100, b"\0"),
        mode,
        uid if uid <= MAX_OCTAL_ID else 0,
        gid if gid <= MAX_OCTAL_ID else 0,
        size if size <= MAX_OCTAL_SIZE else 0,
        mtime,
    )
    tail = b"%s%s%s%s" % (
        typeflag,
        linkname[:100].ljust(100, b"\0"),
        _USTAR_MIDDLE,
        prefix.ljust(167, b"\0"),  # the prefix field (155) and the block's last 12 bytes
    )
    checksum = _byte_sum(head + b"        " + tail)
    return b"%s%06o\0 %s" % (head, checksum, tail)


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
    if _plain(name, linkname, size, owner):
        return _plain_header(name, mode, size, mtime, typeflag, linkname)
    pax = _pax_records(name, linkname, size, owner)
    member = _ustar_header(name, mode, size, mtime, typeflag, linkname, owner)
    if not pax:
        return member
    pax_header = _ustar_header(_PAX_NAME, 0o644, len(pax), mtime, _PAX)
    return pax_header + pax + padding(len(pax)) + member


def _plain(name: bytes, linkname: bytes, size: int, owner: tuple[int, int]) -> bool:
    """Most members: short ASCII names, owned by root, so no PAX record (a quick test
    that implies ``not _pax_records(...)``)."""
    return (
        len(name) <= 100
        and len(linkname) <= 100
        and size <= MAX_OCTAL_SIZE
        and owner == (0, 0)
        and name.isascii()
        and linkname.isascii()
    )


_PLAIN_TAIL = _USTAR_MIDDLE + bytes(167)  # then an empty prefix, and the block's end
_PLAIN_SUM = sum(_PLAIN_TAIL) + sum(b"        ")  # with the checksum field as spaces
_mode_and_time: dict[tuple[int, int], tuple[bytes, bytes]] = {}


def _plain_header(
    name: bytes, mode: int, size: int, mtime: int, typeflag: bytes, linkname: bytes
) -> bytes:
    """``_ustar_header`` for a member ``_plain`` says needs no PAX record, quicker: the
    fields that repeat from member to member are formatted once, and the checksum
    adds up only what varies. Its ASCII parts sum to less than 65521, so that their
    Adler-32 gives their sum (see ``_byte_sum``)."""
    fields = _mode_and_time.get((mode, mtime))
    if fields is None:
        fields = b"%07o\0%07o\0%07o\0" % (mode, 0, 0), b"%011o\0" % mtime
        _mode_and_time[(mode, mtime)] = fields
    head = b"%s%s%011o\0%s" % (name.ljust(100, b"\0"), fields[0], size, fields[1])
    checksum = (adler32(head) & 0xFFFF) - 1 + _PLAIN_SUM + typeflag[0]
    if linkname:
        checksum += (adler32(linkname) & 0xFFFF) - 1
    return b"%s%06o\0 %s%s%s" % (head, checksum, typeflag, linkname.ljust(100, b"\0"), _PLAIN_TAIL)


def file_header(name: bytes, size: int, mtime: int, mode: int = 0o444) -> bytes:
    """The header of a plain file member, for archives that hold layers and metadata."""
    return header(name, mode, size, mtime, _TYPEFLAGS[Kind.FILE])


def _member_fields(entry: Entry) -> tuple[bytes, bytes, int, bytes]:
    """The member's name, typeflag, data size and link name, as its header gives them."""
    kind = entry.kind
    if kind is Kind.FILE:
        return entry.name, _FILE, entry.size, entry.target
    if kind is Kind.DIRECTORY:
        return entry.name + b"/", _DIRECTORY, 0, entry.target
    return entry.name, _TYPEFLAGS[kind], 0, entry.target


def lay_out(entries: Iterable[Entry], mtime: int) -> LayerLayout:
    """Plan a layer's tar from metadata alone: members sorted bytewise, exact size."""
    members = sorted(entries, key=attrgetter("name"))
    size = len(END_OF_ARCHIVE)
    extended = []
    for entry in members:
        name, _, data_size, linkname = _member_fields(entry)
        size += BLOCK + data_size + -data_size % BLOCK
        if not _plain(name, linkname, data_size, entry.owner):
            extended.append(entry.name)
            pax = _pax_records(name, linkname, data_size, entry.owner)
            size += BLOCK + len(pax) + -len(pax) % BLOCK if pax else 0
    return LayerLayout(tuple(members), size, mtime, frozenset(extended))


def write_layer(
    layout: LayerLayout, write: Emit, on_bytes: Callable[[int], None] = lambda n: None
) -> str:
    """Stream the layer's tar through ``write`` and return its sha256 (hex).

    The bytes are gathered into large buffers, headers and small files together, and
    a file's bytes are read straight into them; each full buffer is hashed here and
    written by ``write``. In a layer of large files, another thread writes (and so
    compresses, for a compressed blob) while this one reads and hashes the next
    buffer: reads, hashlib, zlib and zstandard release the GIL. Among small files,
    where the time goes to Python between system calls, a second thread, even one
    that only hashes, was measured slower on a busy machine (0.91 s against 0.77 s
    for 116,000 files): its hand-overs wait for the GIL and for a core. So this
    thread does all; and where ``WRITER_THREAD`` is off. ``write`` must not keep the
    memoryview it is given.

    Stops with an error if a file no longer has the size it had when the layer
    was laid out: the bytes would not match the size already announced.
    """
    digest = hashlib.sha256()
    written = 0

    def hashed(data: memoryview) -> None:
        nonlocal written
        digest.update(data)
        written += len(data)
        on_bytes(len(data))

    mtime, extended = layout.mtime, layout.extended
    threaded = WRITER_THREAD.get() and _large_data(layout) >= _THREADED_FROM
    walked = {e.disk_path for e in layout.members if e.kind is Kind.DIRECTORY}
    walked.discard(b"")
    with TreeFiles(walked) as files, _Buffers(hashed, write, threaded, files) as out:
        for entry in layout.members:
            name, typeflag, size, linkname = _member_fields(entry)
            if entry.name in extended:
                head = header(name, entry.mode, size, mtime, typeflag, linkname, entry.owner)
            else:
                head = _plain_header(name, entry.mode, size, mtime, typeflag, linkname)
            out.add_member(head, entry, size)
        out.add(END_OF_ARCHIVE)
    assert written == layout.size, "layer size differs from its layout"
    return digest.hexdigest()


_spare_buffers: queue.SimpleQueue[memoryview] = queue.SimpleQueue()


def _take_buffer() -> memoryview:
    """A buffer of ``READ_CHUNK`` bytes, one a past layer used if there is one: a new
    one costs page faults as it is first filled."""
    try:
        buffer = _spare_buffers.get_nowait()
    except queue.Empty:
        return memoryview(bytearray(READ_CHUNK))
    return buffer if len(buffer) == READ_CHUNK else memoryview(bytearray(READ_CHUNK))


def _large_data(layout: LayerLayout) -> int:
    """The bytes of the layer's files of at least a buffer each."""
    return sum(
        entry.size
        for entry in layout.members
        if entry.size >= READ_CHUNK and entry.kind is Kind.FILE
    )


class _Buffers:
    """The layer's bytes in order, in buffers of ``READ_CHUNK`` bytes: each full one is
    given to ``hashed``, then to ``write``, on another thread when ``threaded``, while
    the next fills.

    Errors of ``write`` surface in the filling thread at the next hand-over; when
    filling stops early, buffers not yet written are dropped.
    """

    def __init__(
        self, hashed: Callable[[memoryview], None], write: Emit, threaded: bool, files: TreeFiles
    ) -> None:
        self._hashed = hashed
        self._write = write
        self._files = files
        self._view = _take_buffer()
        self._used = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
            self._full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
            for _ in range(_SPARE_BUFFERS):
                self._free.put(_take_buffer())
            self._cancelled = False
            self._thread = threading.Thread(target=self._run, name="nixlayer-write", daemon=True)
            self._thread.start()

    def __enter__(self) -> _Buffers:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        failed = kind is not None
        try:
            if not failed:
                self._hand_over()
        except BaseException:
            failed = True
            raise
        finally:
            if self._thread is not None:
                self._cancelled = failed
                self._full.put(None)
                self._thread.join()
        if self._error is not None and not failed:
            raise self._error
        if not failed:  # every buffer is back: this one, and the spares in the queue
            _spare_buffers.put(self._view)
            while self._thread is not None and not self._free.empty():
                _spare_buffers.put(self._free.get())

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            view, used = item
            if self._error is None and not self._cancelled:
                try:
                    self._write(view[:used])
                except BaseException as error:  # handed to the filling thread
                    self._error = error
            self._free.put(view)

    def _hand_over(self) -> None:
        self._hashed(self._view[: self._used])
        if self._thread is None:
            self._write(self._view[: self._used])
        else:
            self._full.put((self._view, self._used))
            self._view = self._free.get()
            if self._error is not None:
                raise self._error
        self._used = 0

    def add(self, data: bytes | memoryview) -> None:
        end = self._used + len(data)
        if end <= READ_CHUNK:
            self._view[self._used : end] = data
            self._used = end
            return
        start = 0
        while start < len(data):
            if self._used == READ_CHUNK:
                self._hand_over()
            count = min(len(data) - start, READ_CHUNK - self._used)
            self._view[self._used : self._used + count] = data[start : start + count]
            self._used += count
            start += count

    def add_member(self, header: bytes, entry: Entry, size: int) -> None:
        """A member's header, ``size`` bytes of data and padding. A file is read even
        when it was empty at layout, so that one that gained bytes since is caught as
        any other file is. Most members fit in what is left of the buffer, with a byte
        to spare (see ``_read``): they take one quick path."""
        if entry.kind is not Kind.FILE:
            self.add(header)
            return
        start = self._used + len(header)
        end = start + size
        padded = end + -size % BLOCK
        if padded >= READ_CHUNK:
            self.add(header)
            self.add_file(entry)
            self.add(_ZEROS[: -size % BLOCK])
            return
        view = self._view
        fd = self._open(entry)
        try:
            count = _read_into(fd, entry, view[start : end + 1])
            if count != size:
                if count > size:
                    raise _changed(entry, "grew")
                # Short: the file shrank, or the system read it in parts; read the rest.
                view[self._used : start] = header
                self._used = start + count
                self._read(fd, entry, size - count)
                self.add(_ZEROS[: -size % BLOCK])
                return
        finally:
            os.close(fd)
        view[self._used : start] = header
        view[end:padded] = _ZEROS[: padded - end]
        self._used = padded

    def add_file(self, entry: Entry) -> None:
        """Exactly ``entry.size`` bytes."""
        fd = self._open(entry)
        try:
            self._read(fd, entry, entry.size)
        finally:
            os.close(fd)

    def _open(self, entry: Entry) -> int:
        """The file, never through a symlink swapped in for it or a folder on its way
        since the walk (see ``TreeFiles``)."""
        try:
            return self._files.open(entry.disk_path)
        except OSError as error:
            raise _unreadable(entry, error) from None

    def _read(self, fd: int, entry: Entry, remaining: int) -> None:
        """The ``remaining`` bytes of an open file, and a check that no more follow.

        Each read asks for one byte more than is left, where the buffer has room: a
        file that grew fills it, and one that has not returns short (a regular file
        reads short only at its end), which saves a read to see the end.
        """
        while True:
            if self._used == READ_CHUNK:
                self._hand_over()
            used = self._used
            wanted = min(remaining + 1, READ_CHUNK - used)
            count = _read_into(fd, entry, self._view[used : used + wanted])
            if count > remaining:
                raise _changed(entry, "grew")
            if not count:
                if remaining:
                    raise _changed(entry, "shrank")
                return
            self._used = used + count
            remaining -= count
            if not remaining and count < wanted:  # a short read: the end of the file
                return


def _read_into(fd: int, entry: Entry, view: memoryview) -> int:
    """``os.readv`` into one buffer, with errors that name the file."""
    try:
        return os.readv(fd, (view,))
    except OSError as error:
        raise _unreadable(entry, error) from None


# What opening or reading a path listed as a regular file meets when something else
# took its place since the walk: a symlink (O_NOFOLLOW), a file where a folder on its
# way was, a folder, a socket or a device, or a pipe that a writer holds open.
_REPLACED = {errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EAGAIN}


def _unreadable(entry: Entry, error: OSError) -> NixlayerError:
    if error.errno in _REPLACED:
        return NixlayerError(
            f"{_show(entry)}: it or a folder on its way was replaced while it was being read "
            "(symlinks are never followed)"
        )
    return NixlayerError(f"{_show(entry)}: cannot read it: {error.strerror}")


def _changed(entry: Entry, how: str) -> NixlayerError:
    """A file whose size is not the one its layout announced, at whatever size."""
    return NixlayerError(f"{_show(entry)}: the file {how} while it was being read")


def _show(entry: Entry) -> str:
    return show_path(entry.disk_path)
