"""The docker-archive format: what ``docker load``, ``podman load`` and skopeo read.

Layer tars come first, each streamed once under a header whose size was known
from the layout; the config (which needs every diff_id) and ``manifest.json``
come last, which is why the format can be written to a pipe in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from nixlayer.errors import NixlayerError
from nixlayer.formats.files import ImageFiles, compression_of, read_config
from nixlayer.image import (
    ImageSpec,
    SourceImage,
    canonical_json,
    config_json,
    content_tag,
    layer_histories,
    qualified_name,
)
from nixlayer.jsonfile import json_strings
from nixlayer.layers import BlobLayer, LayerSized
from nixlayer.tarwriter import END_OF_ARCHIVE, file_header, padding

MANIFEST = "manifest.json"


def layer_member_name(index: int) -> str:
    """A name that does not depend on the layer's digest, which is unknown until
    its bytes have streamed past; docker and skopeo find layers by manifest only."""
    return f"{index + 1:04d}/layer.tar"


def write_docker_archive(
    spec: ImageSpec,
    out: BinaryIO,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_layer: Callable[[], None] = lambda: None,
    on_size: LayerSized = lambda hint, size: None,
) -> str:
    """Write the image to ``out`` and return its ``NAME:TAG``."""
    mtime = spec.settings.mtime
    diff_ids = []
    layer_names = []
    for index, layer in enumerate(spec.all_layers):
        prepared = layer.prepare(mtime)
        on_size(layer.size_hint, prepared.size)
        name = layer_member_name(index)
        out.write(file_header(name.encode(), prepared.size, mtime))
        diff_ids.append(prepared.stream(out.write, on_bytes))
        out.write(padding(prepared.size))
        layer_names.append(name)
        on_layer()
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
    return repo_tag


def read_docker_archive(files: ImageFiles) -> SourceImage:
    """An image from a docker-archive's ``manifest.json`` (its first image)."""
    manifest = files.read_json(MANIFEST)
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise NixlayerError(f"{files.source}: {MANIFEST} does not list an image")
    entry = manifest[0]
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise NixlayerError(f"{files.source}: {MANIFEST}'s Config is not a file name")
    config, diff_ids = read_config(files, config_name)
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
            media_type=_media_type(files, name),
            open=files.opener(name),
            blob_size=files.size(name),
            history=history,
            source=files.source,
        )
        for name, diff_id, history in zip(layer_names, diff_ids, histories, strict=True)
    )
    repo_tags = entry.get("RepoTags")
    tags = tuple(t for t in repo_tags if isinstance(t, str)) if isinstance(repo_tags, list) else ()
    return SourceImage(files.source, config, layers, tags)


def _media_type(files: ImageFiles, name: str) -> str:
    """docker-archives normally hold plain tars, but some tools store them compressed."""
    compression = compression_of(files.opener(name))
    suffix = f"+{compression}" if compression else ""
    return f"application/vnd.oci.image.layer.v1.tar{suffix}"
