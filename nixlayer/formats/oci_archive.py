"""The ``oci-archive`` format: an OCI image layout as one tar, with a docker
``manifest.json`` beside ``index.json`` so that ``docker load`` reads it too (as
``docker save`` writes it since Docker 25). What it shares with ``oci_layout`` is in
``oci``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from nixlayer.cache import LayerCache
from nixlayer.formats.docker_archive import MANIFEST, member_compression
from nixlayer.formats.files import ImageFiles
from nixlayer.formats.oci import (
    INDEX,
    LAYOUT,
    LayoutFolder,
    blob_name,
    read_oci,
    started_layout,
    verify_layout,
    verify_unnamed_blobs,
    write_oci,
)
from nixlayer.formats.writing import Writing
from nixlayer.image import ImageSpec, SourceImage, WrittenImage, canonical_json, qualified_name
from nixlayer.jsonfile import json_strings
from nixlayer.output import atomic_output, scratch_folder, scratch_parent
from nixlayer.store import walk_tree
from nixlayer.tarwriter import lay_out, write_layer

if TYPE_CHECKING:
    from nixlayer.verify import Checker

NAME = "oci-archive"
FOLDER = False
NAMED_IMAGES = True
DEFAULT_OUTPUT = "image.tar"
DEFAULT_COMPRESSION = "gzip"


def detect(files: ImageFiles) -> bool:
    """A tar with an ``index.json`` and an ``oci-layout`` file."""
    return files.has(INDEX) and files.has(LAYOUT)


def read(files: ImageFiles, ref: str | None = None) -> SourceImage:
    return read_oci(files, ref)


def write(spec: ImageSpec, output: str, writing: Writing) -> WrittenImage:
    """The image into ``output``: a file, or a stream (``-``, a pipe...)."""
    with atomic_output(output, clobber=writing.clobber) as out:
        return write_stream(spec, out, writing, Path(scratch_parent(output)), output)


def write_stream(
    spec: ImageSpec, out: BinaryIO, writing: Writing, scratch: Path, destination: str = "-"
) -> WrittenImage:
    """The archive into ``out``. A tar member's size comes before its bytes, and a
    compressed layer's size is known only once it is compressed: the layout is built
    in ``scratch`` first (without the layer cache: it is gone at the end)."""
    with scratch_folder(scratch) as temporary:
        folder = Path(temporary, "layout")
        with started_layout(folder):  # removed with the scratch folder if it fails
            no_cache = LayerCache(None)
            layout = LayoutFolder(folder, no_cache)
            uncached = dataclasses.replace(writing, cache=no_cache)
            written = write_oci(spec, layout, uncached, NAME, destination)
        (folder / MANIFEST).write_bytes(docker_manifest(written))
        entries = [entry for entry in walk_tree(os.fsencode(folder), b"") if entry.name]
        write_layer(lay_out(entries, spec.settings.mtime), out.write)
    return written


def docker_manifest(written: WrittenImage) -> bytes:
    """The ``manifest.json`` that makes an OCI archive loadable by ``docker load``."""
    entry = {
        "Config": blob_name(written.config_digest),
        "RepoTags": [qualified_name(written.ref)],
        "Layers": [blob_name(layer.digest) for layer in written.layers],
    }
    return canonical_json([entry])


def verify(files: ImageFiles, check: Checker) -> None:
    verify_layout(check)
    if files.has(MANIFEST):
        _check_docker_manifest(check)
    verify_unnamed_blobs(check)


def _check_docker_manifest(check: Checker) -> None:
    """The docker ``manifest.json`` an oci-archive carries for ``docker load`` must
    name files of the archive: a config, and layers that match its diff_ids."""
    manifest = check.json(MANIFEST, "the docker manifest")
    if not isinstance(manifest, list):
        if manifest is not None:
            check.problem(f"{MANIFEST} is not a list")
        return
    for number, entry in enumerate(manifest, 1):
        where = f"{MANIFEST} entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            check.problem(f"{where}: no Config file named")
            continue
        config = check.json(os.path.normpath(entry["Config"]), f"{where}: the config")
        diff_ids = check.diff_ids(config, where) if config is not None else None
        layers = entry.get("Layers")
        if not json_strings(layers):
            check.problem(f"{where}: Layers is not a list of file names")
        elif diff_ids is not None and len(diff_ids) != len(layers):
            check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)}")
        elif diff_ids is not None:
            for name, diff_id in zip(map(os.path.normpath, layers), diff_ids, strict=True):
                compression = member_compression(check.files, name)
                check.layer_against_diff_id(name, compression, diff_id, count=False)
