"""Files inside an image on disk, wherever they sit: in a folder (an OCI layout) or
as members of one tar (a docker-archive or oci-archive), read without unpacking."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from nixlayer.blobs import READ_ERRORS, Opener, climbs_out, decompressing, reopenable
from nixlayer.compression import magic_compression
from nixlayer.errors import NixlayerError, reason, show_path
from nixlayer.jsonfile import METADATA_LIMIT, open_regular, parse_json, read_bounded

_CHUNK = 1 << 20


class _Slice(io.RawIOBase):
    """``size`` bytes of a file from ``offset``: a tar member, opened on its own."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed with the slice)
        self._file.seek(offset)
        self._remaining = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self._file.readinto(memoryview(buffer)[: min(len(buffer), self._remaining)])
        self._remaining -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class ImageFiles:
    """Name → (size, opener) of every regular file of the image; ``source`` names the
    image in messages, as ``show_path`` shows it."""

    source: str
    files: dict[str, tuple[int, Opener]]

    def has(self, name: str) -> bool:
        return name in self.files

    def size(self, name: str) -> int:
        return self._get(name)[0]

    def opener(self, name: str) -> Opener:
        return self._get(name)[1]

    def read(self, name: str) -> bytes:
        """A small file (a manifest, a config) whole, within ``METADATA_LIMIT``."""
        with self.opener(name)() as file:
            return read_bounded(file, f"{self.source}: {name}", METADATA_LIMIT)

    def read_json(self, name: str) -> Any:
        return parse_json(self.read(name), f"{self.source}: {name}")

    def read_json_and_digest(self, name: str) -> tuple[Any, str]:
        """A small JSON file parsed, and the sha256 digest of its bytes (a config's is
        the image's ID, a manifest's what a registry names the image by)."""
        data = self.read(name)
        return parse_json(
            data, f"{self.source}: {name}"
        ), f"sha256:{hashlib.sha256(data).hexdigest()}"

    def _get(self, name: str) -> tuple[int, Opener]:
        if name not in self.files:
            raise NixlayerError(f"{self.source}: {name} is missing")
        return self.files[name]


def json_object(value: Any, where: str) -> dict[str, Any]:
    """``value``, which an image's metadata says is a JSON object; an error naming
    ``where`` if it is not."""
    if not isinstance(value, dict):
        raise NixlayerError(f"{where} is not a JSON object")
    return value


def read_config(files: ImageFiles, name: str) -> tuple[dict[str, Any], str, Any]:
    """An image's config, its digest, and what its rootfs gives as diff_ids (for the
    caller to check against its layers)."""
    config, digest = files.read_json_and_digest(name)
    config = json_object(config, f"{files.source}: config")
    rootfs = json_object(config.get("rootfs"), f"{files.source}: the config's rootfs")
    return config, digest, rootfs.get("diff_ids")


def folder_files(path: Path) -> ImageFiles:
    """The files of a layout folder, each opened only if it is a regular file: a named
    pipe or a link to a device where a blob should be is an error, not a wait for ever.
    A link that leads nowhere is a missing file.

    Only the names a layout defines are listed (its top files, ``blobs/ALGORITHM/*``),
    through symlinks as consumers (skopeo, umoci) open them: a ``blobs`` folder that
    is a link to another disk is still the layout's. No deeper, so that no link loop
    is walked for ever."""
    source = show_path(path)
    files: dict[str, tuple[int, Opener]] = {}
    for folder, subfolders, names in os.walk(path, followlinks=True):
        depth = len(Path(folder).relative_to(path).parts)
        subfolders[:] = [d for d in subfolders if depth == 1 or (depth == 0 and d == "blobs")]
        for name in names:
            full = Path(folder, name)
            relative = full.relative_to(path).as_posix()
            with contextlib.suppress(FileNotFoundError):
                opener = partial(open_regular, full, f"{source}: {show_path(relative)}")
                files[relative] = (full.stat().st_size, opener)
    return ImageFiles(source, files)


