"""The ``oci`` format: an OCI image layout, a folder that may hold several images
(``PATH:REF`` names one), written in place and reused blob by blob on the next build.
What it shares with ``oci_archive`` (the blobs, the manifest, the index) is in
``oci``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nixlayer.errors import NixlayerError, show_path
from nixlayer.formats.files import ImageFiles
from nixlayer.formats.oci import (
    INDEX,
    LAYOUT,
    LayoutFolder,
    created_by_us,
    read_oci,
    remove,
    started_layout,
    verify_layout,
    verify_unnamed_blobs,
    write_oci,
)
from nixlayer.formats.writing import Writing
from nixlayer.image import ImageSpec, SourceImage, WrittenImage
from nixlayer.output import STDOUT, destination_of, refuse_existing, removed_if_killed

if TYPE_CHECKING:
    from nixlayer.verify import Checker

NAME = "oci"
FOLDER = True
NAMED_IMAGES = True
DEFAULT_OUTPUT = "image"
DEFAULT_COMPRESSION = "gzip"


def detect(files: ImageFiles) -> bool:
    """A folder with an ``oci-layout`` file."""
    return files.has(LAYOUT)


def read(files: ImageFiles, ref: str | None = None) -> SourceImage:
    return read_oci(files, ref)


def write(spec: ImageSpec, output: str, writing: Writing) -> WrittenImage:
    """The image into the layout folder ``output``, never a stream. Unless
    ``writing.clobber``, a folder that holds an image already is refused."""
    target = destination_of(output) if output != STDOUT else None
    if target is None or target.stream:
        raise NixlayerError(
            f"{show_path(output)}: the oci format writes a folder; use oci-archive to stream"
        )
    if not writing.clobber and os.path.lexists(os.path.join(target.path, INDEX)):
        raise refuse_existing(output)
    # A symlink stays: the folder it leads to gets the layout. Else, the name as given,
    # for messages.
    folder = Path(target.path if os.path.islink(output) else output)
    return write_folder(spec, folder, writing, output)


def write_folder(
    spec: ImageSpec, folder: Path, writing: Writing, destination: str | None = None
) -> WrittenImage:
    """Write the image into an OCI layout folder, reusing the blobs it already has;
    ``destination`` is how the caller named the folder (default: ``folder``).

    If it fails (an error, Ctrl-C, SIGTERM), what it added goes again: the blobs it
    added to a layout, or the layout it started (``created_by_us``), which a watcher
    removes even after ``kill -9``. Neither once its index.json is in place: the image
    is complete then. Nor a layout another run has completed meanwhile.
    """
    created = created_by_us(folder)
    layout = LayoutFolder(folder, writing.cache)
    with removed_if_killed(created, unless=folder / INDEX):
        try:
            with started_layout(folder):
                return write_oci(spec, layout, writing, NAME, destination or str(folder))
        except BaseException:
            if not layout.committed():
                remove(layout.added if (folder / INDEX).exists() else [*layout.added, *created])
            raise


def verify(files: ImageFiles, check: Checker) -> None:
    verify_layout(check)
    verify_unnamed_blobs(check)
