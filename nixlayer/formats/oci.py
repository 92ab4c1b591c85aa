"""The OCI image layout (a folder, or the same as one tar): reading it.

Blobs are addressed by digest under ``blobs/sha256/``; ``index.json`` names the
image manifests, whose layers carry their own media types and compressed digests.
"""

from __future__ import annotations

from typing import Any

from nixlayer.errors import NixlayerError
from nixlayer.formats.files import ImageFiles
from nixlayer.image import SourceImage, layer_histories
from nixlayer.layers import BlobLayer

INDEX = "index.json"
LAYOUT = "oci-layout"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def blob_name(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or not hex_digest.isalnum():
        raise NixlayerError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hex_digest}"


def _descriptor(files: ImageFiles, ref: str | None) -> dict[str, Any]:
    """The manifest descriptor of ``index.json`` that ``ref`` names, or the only one."""
    index = files.read_json(INDEX)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise NixlayerError(f"{files.source}: {INDEX} lists no manifests")
    if ref is None and len(manifests) == 1:
        return manifests[0]
    names = [m.get("annotations", {}) for m in manifests if isinstance(m, dict)]
    for descriptor, names_of in zip(manifests, names, strict=False):
        if ref in (names_of.get(REF_NAME), names_of.get(CONTAINERD_NAME)):
            return descriptor
    known = ", ".join(sorted(str(a.get(REF_NAME)) for a in names))
    raise NixlayerError(f"{files.source}: choose an image with PATH:REF (it holds: {known})")


def read_oci(files: ImageFiles, ref: str | None = None) -> SourceImage:
    descriptor = _descriptor(files, ref)
    if descriptor.get("mediaType") in _INDEX_TYPES:
        raise NixlayerError(f"{files.source}: a multi-platform index is not supported here")
    manifest = files.read_json(blob_name(str(descriptor.get("digest"))))
    config = files.read_json(blob_name(str(manifest.get("config", {}).get("digest"))))
    layers = manifest.get("layers")
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if (
        not isinstance(layers, list)
        or not isinstance(diff_ids, list)
        or len(layers) != len(diff_ids)
    ):
        raise NixlayerError(f"{files.source}: the manifest's layers do not match the config's")
    blobs = tuple(
        BlobLayer(
            diff_id=diff_id,
            digest=str(layer.get("digest")),
            media_type=str(layer.get("mediaType", "")),
            open=files.opener(blob_name(str(layer.get("digest")))),
            blob_size=files.size(blob_name(str(layer.get("digest")))),
            history=history,
            source=files.source,
        )
        for layer, diff_id, history in zip(layers, diff_ids, layer_histories(config), strict=True)
    )
    ref_name = descriptor.get("annotations", {}).get(CONTAINERD_NAME)
    return SourceImage(files.source, config, blobs, (ref_name,) if ref_name else ())