def tar_files(path: Path, source: str | None = None, keep: object = None) -> ImageFiles:
    """The regular members of a tar, each readable in place from its offset;
    ``source`` names the archive in messages (default: ``path``). Each opener holds
    ``keep``, the open file that ``path`` may name (``reopenable``), so that the file
    stays open, and its descriptor's number taken, while an opener may be called.

    A member name that is absolute or climbs with ``..`` is refused, whatever its type:
    ``docker load`` and skopeo would each read it their own way, or outside the image."""
    source = show_path(path if source is None else source)
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError) as error:
        raise NixlayerError(f"{source}: not a readable tar archive: {reason(error)}") from None
    for member in members:
        if climbs_out(member.name):
            raise NixlayerError(
                f"{source}: holds the member {show_path(member.name)}, "
                "a name that is absolute or climbs out with '..'"
            )
    files: dict[str, tuple[int, Opener]] = {
        os.path.normpath(m.name): (
            m.size,
            partial(_open_slice, path, m.offset_data, m.size, keep),
        )
        for m in members
        if m.isreg()
    }
    return ImageFiles(source, files)


def _open_slice(path: Path, offset: int, size: int, keep: object) -> IO[bytes]:
    """``keep`` is only held, by the ``partial`` that calls this (see ``tar_files``)."""
    return io.BufferedReader(_Slice(path, offset, size))


def compression_of(opener: Opener) -> str | None:
    """``gzip`` or ``zstd`` if the file starts with that format's magic, else None."""
    with opener() as file:
        return magic_compression(file.read(4))


def holds_tar(path: Path) -> bool:
    """Whether the file at ``path`` starts with a tar header, once decompressed if it
    was compressed as a whole; only that first header is read."""
    try:
        with path.open("rb") as file:
            compression = magic_compression(file.read(4))
            file.seek(0)
            stream = decompressing(file, compression)
            header = b""
            while len(header) < tarfile.BLOCKSIZE:
                chunk = stream.read(tarfile.BLOCKSIZE - len(header))
                if not chunk:
                    break
                header += chunk
    except READ_ERRORS:
        return False
    try:
        tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def decompressed_copy(path: Path, compression: str) -> IO[bytes]:
    """An archive compressed as a whole, decompressed into an anonymous temporary file
    (its members are read in place by offset): it vanishes when closed, or with the
    process. Raises one of ``READ_ERRORS`` if the stream is corrupt.

    Unbounded on purpose: a docker-archive holds its layers uncompressed, so tens of
    GiB are an ordinary image, and no bound would tell a bomb from one. What it costs
    is room in $TMPDIR while it runs; where that runs out, the message says so (not
    "corrupt", which would blame the image)."""
    copy = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    try:
        with path.open("rb") as source:
            stream = decompressing(source, compression)
            while chunk := stream.read(_CHUNK):
                _write_copy(copy, chunk, path)
        _write_copy(copy, b"", path)
    except BaseException:
        copy.close()
        raise
    return copy


def _write_copy(copy: IO[bytes], data: bytes, path: Path) -> None:
    """``data`` into the decompressed copy (all of it so far, with none); an error
    writing is the temporary folder's, not the image's."""
    try:
        copy.write(data)
        copy.flush()
    except OSError as error:
        raise NixlayerError(
            f"{show_path(path)}: cannot decompress it into {show_path(tempfile.gettempdir())} "
            f"(TMPDIR): {reason(error)}"
        ) from None


def archive_files(path: Path) -> ImageFiles:
    """The files of a tar image, decompressed first if it was compressed as a whole
    (``from-closure --format docker-archive --compress gzip|zstd`` writes such)."""
    compression = compression_of(partial(path.open, "rb"))
    if compression is None:
        return tar_files(path)
    try:
        copy = decompressed_copy(path, compression)
    except READ_ERRORS as error:
        raise NixlayerError(
            f"{show_path(path)}: the {compression} stream is corrupt: {reason(error)}"
        ) from None
    try:
        return tar_files(reopenable(copy), str(path), keep=copy)
    except BaseException:
        copy.close()
        raise
