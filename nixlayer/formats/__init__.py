"""Image formats, each one module behind one interface (``ImageFormat``): it detects
its images, reads one back as a ``SourceImage``, writes an ``ImageSpec`` and says what
it wrote (a ``WrittenImage``), and checks its own structure for ``verify``.

    docker_archive   docker-archive: one tar, written in one pass to a file or stream
    oci_layout       oci: an OCI layout folder, reused blob by blob
    oci_archive      oci-archive: the same layout as one tar (built in scratch first)

The data flows one way each time:
- writing: ``ImageSpec`` → ``write(spec, output, Writing)`` of the chosen format → its
  layout (tar members, or OCI blobs and a manifest) → its destination → a
  ``WrittenImage`` (digests, tag, per-layer sizes and store paths);
- reading: a path (``PATH:REF``) → ``find_image`` (``detect`` tells the format by
  content) → that format's ``read`` → a ``SourceImage`` (a base image, ``inspect``,
  ``diff``); ``verify.verify_image`` goes the same way to the format's ``verify``.

How an image is laid out is kept apart from where it goes. The OCI formats make their
blobs and manifest in ``oci.write_oci``, which hands them to a ``BlobStore`` (``has``,
``new_blob``, ``put``, ``put_manifest``): ``oci`` gives it the layout folder at
``output`` (``oci.LayoutFolder``); ``oci-archive`` one in scratch, then tars that
folder into a file or stream. docker-archive writes into any stream
(``docker_archive.write_stream``); here one from ``output.atomic_output``.

So a new destination is one more module with the interface below, added to
``FORMATS``: a registry is a ``write`` that runs ``oci.write_oci`` with a store whose
``has`` asks the registry for a blob, whose ``new_blob`` uploads one by digest and
whose ``put_manifest`` puts the manifest by tag, last; a daemon is a ``write`` that
runs ``docker_archive.write_stream`` into its load endpoint. Neither is found on disk:
their ``detect`` says no to every file, and ``read`` and ``verify`` may refuse.

Errors name the value or file they are about, never a flag: a caller says which option
carried ``output`` or the path (``errors.carried_by``); errors about what an image's
files hold are worded without it (``errors.in_a_file``), as they name the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nixlayer.errors import NixlayerError, in_a_file, show_path, what_is
from nixlayer.formats import docker_archive, oci_archive, oci_layout
from nixlayer.formats.files import ImageFiles, archive_files, folder_files, holds_tar
from nixlayer.formats.writing import Writing
from nixlayer.image import ImageSpec, SourceImage, WrittenImage

if TYPE_CHECKING:
    from nixlayer.verify import Checker


class ImageFormat(Protocol):
    """What each format module defines, once (its module is the implementation)."""

    NAME: str  # as ``--format`` takes it
    FOLDER: bool  # its images are folders; else one tar
    NAMED_IMAGES: bool  # it may hold several images, ``PATH:REF`` naming one
    DEFAULT_OUTPUT: str  # where it writes unless told
    DEFAULT_COMPRESSION: str  # of its layers, unless told

    def detect(self, files: ImageFiles) -> bool:
        """Whether ``files`` (a folder's, or one tar's members, as ``FOLDER`` says) are
        an image of this format; never true for two formats."""
        ...

    def read(self, files: ImageFiles, ref: str | None) -> SourceImage:
        """The image ``ref`` names (None: the only one), refused with an error naming
        the file where its files do not make one."""
        ...

    def write(self, spec: ImageSpec, output: str, writing: Writing) -> WrittenImage:
        """The image at ``output``, as ``writing`` says; what was written."""
        ...

    def verify(self, files: ImageFiles, check: Checker) -> None:
        """Every problem of the image's own structure into ``check``'s report, each blob
        read through ``check`` (once; see ``verify.Checker``)."""
        ...


FORMATS: dict[str, ImageFormat] = {
    module.NAME: module for module in (docker_archive, oci_layout, oci_archive)
}
DEFAULT_COMPRESSION = {name: found.DEFAULT_COMPRESSION for name, found in FORMATS.items()}


def format_named(name: str) -> ImageFormat:
    """The format of that name."""
    if name not in FORMATS:
        raise NixlayerError(f"{name}: expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


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


def not_an_image(path: Path) -> str:
    """Why ``path``, neither a file nor a folder, is no image: it does not exist, or it
    is a device, a pipe... (``inspect /dev/null`` is no "such image" all the same)."""
    kind = what_is(path)
    return "no such image file or folder" if kind == "nothing" else f"{kind}, not an image"


def is_image(value: str, any_folder: bool = True) -> bool:
    """Whether ``value`` names an image rather than another kind of input (a closure, a
    plan, an installable): a tar (compressed as a whole or not: only its first header
    is read), a folder (unless ``any_folder`` is False, only one a folder format
    detects, such as an OCI layout), or ``PATH:REF`` where nothing has the whole name
    (a ``#`` is an installable's, never in a ref). Which format it is, and whether it
    is a whole one, ``find_image`` says."""
    path = Path(value)
    if path.is_dir():
        return any_folder or detect(folder_files(path), folder=True) is not None
    if path.is_file():
        return holds_tar(path)
    return not path.exists() and ":" in value and "#" not in value


def detect(files: ImageFiles, folder: bool) -> ImageFormat | None:
    """The format whose images ``files`` make up (a folder's files, or one tar's
    members), told apart by content; None if none."""
    return next((f for f in FORMATS.values() if folder == f.FOLDER and f.detect(files)), None)


@dataclass(frozen=True)
class Found:
    """An image on disk, opened: its files, the format they make up, and the image of
    several that ``ref`` names."""

    files: ImageFiles
    image_format: ImageFormat
    ref: str | None


def find_image(value: str) -> Found:
    """The image at ``value`` (``PATH`` or ``PATH:REF``, see ``path_and_ref``): an OCI
    layout folder, or a tar (compressed as a whole or not) of any format, told apart
    by ``detect``. Errors start with ``value``; those about what the image's files hold
    name them, and are ``in_a_file``."""
    path, ref = path_and_ref(value)
    if path.is_dir():
        files = folder_files(path)
        found = detect(files, folder=True)
        if found is None:
            raise NixlayerError(f"{show_path(value)}: a folder, but not an OCI image layout")
    elif not path.is_file():
        raise NixlayerError(f"{show_path(value)}: {not_an_image(path)}")
    else:
        with in_a_file():
            files = archive_files(path)
        found = detect(files, folder=False)
        if found is None:
            raise NixlayerError(f"{show_path(value)}: not a docker-archive or OCI image")
    if ref is not None and not found.NAMED_IMAGES:
        raise NixlayerError(f"{value}: a {found.NAME}; :REF names an OCI image")
    return Found(files, found, ref)


def read_image(value: str) -> SourceImage:
    """The image at ``value`` (see ``find_image``), read back: a base image, or one to
    inspect or plan from."""
    found = find_image(value)
    with in_a_file():
        return found.image_format.read(found.files, found.ref)


def write_image(spec: ImageSpec, found: ImageFormat, output: str, writing: Writing) -> WrittenImage:
    """The image written in the format ``found`` at ``output``, a file, a stream (``-``,
    ``/dev/stdout``, a pipe) or a folder as the format takes. Errors are about
    ``output``, but those about a layer's own files (the store's, a base image's),
    which are ``in_a_file``."""
    return found.write(spec, output, writing)
