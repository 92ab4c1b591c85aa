"""Writing outputs so that no half-written file ever sits at the destination.

A file is written beside the one ``-o`` names, or the one a symlink there leads to,
and renamed over it once complete; a stream (``-``, ``/dev/stdout``, a device, a pipe,
a socket) is written through, and a derivation's own output in place (see
``Destination``). What a run adds goes again on every path out, and after ``kill -9``
too (``removed_if_killed``).

Errors start with the destination as given; which option gave it, the caller says
(``errors.carried_by("output")``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from nixlayer.closure import DEFAULT_STORE_DIR
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
def pending_file(folder: str | Path) -> Iterator[PendingFile]:
    """A ``PendingFile`` that is removed on any error, Ctrl-C or SIGTERM (which the CLI
    turns into an exception), or if the block ends without publishing it."""
    try:
        pending = PendingFile(folder)
    except OSError as e:
        raise _cannot_write(folder, e) from None
    try:
        with _no_room(folder):
            yield pending
    finally:
        pending.discard()


@contextmanager
def _no_room(where: str | Path) -> Iterator[None]:
    """A full disk or quota is the user's to fix: an error naming where it was written."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise _cannot_write(where, e) from None


def _cannot_write(where: str | Path, error: OSError) -> NixlayerError:
    return NixlayerError(f"{show_path(where)}: cannot write there: {error.strerror}")


# Waits for its standard input to close, which happens when the process that holds
# the other end exits, however it ends; then, unless the path argv[1] exists (the mark
# of a write that completed), removes the paths after it.
_REMOVE_WHEN_ORPHANED = """
import contextlib, os, shutil, sys
sys.stdin.buffer.read()
if not os.path.lexists(sys.argv[1]):
    for path in sys.argv[2:]:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
"""


@contextmanager
def removed_if_killed(paths: list[Path], unless: Path | None = None) -> Iterator[None]:
    """Have ``paths`` removed when this process ends before the block does, even by
    ``kill -9``, unless ``unless`` exists then: a small watcher process, in a session
    of its own so that signals to this one's group do not reach it, removes them. A
    folder cannot be nameless like a file (see ``_anonymous_file``). The block itself
    must remove them on the paths out that run code; the watcher then finds nothing."""
    watcher = _watch(paths, unless) if paths else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.communicate()  # closes its input: it looks, and ends


@contextmanager
def scratch_folder(parent: str | Path) -> Iterator[Path]:
    """A new folder for work files in ``parent``, removed at the end, and even if this
    process is killed (``kill -9`` included; see ``removed_if_killed``). Inside a Nix
    build too: a shell (nix-shell) sets the same variables as a builder, and its
    temporary folder is not removed for it."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=".nixlayer-"))
    with removed_if_killed([folder]):
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _watch(paths: list[Path], unless: Path | None) -> subprocess.Popen[bytes] | None:
    """The watcher of ``removed_if_killed``; None if it cannot start (best effort).
    Its output goes to a pipe, not /dev/null: it opens nothing for writing, as a Nix
    build is held to ($out and $TMPDIR only)."""
    mark = str(unless) if unless is not None else ""  # "" never exists
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _REMOVE_WHEN_ORPHANED, mark, *map(str, paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError:
        return None


_MAX_LINKS = 40  # as the kernel follows


@dataclass(frozen=True)
class Destination:
    """What ``-o NAME`` leads to once its symlinks are followed: ``path``, the name that
    receives the image (a symlink given is never replaced itself, the file it leads to
    is), and what is there now (``mode``, None for nothing). ``descriptor`` is set for
    one of this process's own descriptors reached through ``/proc/self/fd/N``, as
    ``/dev/stdout`` leads: reopening that name would start a file the shell opened
    with ``>>`` over, and cannot open a socket at all."""

    path: str
    mode: int | None = None
    descriptor: int | None = None

    @property
    def exists(self) -> bool:
        return self.mode is not None

    @property
    def is_folder(self) -> bool:
        return self.mode is not None and stat.S_ISDIR(self.mode)

    @property
    def stream(self) -> bool:
        """Written through, never replaced: a descriptor, device, pipe or socket. A
        file renamed over /dev/null would replace it for everyone."""
        if self.descriptor is not None:
            return True
        kinds = (stat.S_ISCHR, stat.S_ISBLK, stat.S_ISFIFO, stat.S_ISSOCK)
        return self.mode is not None and any(kind(self.mode) for kind in kinds)

    @property
    def holds_data(self) -> bool:
        """What ``--no-clobber`` protects: a file, or a block device (a disk); a pipe,
        a terminal or a descriptor has nothing to lose."""
        return self.mode is not None and (stat.S_ISREG(self.mode) or stat.S_ISBLK(self.mode))

    @property
    def derivation_output(self) -> bool:
        """A direct child of the store directory: a derivation's own ``$out``, written
        in place, since a temporary name beside it would be a write into the store
        (and Nix discards the outputs of a failed build). Decided on the name, not on
        the environment: nix-shell sets the builder's variables too."""
        store = os.environ.get("NIX_STORE") or DEFAULT_STORE_DIR
        return os.path.dirname(self.path) == os.path.realpath(store)


