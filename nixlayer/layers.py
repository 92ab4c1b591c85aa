"""The layers of an image, whatever they are made from, behind one small interface.

Store layers (a plan's groups of paths) and the customisation layer are laid out
from metadata and streamed by the tar writer; a base image's layers already exist
as blobs and are copied. A layer is prepared only when it is about to be written,
so that one layer's metadata at a time sits in memory.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from nixlayer import version
from nixlayer.blobs import (
    READ_ERRORS,
    BlobRead,
    LayerNames,
    decompressing,
    read_layer,
    reopenable,
)
from nixlayer.compression import media_type_compression
from nixlayer.errors import NixlayerError, reason, show_path
from nixlayer.store import Entry, store_layer_entries
from nixlayer.tarwriter import Emit, LayerLayout, lay_out, write_layer

CREATED_BY = "nixlayer"  # and the version, "nixlayer 0.1.0"; alone in older images
STORE_PATHS_PREFIX = "store paths: "
_CHUNK = 1 << 20


# Told of each layer before its bytes: its ``size_hint``, and how many bytes ``on_bytes``
# will hear of for it, its tar (known once prepared); 0 when it is in place already (a
# cache or layout hit). A progress bar's total, the hints summed, is corrected by the
# difference, so that bar and total count the same bytes and meet at the end.
LayerSized = Callable[[int, int], None]


class PreparedLayer(Protocol):
    """A layer ready to stream: its uncompressed size is known before its bytes."""

    @property
    def size(self) -> int: ...

    def stream(self, write: Emit, on_bytes: Callable[[int], None]) -> str:
        """Write the uncompressed tar and return its sha256 (hex)."""
        ...


class Layer(Protocol):
    @property
    def history(self) -> dict[str, Any]: ...

    @property
    def size_hint(self) -> int:
        """About how many bytes the layer holds, known before it is prepared: layers
        made in parallel start with the largest, so that no large one runs alone at
        the end while a core idles."""
        ...

    def prepare(self, mtime: int) -> PreparedLayer: ...

    def identity(self, mtime: int) -> dict[str, Any] | None:
        """What the layer's bytes are a pure function of, for the cache; None when
        they depend on files that may change (the customisation layer)."""
        ...


@dataclass(frozen=True)
class _Laid:
    layout: LayerLayout

    @property
    def size(self) -> int:
        return self.layout.size

    def stream(self, write: Emit, on_bytes: Callable[[int], None]) -> str:
        return write_layer(self.layout, write, on_bytes)


@dataclass(frozen=True)
class StoreLayer:
    """A group of store paths, read from ``store_root``; ``nar_size`` is theirs, from
    the closure (0: unknown)."""

    paths: tuple[str, ...]
    store_root: bytes
    store_dir: str
    nar_size: int = 0

    @property
    def size_hint(self) -> int:
        return self.nar_size

    @property
    def history(self) -> dict[str, Any]:
        return {"created_by": created_by(), "comment": STORE_PATHS_PREFIX + " ".join(self.paths)}

    def prepare(self, mtime: int) -> PreparedLayer:
        entries = store_layer_entries(self.store_root, self.store_dir, self.paths)
        return _Laid(lay_out(entries, mtime))

    def identity(self, mtime: int) -> dict[str, Any] | None:
        return {"store_dir": self.store_dir, "paths": sorted(self.paths), "mtime": mtime}


@dataclass(frozen=True)
class EntriesLayer:
    """Entries assembled by nixlayer itself (the customisation layer)."""

    entries: tuple[Entry, ...]
    comment: str

    @property
    def size_hint(self) -> int:
        return sum(entry.size for entry in self.entries)

    @property
    def history(self) -> dict[str, Any]:
        return {"created_by": created_by(), "comment": self.comment}

    def prepare(self, mtime: int) -> PreparedLayer:
        return _Laid(lay_out(self.entries, mtime))

    def identity(self, mtime: int) -> dict[str, Any] | None:
        return None


@dataclass(frozen=True)
class BlobLayer:
    """A layer that exists already, e.g. in a base image: ``open`` gives its blob.

    An OCI image takes a compressed blob as it is stored (``copy_stored``), so that
    its digest stays the base's. Elsewhere a compressed blob is decompressed once
    into a temporary file (``prepare``), since an archive needs the uncompressed size
    before the bytes. Either way the tar is read through once, as ``verify`` reads
    one: its diff_id is checked, so that a corrupt base image stops the build, and so
    does a member name that is absolute, climbs with ``..`` or comes twice, which
    would reach whoever unpacks the new image, and any member ``verify`` would reject
    in a layer: a whiteout only another tool may write (nixlayer's never hold one).
    """

    diff_id: str
    digest: str | None
    media_type: str
    open: Callable[[], IO[bytes]]
    blob_size: int
    history: dict[str, Any]
    source: str

    @property
    def size_hint(self) -> int:
        return self.blob_size

    @property
    def compression(self) -> str | None:
        return media_type_compression(self.media_type)

    def prepare(self, mtime: int) -> PreparedLayer:
        if self.compression is None:
            self._check_tar(self.open)
            return _Blob(self, self.open, self.blob_size)
        spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed once streamed)
        _copy_decompressed(self, spool)
        size = spool.tell()
        spool.flush()
        self._check_tar(lambda: reopenable(spool).open("rb"))

        def reopen() -> IO[bytes]:
            spool.seek(0)
            return spool

        return _Blob(self, reopen, size)

    def copy_stored(self, out: IO[bytes], on_bytes: Callable[[int], None]) -> str:
        """The blob as it is stored into ``out``, read once and checked as ``prepare``
        checks the tar, and against the blob's digest where the image names it;
        returns that digest. ``on_bytes`` hears of each block copied."""

        def opener() -> IO[bytes]:
            return _Copied(self.open(), out, on_bytes)

        try:
            read = read_layer(opener, self.compression, f"layer {self.diff_id}")
        except _CopyFailed as failed:  # writing, not reading: a full disk, say
            raise failed.error from None
        if self.digest is not None and read.digest != self.digest:
            raise NixlayerError(f"{self.source}: layer {self.digest} does not match its digest")
        self._check_read(read, read.diff_id)
        return read.digest

    def _check_tar(self, opener: Callable[[], IO[bytes]]) -> None:
        """The uncompressed tar, read through once: its diff_id and its members."""
        read = read_layer(opener, None, f"layer {self.diff_id}")
        self._check_read(read, read.digest)

    def _check_read(self, read: BlobRead, diff_id: str | None) -> None:
        if diff_id is not None:  # first: is it the layer at all
            self.check(diff_id.removeprefix("sha256:"))
        problems = read.problems + unexpected_whiteouts(
            self.history, read.names, f"layer {self.diff_id}"
        )
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise NixlayerError(f"{self.source}: {problems[0]}{more}")

    def identity(self, mtime: int) -> dict[str, Any] | None:
        return {"diff_id": self.diff_id}

    def check(self, digest: str) -> None:
        if f"sha256:{digest}" != self.diff_id:
            raise NixlayerError(f"{self.source}: layer {self.diff_id} does not match its diff_id")


class _CopyFailed(Exception):
    """A write of ``_Copied`` failed; not one of the read errors ``read_layer`` reports
    as a damaged blob."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _Copied(io.RawIOBase):
    """A reader that writes what is read from it to ``out`` as well, and says how much."""

    def __init__(self, source: IO[bytes], out: IO[bytes], on_bytes: Callable[[int], None]):
        self._source = source
        self._out = out
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        try:
            self._out.write(data)
        except OSError as error:
            raise _CopyFailed(error) from error
        self._on_bytes(len(data))
        return len(data)

    def close(self) -> None:
        self._source.close()
        super().close()


def _copy_decompressed(layer: BlobLayer, out: IO[bytes]) -> None:
    """The layer's tar into ``out``; its diff_id is checked when it is read back."""
    try:
        with layer.open() as blob:
            shutil.copyfileobj(decompressing(blob, layer.compression), out, _CHUNK)
    except READ_ERRORS as error:
        raise NixlayerError(
            f"{layer.source}: layer {layer.diff_id} is corrupt: {reason(error)}"
        ) from None


@dataclass(frozen=True)
class _Blob:
    layer: BlobLayer
    open: Callable[[], IO[bytes]]
    size: int

    def stream(self, write: Emit, on_bytes: Callable[[int], None]) -> str:
        digest = hashlib.sha256()
        remaining = self.size
        with self.open() as blob:
            while remaining and (chunk := blob.read(min(_CHUNK, remaining))):
                digest.update(chunk)
                write(chunk)
                on_bytes(len(chunk))
                remaining -= len(chunk)
        if remaining:
            raise NixlayerError(f"{self.layer.source}: layer {self.layer.diff_id} is truncated")
        self.layer.check(digest.hexdigest())
        return digest.hexdigest()


def created_by() -> str:
    """A history entry's ``created_by``: nixlayer and its version, for bug reports (a
    new version may write other bytes)."""
    return f"{CREATED_BY} {version()}"


def written_by_nixlayer(history: dict[str, Any]) -> bool:
    """Whether nixlayer wrote the layer of this history entry, whatever its version."""
    by = history.get("created_by")
    return isinstance(by, str) and (by == CREATED_BY or by.startswith(f"{CREATED_BY} "))


def layer_store_paths(history: dict[str, Any]) -> list[str]:
    """The store paths a layer holds, if nixlayer wrote it; empty otherwise."""
    comment = history.get("comment")
    ours = written_by_nixlayer(history) and isinstance(comment, str)
    if not ours or not comment.startswith(STORE_PATHS_PREFIX):
        return []
    return comment.removeprefix(STORE_PATHS_PREFIX).split()


def unexpected_whiteouts(history: dict[str, Any], names: LayerNames, label: str) -> list[str]:
    """A whiteout in a layer nixlayer wrote, which never holds one (another tool's
    layer may: that is how it deletes a file of a layer below)."""
    if not written_by_nixlayer(history):
        return []
    return [
        f"{label}: nixlayer wrote it, yet it holds the whiteout {show_path(name)}"
        for name in names.whiteouts
    ]
