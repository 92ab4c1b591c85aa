"""Files inside an image on disk, wherever they sit: in a folder (an OCI layout) or
as members of one tar (a docker-archive or oci-archive), read without unpacking."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from nixlayer.errors import NixlayerError

Opener = Callable[[], IO[bytes]]


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
    """Name → (size, opener) of every regular file of the image."""

    source: str
    files: dict[str, tuple[int, Opener]]

    def has(self, name: str) -> bool:
        return name in self.files

    def size(self, name: str) -> int:
        return self._get(name)[0]

    def opener(self, name: str) -> Opener:
        return self._get(name)[1]

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        """A small file (a manifest, a config) whole."""
        size, opener = self._get(name)
        if size > limit:
            raise NixlayerError(f"{self.source}: {name} is too large ({size} bytes)")
        with opener() as file:
            return file.read()

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise NixlayerError(f"{self.source}: {name} is not valid JSON: {error}") from None

    def _get(self, name: str) -> tuple[int, Opener]:
        if name not in self.files:
            raise NixlayerError(f"{self.source}: {name} is missing")
        return self.files[name]


def folder_files(path: Path) -> ImageFiles:
    files: dict[str, tuple[int, Opener]] = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = Path(folder, name)
            relative = full.relative_to(path).as_posix()
            files[relative] = (full.stat().st_size, partial(full.open, "rb"))
    return ImageFiles(str(path), files)


def tar_files(path: Path) -> ImageFiles:
    """The regular members of a tar, each readable in place from its offset."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isreg()]
    except (tarfile.TarError, OSError) as error:
        raise NixlayerError(f"{path}: not a readable tar archive: {error}") from None
    files: dict[str, tuple[int, Opener]] = {
        os.path.normpath(m.name): (
            m.size,
            lambda m=m: io.BufferedReader(_Slice(path, m.offset_data, m.size)),
        )
        for m in members
    }
    return ImageFiles(str(path), files)
