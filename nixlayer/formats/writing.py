"""What every format's ``write`` is given besides the image and where it goes
(``Writing``), and what it gives back (a ``WrittenImage``, made by ``written_image``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nixlayer.cache import CachedLayer, LayerCache
from nixlayer.compression import Compression
from nixlayer.image import ImageSpec, WrittenImage, WrittenLayer, content_tag
from nixlayer.layers import LayerSized, layer_store_paths


def _no_bytes(count: int) -> None:
    pass


def _no_layer() -> None:
    pass


def _no_size(hint: int, size: int) -> None:
    pass


@dataclass(frozen=True)
class Writing:
    """How to write: the layers' ``compression`` (for docker-archive, the whole
    stream's: its layers stay plain tars, which docker computes diff_ids on), the layer
    ``cache``, whether an image at the destination may be replaced (``clobber``), and
    who hears of the progress: ``on_bytes`` of each block of a layer's tar,
    ``on_layer`` of each layer done, ``on_size`` of each layer's size before its bytes
    (see ``layers.LayerSized``)."""

    compression: Compression = field(default_factory=Compression)
    cache: LayerCache = field(default_factory=lambda: LayerCache(None))
    clobber: bool = True
    on_bytes: Callable[[int], None] = _no_bytes
    on_layer: Callable[[], None] = _no_layer
    on_size: LayerSized = _no_size


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def written_image(
    spec: ImageSpec,
    image_format: str,
    destination: str,
    config: bytes,
    manifest_digest: str | None,
    blobs: Sequence[tuple[CachedLayer, bool]],
) -> WrittenImage:
    """What was written, as data, from each layer's blob and whether it was in place
    already: the tag is the one the image was given, or the one derived from its
    config; the store paths are those each of nixlayer's own layers lists (a base
    image's layers list none here)."""
    base = len(spec.all_layers) - len(spec.layers)
    listed: list[tuple[str, ...]] = [()] * base + [
        tuple(layer_store_paths(layer.history)) for layer in spec.layers
    ]
    return WrittenImage(
        image_format=image_format,
        destination=destination,
        name=spec.settings.name,
        tag=spec.settings.tag or content_tag(config),
        manifest_digest=manifest_digest,
        config_digest=sha256_digest(config),
        layers=tuple(
            WrittenLayer(blob.digest, blob.diff_id, blob.blob_size, blob.media_type, paths, reused)
            for (blob, reused), paths in zip(blobs, listed, strict=True)
        ),
    )
