"""The docker-archive format: what ``docker load``, ``podman load`` and skopeo read.

Layer tars come first, each streamed once under a header whose size was known
from the layout; the config (which needs every diff_id) and ``manifest.json``
come last, which is why the format can be written to a pipe in one pass
(``write_stream``: to a file or a pipe here, to a daemon's load endpoint next).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from nixlayer.cache import CachedLayer
from nixlayer.compression import CompressedStream, layer_media_type
from nixlayer.errors import NixlayerError, in_a_file
from nixlayer.formats.files import ImageFiles, compression_of, read_config
from nixlayer.formats.oci import INDEX, LAYOUT
from nixlayer.formats.writing import Writing, written_image
from nixlayer.image import (
    ImageSpec,
    SourceImage,
    WrittenImage,
    canonical_json,
    config_json,
    content_tag,
    layer_histories,
    qualified_name,
)
from nixlayer.jsonfile import json_strings
from nixlayer.layers import BlobLayer
from nixlayer.output import atomic_output
from nixlayer.tarwriter import END_OF_ARCHIVE, file_header, padding

if TYPE_CHECKING:
    from nixlayer.blobs import BlobRead
    from nixlayer.verify import Checker

NAME = "docker-archive"
FOLDER = False
NAMED_IMAGES = False
DEFAULT_OUTPUT = "image.tar"
DEFAULT_COMPRESSION = "none"  # of the whole stream: docker computes diff_ids on plain tars

MANIFEST = "manifest.json"


def detect(files: ImageFiles) -> bool:
    """A tar with a ``manifest.json``, and no oci-archive (which has one for ``docker
    load`` too)."""
    return files.has(MANIFEST) and not (files.has(INDEX) and files.has(LAYOUT))


def layer_member_name(index: int) -> str:
    """A name that does not depend on the layer's digest, which is unknown until
    its bytes have streamed past; docker and skopeo find layers by manifest only."""
    return f"{index + 1:04d}/layer.tar"


def write(spec: ImageSpec, output: str, writing: Writing) -> WrittenImage:
    """The image into ``output`` (a file, or a stream: ``-``, a pipe...), compressed
    as a whole where ``writing`` says so."""
    with atomic_output(output, clobber=writing.clobber) as out:
        compressing = bool(writing.compression)
        stream = cast(BinaryIO, CompressedStream(out, writing.compression)) if compressing else out
        written = write_stream(spec, stream, writing, output)
        if isinstance(stream, CompressedStream):
            stream.finish()
    return written


def write_stream(
    spec: ImageSpec, out: BinaryIO, writing: Writing, destination: str = "-"
) -> WrittenImage:
    """Write the image to ``out`` in one pass; ``destination`` is what ``out`` is, for
    the ``WrittenImage``. The layers are plain tars, so each blob's digest is its
    diff_id; there is no manifest digest (``manifest.json`` is docker's, not OCI's)."""
    mtime = spec.settings.mtime
    diff_ids = []
    layer_names = []
    blobs = []
    for index, layer in enumerate(spec.all_layers):
        with in_a_file():
            prepared = layer.prepare(mtime)
        writing.on_size(layer.size_hint, prepared.size)
        name = layer_member_name(index)
        out.write(file_header(name.encode(), prepared.size, mtime))
        with in_a_file():
            diff_id = prepared.stream(out.write, writing.on_bytes)
        out.write(padding(prepared.size))
        diff_ids.append(diff_id)
        layer_names.append(name)
        digest = f"sha256:{diff_id}"
        blobs.append((CachedLayer(digest, digest, prepared.size, layer_media_type(None)), False))
        writing.on_layer()
    config = config_json(spec, diff_ids)
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    repo_tag = f"{spec.settings.name}:{spec.settings.tag or content_tag(config)}"
    manifest = canonical_json(
        [{"Config": config_name, "RepoTags": [qualified_name(repo_tag)], "Layers": layer_names}]
    )
    for member_name, data in ((config_name, config), (MANIFEST, manifest)):
        out.write(file_header(member_name.encode(), len(data), mtime))
        out.write(data + padding(len(data)))
    out.write(END_OF_ARCHIVE)
    return written_image(spec, NAME, destination, config, None, blobs)


def read(files: ImageFiles, ref: str | None = None) -> SourceImage:
    """An image from a docker-archive's ``manifest.json`` (its first image)."""
    manifest = files.read_json(MANIFEST)
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise NixlayerError(f"{files.source}: {MANIFEST} does not list an image")
    entry = manifest[0]
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise NixlayerError(f"{files.source}: {MANIFEST}'s Config is not a file name")
    config, config_digest, diff_ids = read_config(files, config_name)
    layer_names = entry.get("Layers")
    if not json_strings(layer_names) or not json_strings(diff_ids):
        raise NixlayerError(f"{files.source}: the manifest or config lists no layers")
    if len(layer_names) != len(diff_ids):
        raise NixlayerError(
            f"{files.source}: {len(layer_names)} layers but {len(diff_ids)} diff_ids"
        )
    histories = layer_histories(config)
    layers = tuple(
        BlobLayer(
            diff_id=diff_id,
            digest=None,
            media_type=layer_media_type(compression_of(files.opener(name))),
            open=files.opener(name),
            blob_size=files.size(name),
            history=history,
            source=files.source,
        )
        for name, diff_id, history in zip(layer_names, diff_ids, histories, strict=True)
    )
    repo_tags = entry.get("RepoTags")
    tags = tuple(t for t in repo_tags if isinstance(t, str)) if isinstance(repo_tags, list) else ()
    return SourceImage(
        source=files.source,
        config=config,
        layers=layers,
        config_digest=config_digest,
        manifest_digest=None,
        repo_tags=tags,
    )


