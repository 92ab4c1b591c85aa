"""Image formats: each writes an ``ImageSpec`` and reads back a ``SourceImage``. Here,
which format a path holds (``PATH:REF`` for one image of several), and which writer
an ``-o`` gets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from nixlayer.cache import LayerCache
from nixlayer.compression import CompressedStream, Compression
from nixlayer.errors import NixlayerError, show_path, what_is
from nixlayer.formats.docker_archive import MANIFEST, read_docker_archive, write_docker_archive
from nixlayer.formats.files import archive_files, folder_files
from nixlayer.formats.oci import (
    INDEX,
    LAYOUT,
    read_oci,
    write_oci_archive,
    write_oci_layout,
)
from nixlayer.image import ImageSpec, SourceImage
from nixlayer.layers import LayerSized
from nixlayer.output import STDOUT, atomic_output, destination_of, refuse_existing, scratch_parent

FORMATS = ("docker-archive", "oci", "oci-archive")
DEFAULT_COMPRESSION = {"docker-archive": "none", "oci": "gzip", "oci-archive": "gzip"}


def path_and_ref(value: str) -> tuple[Path, str | None]:
    """``PATH``, or ``PATH:REF`` for one image of an OCI layout or oci-archive that
    holds several. A ref has colons of its own (``app:v1``), and so may a path: the
    first colon whose left part exists ends the path (as skopeo's ``oci:PATH:REF``
    splits at the first colon), unless the whole value exists."""
    if os.path.lexists(value):
        return Path(value), None
    for at, char in enumerate(value):
        if char == ":" and at and os.path.lexists(value[:at]):
            return Path(value[:at]), value[at + 1 :]
    return Path(value), None


def read_image(value: str) -> SourceImage:
    """A docker-archive (plain, or compressed as a whole), an OCI layout folder or an
    oci-archive, told apart by content; ``PATH:REF`` picks one image of a layout or
    oci-archive that holds several (see ``path_and_ref``)."""
    path, ref = path_and_ref(value)
    if path.is_dir():
        files = folder_files(path)
        if not files.has(LAYOUT):
            raise NixlayerError(f"{show_path(value)}: a folder, but not an OCI image layout")
        return read_oci(files, ref)
    if not path.is_file():
        raise NixlayerError(f"{show_path(value)}: {not_an_image(path)}")
    files = archive_files(path)
    if files.has(INDEX) and files.has(LAYOUT):
        return read_oci(files, ref)
    if files.has(MANIFEST):
        if ref is not None:
            raise NixlayerError(f"{value}: a docker-archive; :REF names an OCI image")
        return read_docker_archive(files)
    raise NixlayerError(f"{show_path(value)}: not a docker-archive or OCI image")


def not_an_image(path: Path) -> str:
    """Why ``path``, neither a file nor a folder, is no image: it does not exist, or it
    is a device, a pipe... (``inspect /dev/null`` is no "such image" all the same)."""
    kind = what_is(path)
    return "no such image file or folder" if kind == "nothing" else f"{kind}, not an image"


def default_output(image_format: str) -> str:
    return "image" if image_format == "oci" else "image.tar"


def write_image(
    spec: ImageSpec,
    image_format: str,
    output: str,
    compression: Compression,
    cache: LayerCache,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_layer: Callable[[], None] = lambda: None,
    on_size: LayerSized = lambda hint, size: None,
    clobber: bool = True,
) -> str:
    """Write the image in ``image_format`` to ``output``; returns a line for people.

    docker-archive keeps its layers uncompressed (docker computes diff_ids on them),
    so ``compression`` there applies to the whole stream. A stream as ``output`` (``-``,
    ``/dev/stdout``, a pipe) takes the two archive formats, never ``oci``. Unless
    ``clobber``, an existing file, or for ``oci`` a folder that holds an image
    already, is refused.
    """
    if image_format not in FORMATS:
        raise NixlayerError(f"--format {image_format}: expected one of {', '.join(FORMATS)}")
    if image_format == "oci":
        target = destination_of(output) if output != STDOUT else None
        if target is None or target.stream:
            raise NixlayerError(
                f"-o {show_path(output)}: --format oci writes a folder; use oci-archive to stream"
            )
        if not clobber and os.path.lexists(os.path.join(target.path, INDEX)):
            raise refuse_existing(output)
        # A symlink stays: the folder it leads to gets the layout. Else, the name as given,
        # for messages.
        folder = Path(target.path if os.path.islink(output) else output)
        written = write_oci_layout(spec, folder, compression, cache, on_bytes, on_layer, on_size)
        reused = sum(written.reused)
        shown = show_path(output)
        return f"{written.ref} to {shown} ({len(written.layers)} layers, {reused} reused)"
    with atomic_output(output, clobber=clobber) as out:
        if image_format == "oci-archive":
            scratch = Path(scratch_parent(output))
            layout = write_oci_archive(spec, out, compression, scratch, on_bytes, on_layer, on_size)
            return f"{layout.ref} to {show_path(output)} ({len(layout.layers)} layers)"
        stream = cast(BinaryIO, CompressedStream(out, compression)) if compression else out
        ref = write_docker_archive(spec, stream, on_bytes, on_layer, on_size)
        if isinstance(stream, CompressedStream):
            stream.finish()
    return f"{ref} to {show_path(output)} ({len(spec.all_layers)} layers)"