def destination_of(name: str) -> Destination:
    """Follow ``name``'s symlinks one at a time, as the kernel does, but stop at a link
    into this process's ``/proc/<pid>/fd``, whose target is no path to write to."""
    path = name
    for _ in range(_MAX_LINKS):
        head, last = os.path.split(path)
        if last in ("", ".", ".."):  # a folder named by its own path, or no path at all
            found = _found(path, name, follow=True)  # a file's "file/." is none
            return Destination(os.path.realpath(path), found.mode)
        folder = os.path.realpath(head or ".")
        path = os.path.join(folder, last)
        process = re.fullmatch(r"/proc/(\d+)(/task/\d+)?/fd", folder)
        if last.isdigit() and process and process[1] == str(os.getpid()):
            return Destination(path, descriptor=int(last))
        if last.isdigit() and process:
            found = _found(path, name, follow=True)
            if found.mode is None or not stat.S_ISREG(found.mode):
                return found  # a pipe, device or socket: opened through the link
            path = _named_file(path, name)
            continue
        found = _found(path, name)
        if found.mode is None or not stat.S_ISLNK(found.mode):
            return found
        path = os.path.join(folder, os.readlink(path))
    raise NixlayerError(f"{show_path(name)}: too many levels of symbolic links")


def _named_file(descriptor: str, name: str) -> str:
    """The file another process's descriptor (``/proc/PID/fd/N``) is open on, by its
    name. Its link's text is no path to write to when the file was deleted or moved
    (``… (deleted)``): a new file of that name would be a file nobody asked for."""
    target = os.readlink(descriptor)
    try:
        if os.path.samestat(os.stat(descriptor), os.stat(target)):
            return target
    except OSError:
        pass
    raise NixlayerError(
        f"{show_path(name)}: another process's descriptor, open on a file that was deleted or moved"
    )


def _found(path: str, name: str, follow: bool = False) -> Destination:
    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise NixlayerError(f"{show_path(name)}: {missing_folder(os.path.dirname(path))}") from None
    except OSError as error:
        raise NixlayerError(f"{show_path(name)}: {error.strerror}") from None
    return Destination(path, mode)


def scratch_parent(destination: str) -> str:
    """Where work files for ``destination`` go: beside the file it names, on the disk
    that must hold the image anyway; in the temporary folder for a stream, or for a
    derivation's output (``$TMPDIR`` in a Nix build), beside which nothing may go."""
    if destination == STDOUT:
        return tempfile.gettempdir()
    target = destination_of(destination)
    beside = not target.stream and not target.derivation_output
    return os.path.dirname(target.path) if beside else tempfile.gettempdir()


@contextmanager
def atomic_output(destination: str, clobber: bool = True) -> Iterator[BinaryIO]:
    """A buffered file that appears at ``destination`` only once it is complete,
    renamed over the file it names, or the file a symlink there leads to (the link
    stays). ``-``, a device, a pipe, a socket or a descriptor (``/dev/stdout``) are
    written through; a derivation's output is written in place (see
    ``Destination``). Unless ``clobber``, an existing file is refused, before a byte
    is written and again, atomically, when the new one takes its name."""
    if destination == STDOUT:
        with _no_room(destination), _stdout() as out:
            yield out
        return
    target = destination_of(destination)
    if target.stream:
        if target.holds_data and not clobber:
            raise refuse_existing(destination)
        with _no_room(destination), _written_through(target, destination) as out:
            yield out
        return
    if target.is_folder or destination.endswith(os.sep):
        raise NixlayerError(f"{show_path(destination)}: is a folder, not a file")
    if target.exists and not clobber:
        raise refuse_existing(destination)
    folder = os.path.dirname(target.path)
    if not os.path.isdir(folder):
        raise NixlayerError(f"{show_path(destination)}: {missing_folder(folder)}")
    if target.derivation_output:
        with _no_room(destination), open(target.path, "wb", buffering=_BUFFER) as out:
            yield out
        return
    with pending_file(folder) as pending:
        yield pending.file
        try:
            pending.publish(target.path, clobber)
        except FileExistsError:
            raise refuse_existing(destination) from None


def refuse_existing(destination: str | Path) -> NixlayerError:
    return NixlayerError(f"{show_path(destination)}: exists already, and is not to be replaced")


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
def _stdout() -> Iterator[BinaryIO]:
    _widen_pipe(sys.stdout.buffer)
    yield sys.stdout.buffer
    sys.stdout.buffer.flush()


@contextmanager
def _written_through(target: Destination, name: str) -> Iterator[BinaryIO]:
    """The descriptor, device, pipe or socket ``target`` is, written into as it is:
    opened without creating or truncating anything, a socket connected to."""
    if target.mode is not None and stat.S_ISSOCK(target.mode):
        with _connected(target.path, name) as out:
            yield out
        return
    try:
        if target.descriptor is not None:
            fd = _writable_copy(target.descriptor)
        else:
            fd = os.open(target.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise _cannot_write(name, error) from None
    with open(fd, "wb", buffering=_BUFFER) as out:
        _widen_pipe(out)
        yield out


def _writable_copy(descriptor: int) -> int:
    """A copy of one of our descriptors, closed on its own, if it is open for writing."""
    if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise OSError(errno.EBADF, "it is open for reading only")
    return fcntl.fcntl(descriptor, fcntl.F_DUPFD_CLOEXEC, 3)


@contextmanager
def _connected(path: str, name: str) -> Iterator[BinaryIO]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError as error:
            raise NixlayerError(f"{show_path(name)}: cannot connect: {error.strerror}") from None
        with connection.makefile("wb", buffering=_BUFFER) as out:
            yield cast(BinaryIO, out)
