"""The docker-archive format: what ``docker load``, ``podman load`` and skopeo read.

Layer tars come first, each streamed once under a header whose size was known
from the layout; the config (which needs every diff_id) and ``manifest.json``
come last, which is why the format can be written to a pipe in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from nixlayer.image import ImageSettings, config_json, content_tag
from nixlayer.image import canonical_json as _json
from nixlayer.plan import Plan
from nixlayer.tarwriter import END_OF_ARCHIVE, file_header, lay_out_layer, padding, write_layer


def layer_member_name(index: int) -> str:
    """A name that does not depend on the layer's digest, which is unknown until
    its bytes have streamed past; docker and skopeo find layers by manifest only."""
    return f"{index + 1:04d}/layer.tar"


def write_docker_archive(
    plan: Plan,
    store_root: bytes,
    settings: ImageSettings,
    out: BinaryIO,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_layer: Callable[[], None] = lambda: None,
) -> str:
    """Write the image to ``out`` and return its ``NAME:TAG``."""
    diff_ids = []
    layer_names = []
    for index, layer in enumerate(plan.layers):
        layout = lay_out_layer(store_root, layer.paths, settings.mtime)
        name = layer_member_name(index)
        out.write(file_header(name.encode(), layout.size, settings.mtime))
        diff_ids.append(write_layer(layout, out.write, on_bytes))
        out.write(padding(layout.size))
        layer_names.append(name)
        on_layer()
    config = config_json(settings, plan, diff_ids)
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    repo_tag = f"{settings.name}:{settings.tag or content_tag(config)}"
    manifest = _json([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}])
    for member_name, data in ((config_name, config), ("manifest.json", manifest)):
        out.write(file_header(member_name.encode(), len(data), settings.mtime))
        out.write(data + padding(len(data)))
    out.write(END_OF_ARCHIVE)
    return repo_tag