def member_compression(files: ImageFiles, name: str) -> str | None:
    """docker-archives normally hold plain tars, but some tools store them compressed."""
    return compression_of(files.opener(name)) if files.has(name) else None


# --- verifying -----------------------------------------------------------------------------


def verify(files: ImageFiles, check: Checker) -> None:
    """Every image ``manifest.json`` lists: its config, and its layers against it."""
    manifest = check.json(MANIFEST, "the manifest")
    if manifest is None:
        return
    if not isinstance(manifest, list) or not manifest:
        check.problem(f"{MANIFEST} does not list any image")
        return
    for number, entry in enumerate(manifest, 1):
        _check_entry(check, entry, f"{MANIFEST} entry {number}")


def _check_entry(check: Checker, entry: Any, where: str) -> None:
    check.report.images += 1
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        check.problem(f"{where}: no Config file named")
        return
    config_name = os.path.normpath(entry["Config"])
    config = _config_by_name(check, config_name, where)
    if config is not None:
        check.config_types(config, config_name)
    diff_ids = check.diff_ids(config, config_name) if config is not None else None
    layers = entry.get("Layers")
    if not json_strings(layers):
        check.problem(f"{where}: Layers is not a list of file names")
        return
    if diff_ids is not None and len(layers) != len(diff_ids):
        check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)} diff_ids")
        return
    histories = check.watch(config) if diff_ids is not None else None
    reads: list[BlobRead | None] = []
    for name, diff_id in zip(layers, diff_ids or [None] * len(layers), strict=True):
        member = os.path.normpath(name)
        compression = member_compression(check.files, member)
        check.layer_against_diff_id(member, compression, diff_id)
        reads.append(check.layer(member, compression))
    if histories is not None:
        check.merged(where, histories, reads)


def _config_by_name(check: Checker, name: str, where: str) -> Any:
    """The config file, whose name carries its sha256 (``<hex>.json`` as docker saves
    it, or ``blobs/sha256/<hex>`` as Docker 25 does)."""
    config = check.json(name, f"{where}: the config")
    named = re.search(r"([0-9a-f]{64})(?:\.json)?$", name)
    found = check.blob(name)
    if named and found and found.digest != f"sha256:{named.group(1)}":
        check.problem(f"config {name}: its sha256 is {found.digest}, not the one its name says")
    return config
