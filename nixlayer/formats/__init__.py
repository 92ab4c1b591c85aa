"""Image formats: each writes an ``ImageSpec`` and reads back a ``SourceImage``."""

from __future__ import annotations

from pathlib import Path

from nixlayer.errors import NixlayerError
from nixlayer.formats.docker_archive import MANIFEST, read_docker_archive
from nixlayer.formats.files import folder_files, tar_files
from nixlayer.formats.oci import INDEX, LAYOUT, read_oci
from nixlayer.image import SourceImage


def _path_and_ref(value: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:REF`` (an image in an OCI layout), whichever exists."""
    path = Path(value)
    if not path.exists() and ":" in value:
        head, _, ref = value.rpartition(":")
        return Path(head), ref
    return path, None


def read_image(value: str, flag: str) -> SourceImage:
    """A docker-archive, an OCI layout folder or an oci-archive, told apart by content."""
    path, ref = _path_and_ref(value)
    if path.is_dir():
        files = folder_files(path)
        if not files.has(LAYOUT):
            raise NixlayerError(f"{flag} {value}: a folder, but not an OCI image layout")
        return read_oci(files, ref)
    if not path.is_file():
        raise NixlayerError(f"{flag} {value}: no such image file or folder")
    files = tar_files(path)
    if files.has(INDEX) and files.has(LAYOUT):
        return read_oci(files, ref)
    if files.has(MANIFEST):
        return read_docker_archive(files)
    raise NixlayerError(f"{flag} {value}: not a docker-archive or OCI image")
