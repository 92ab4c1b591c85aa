"""Writing outputs so that no half-written file ever sits at the destination."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nixlayer.errors import NixlayerError

STDOUT = "-"
_BUFFER = 1 << 20
# Errors only a write can meet, and only for want of room: never a problem of the input.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@functools.cache
def _umask() -> int:
    """Read once: reading it means setting it, which must not race with other threads."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PendingFile:
    """A file written under a temporary name in its final folder, so that publishing
    it is one atomic rename; discarded unless published."""

    def __init__(self, folder: str | Path) -> None:
        fd, self.temporary = tempfile.mkstemp(dir=folder, prefix=".nixlayer-", suffix=".tmp")
        self.file: BinaryIO = open(fd, "wb", buffering=_BUFFER)  # noqa: SIM115
        self.published = False

    def publish(self, destination: str | Path) -> None:
        self.file.close()
        os.chmod(self.temporary, 0o666 & ~_umask())
        os.replace(self.temporary, destination)
        self.published = True

    def discard(self) -> None:
        """Remove the file unless published. Closing flushes the buffer, which fails
        again on a full disk: that must neither keep the file nor hide the error
        that stopped the write."""
        if self.published:
            return
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temporary)


@contextmanager
def pending_file(folder: str | Path, flag: str = "-o") -> Iterator[PendingFile]:
    """A ``PendingFile`` that is removed on any error, Ctrl-C or SIGTERM (which the CLI
    turns into an exception), or if the block ends without publishing it. A full
    disk or quota is the user's to fix, so it becomes an error naming the folder."""
    try:
        pending = PendingFile(folder)
    except OSError as e:
        raise NixlayerError(f"{flag} {folder}: cannot write there: {e.strerror}") from None
    try:
        yield pending
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise NixlayerError(f"{flag} {folder}: cannot write there: {e.strerror}") from None
    finally:
        pending.discard()


def in_nix_build() -> bool:
    """Inside a Nix builder, which may write only ``$out`` and ``$TMPDIR``, and whose
    outputs Nix itself discards when the build fails."""
    return "NIX_BUILD_TOP" in os.environ


@contextmanager
def atomic_output(destination: str, flag: str = "-o") -> Iterator[BinaryIO]:
    """A buffered file that appears at ``destination`` only once it is complete;
    ``-`` streams to stdout instead. Inside a Nix build the file is written in place:
    a temporary name beside ``$out`` would be a write into the store."""
    if destination == STDOUT or in_nix_build():
        with _plain_output(destination) as out:
            yield out
        return
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise NixlayerError(f"{flag} {destination}: the folder {folder} does not exist")
    if os.path.isdir(destination):
        raise NixlayerError(f"{flag} {destination}: is a folder, not a file")
    with pending_file(folder, flag) as pending:
        yield pending.file
        pending.publish(destination)


def _widen_pipe(stream: BinaryIO) -> None:
    """Let a pipe hold one of our buffers: through the default 64 KiB, every write of a
    layer's 1 MiB buffer wakes the reader (``| docker load``) sixteen times, which
    doubles the CPU time the pipe costs both sides. Not possible everywhere (the
    system's pipe-max-size, other systems): then the pipe stays as it is."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    try:
        fd = stream.fileno()  # none when a test runner has replaced stdout
        if set_size is None or not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < _BUFFER:
            fcntl.fcntl(fd, set_size, _BUFFER)
    except OSError:
        pass


@contextmanager
def _plain_output(destination: str) -> Iterator[BinaryIO]:
    if destination == STDOUT:
        _widen_pipe(sys.stdout.buffer)
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(destination, "wb", buffering=_BUFFER) as out:
        yield out
