"""Writing outputs so that no half-written file ever sits at the destination."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nixlayer.errors import NixlayerError, missing_folder, show_path

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


# Where O_TMPFILE is not supported (by the kernel: EISDIR, or the file system).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


def _anonymous_file(folder: str | Path) -> int | None:
    """A file without a name in ``folder`` (Linux O_TMPFILE): if the process dies, even
    by SIGKILL, it vanishes with it. None where the system cannot make one."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno in _NO_TMPFILE:
            return None
        raise


class PendingFile:
    """A file written in its final folder, so that publishing it is one atomic rename;
    discarded unless published.

    It has no name until published where the system allows (``_anonymous_file``), so
    that not even ``kill -9`` leaves it behind; elsewhere it has a temporary name
    (``.nixlayer-*.tmp``) from the start.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = folder
        fd = _anonymous_file(folder)
        self.temporary: str | None = None
        if fd is None:
            fd, self.temporary = tempfile.mkstemp(dir=folder, prefix=".nixlayer-", suffix=".tmp")
        self.file: BinaryIO = open(fd, "wb", buffering=_BUFFER)  # noqa: SIM115
        self.published = False

    def publish(self, destination: str | Path, clobber: bool = True) -> None:
        """Give the file its final name, in one step: replacing what is there, or,
        unless ``clobber``, only if nothing is (else ``FileExistsError``, and the
        file at ``destination`` is untouched)."""
        self.file.flush()
        os.fchmod(self.file.fileno(), 0o666 & ~_umask())
        if not clobber:
            self._publish_new(destination)
            return
        if self.temporary is None:
            self.temporary = self._link()
        self.file.close()
        os.replace(self.temporary, destination)
        self.published = True

    def _publish_new(self, destination: str | Path) -> None:
        """``link`` fails where a name exists: never a window in which the other file
        could be lost, as checking first and renaming then would have."""
        if self.temporary is None:
            self._link(os.path.basename(destination))
        else:
            os.link(self.temporary, destination)
            os.unlink(self.temporary)
        self.file.close()
        self.published = True

    def _link(self, name: str | None = None) -> str:
        """A name for the anonymous file in its folder: ``name``, or a new temporary
        one, for as long as the rename takes (``linkat`` cannot replace a file,
        ``rename`` can). A directory descriptor makes Python call ``linkat`` (which
        follows the ``/proc`` link), not ``link``."""
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        source = f"/proc/self/fd/{self.file.fileno()}"
        try:
            while True:
                chosen = name or f".nixlayer-{os.urandom(8).hex()}.tmp"
                try:
                    os.link(source, chosen, dst_dir_fd=folder, follow_symlinks=True)
                except FileExistsError:
                    if name:
                        raise
                    continue
                return os.path.join(self.folder, chosen)
        finally:
            os.close(folder)

    def discard(self) -> None:
        """Remove the file unless published. Closing flushes the buffer, which fails
        again on a full disk: that must neither keep the file nor hide the error
        that stopped the write."""
        if self.published:
            return
        with contextlib.suppress(OSError):
            self.file.close()
        if self.temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary)


@contextmanager
def pending_file(folder: str | Path, flag: str = "-o") -> Iterator[PendingFile]:
    """A ``PendingFile`` that is removed on any error, Ctrl-C or SIGTERM (which the CLI
    turns into an exception), or if the block ends without publishing it."""
    try:
        pending = PendingFile(folder)
    except OSError as e:
        raise _cannot_write(flag, folder, e) from None
    try:
        with _no_room(flag, folder):
            yield pending
    finally:
        pending.discard()


@contextmanager
def _no_room(flag: str, where: str | Path) -> Iterator[None]:
    """A full disk or quota is the user's to fix: an error naming where it was written."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise _cannot_write(flag, where, e) from None


def _cannot_write(flag: str, where: str | Path, error: OSError) -> NixlayerError:
    return NixlayerError(f"{flag} {show_path(where)}: cannot write there: {error.strerror}")


# Waits for its standard input to close, which happens when the process that holds
# the other end exits, however it ends, then removes the folder it was given.
_REMOVE_WHEN_ORPHANED = (
    "import shutil, sys; sys.stdin.buffer.read(); shutil.rmtree(sys.argv[1], ignore_errors=True)"
)


@contextmanager
def scratch_folder(parent: str | Path) -> Iterator[Path]:
    """A new folder for work files in ``parent``, removed at the end, and even if this
    process is killed (``kill -9`` included): a small watcher process, in a session of
    its own so that signals to this one's group do not reach it, removes it then.
    A folder cannot be nameless like a file (see ``_anonymous_file``). Inside a Nix
    build there is no watcher: the folder is in the build's own temporary folder."""
    folder = tempfile.mkdtemp(dir=parent, prefix=".nixlayer-")
    watcher = None if in_nix_build() else _watch(folder)  # Nix removes its $TMPDIR
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if watcher is not None:
            watcher.communicate()  # closes its input: it finds nothing left, and ends


def _watch(folder: str) -> subprocess.Popen[bytes] | None:
    """The watcher of ``scratch_folder``; None if it cannot start (best effort)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _REMOVE_WHEN_ORPHANED, folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None


def in_nix_build() -> bool:
    """Inside a Nix builder, which may write only ``$out`` and ``$TMPDIR``, and whose
    outputs Nix itself discards when the build fails."""
    return "NIX_BUILD_TOP" in os.environ


@contextmanager
def atomic_output(destination: str, flag: str = "-o", clobber: bool = True) -> Iterator[BinaryIO]:
    """A buffered file that appears at ``destination`` only once it is complete;
    ``-`` streams to stdout instead. Inside a Nix build the file is written in place:
    a temporary name beside ``$out`` would be a write into the store. Unless
    ``clobber``, an existing file is refused, before a byte is written and again, atomically,
    when the new one takes its name."""
    if not clobber and destination != STDOUT and os.path.lexists(destination):
        raise refuse_existing(destination, flag)
    if destination == STDOUT or in_nix_build() or _is_device_or_pipe(destination):
        with _no_room(flag, destination), _plain_output(destination) as out:
            yield out
        return
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise NixlayerError(f"{flag} {show_path(destination)}: {missing_folder(folder)}")
    if os.path.isdir(destination):
        raise NixlayerError(f"{flag} {show_path(destination)}: is a folder, not a file")
    with pending_file(folder, flag) as pending:
        yield pending.file
        try:
            pending.publish(destination, clobber)
        except FileExistsError:
            raise refuse_existing(destination, flag) from None


def _is_device_or_pipe(path: str) -> bool:
    """``-o /dev/null``, ``-o /dev/stdout`` or a named pipe: written into, since a file
    renamed over it would replace it (for everyone, when it is /dev/null)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def refuse_existing(destination: str | Path, flag: str = "-o") -> NixlayerError:
    return NixlayerError(
        f"{flag} {show_path(destination)}: exists already, and --no-clobber was given"
    )


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
        _widen_pipe(out)  # a named pipe given as -o
        yield out
