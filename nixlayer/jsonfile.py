"""JSON documents read whole: image metadata (manifests, configs, indexes, the layout
file), plans, ``--config``, ``--group``, settings, the JSON of ``--cmd``, cache entries.

Every one goes through ``parse_json``, and every one that is a file on disk through
``open_regular`` and ``read_bounded`` (``load_json`` does all three), so that no input
can end in anything but one ``NixlayerError`` naming it: not a ``RecursionError`` from
JSON nested 100,000 levels deep, not a read that never ends (a named pipe nobody writes
to) or that fills the memory (a link to ``/dev/zero``). The closure is read otherwise:
streamed, by ``jsonstream``, as it may be large and may come from a pipe.
"""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any

from nixlayer.errors import NixlayerError, kind_of, reason

# Image metadata is small: registries accept manifests up to 4 MiB, and configs, even
# with a history entry listing every store path of a layer, stay well under that.
METADATA_LIMIT = 64 << 20
# A plan and a structured-attrs file grow with the closure: about 100 bytes a store
# path, so this holds a plan of some 2.5 million paths.
CLOSURE_SIZED_LIMIT = 256 << 20
# Real metadata nests a few levels. Python's own JSON reader and writer recurse once a
# level, within a limit of 1000 frames shared with whatever calls them: a document
# within this depth can be read, written and printed from anywhere in nixlayer.
MAX_DEPTH = 500

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(path: str | os.PathLike[str], where: str) -> IO[bytes]:
    """``path`` opened for reading, which must be a regular file (after symbolic links).

    A named pipe would block the open or the read for ever, and a device (``/dev/zero``)
    never ends: refused before they are opened, as opening some devices does something.
    The open itself does not wait (``O_NONBLOCK``), and what was opened is checked
    again, in case the name changed in between.
    """
    try:
        _check_regular(os.stat(path).st_mode, where)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise NixlayerError(f"{where}: cannot read: {reason(error)}") from None
    try:
        _check_regular(os.fstat(fd).st_mode, where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(mode: int, where: str) -> None:
    if not stat.S_ISREG(mode):
        raise NixlayerError(f"{where}: {kind_of(mode)}, not a regular file")


def read_bounded(file: IO[bytes], where: str, limit: int) -> bytes:
    """All of ``file``, which must not hold more than ``limit`` bytes (reading stops
    there, even if the file grows while it is read)."""
    try:
        data = file.read(limit + 1)
    except OSError as error:
        raise NixlayerError(f"{where}: cannot read: {reason(error)}") from None
    if len(data) > limit:
        raise NixlayerError(f"{where}: too large (over {limit >> 20} MiB)")
    return data


def load_json(path: str | os.PathLike[str], where: str, limit: int = METADATA_LIMIT) -> Any:
    """The JSON document in the regular file ``path``; ``where`` names it in errors."""
    with open_regular(path, where) as file:
        return parse_json(read_bounded(file, where, limit), where)


def parse_json(data: bytes | str, where: str) -> Any:
    """Strict JSON (UTF-8, no ``NaN`` or ``Infinity``, which no other reader accepts)
    nested at most ``MAX_DEPTH`` levels; every problem an error naming ``where``."""

    def no_constant(name: str) -> None:
        raise NixlayerError(f"{where}: not valid JSON: {name} is not a JSON number")

    try:
        value = json.loads(
            data.decode() if isinstance(data, bytes) else data, parse_constant=no_constant
        )
    except UnicodeDecodeError as error:
        raise NixlayerError(
            f"{where}: not valid UTF-8 (byte 0x{error.object[error.start]:02x} "
            f"at offset {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise NixlayerError(
            f"{where}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError:  # an integer beyond Python's digit limit
        raise NixlayerError(f"{where}: not valid JSON: a number has too many digits") from None
    if not _within_depth(value):
        raise _too_deep(where)
    return value


def _too_deep(where: str) -> NixlayerError:
    return NixlayerError(f"{where}: not valid JSON: nested too deeply (over {MAX_DEPTH} levels)")


def _within_depth(value: Any) -> bool:
    """Whether no list or object in ``value`` lies more than ``MAX_DEPTH`` levels deep,
    found without recursion."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, (list, dict))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (list, dict))
        ]
        if not level:
            return True
    return False


def json_strings(value: Any) -> bool:
    """Whether ``value`` is a JSON list of strings."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
