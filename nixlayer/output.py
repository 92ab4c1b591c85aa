"""Writing outputs so that no half-written file ever sits at the destination."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from nixlayer.errors import NixlayerError

STDOUT = "-"
_BUFFER = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(destination: str, flag: str = "-o") -> Iterator[BinaryIO]:
    """A buffered file that appears at ``destination`` only once it is complete.

    It is written under a temporary name in the destination's folder, so the
    final rename is atomic, and removed on any error, Ctrl-C or SIGTERM (which
    the CLI turns into an exception). ``-`` streams to stdout instead.
    """
    if destination == STDOUT:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise NixlayerError(f"{flag} {destination}: the folder {folder} does not exist")
    if os.path.isdir(destination):
        raise NixlayerError(f"{flag} {destination}: is a folder, not a file")
    try:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".nixlayer-", suffix=".tmp")
    except OSError as e:
        raise NixlayerError(f"{flag} {destination}: cannot write there: {e.strerror}") from None
    try:
        with open(fd, "wb", buffering=_BUFFER) as out:
            yield out
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise
