"""What an image holds, for people and scripts: its config and manifest digests, its
config, and per layer its digests, size and store paths (read back from the history
comments nixlayer writes)."""

from __future__ import annotations

from typing import Any

from nixlayer.image import SourceImage
from nixlayer.layers import layer_store_paths


def describe_image(image: SourceImage) -> dict[str, Any]:
    config = image.config
    return {
        "source": image.source,
        "repo_tags": list(image.repo_tags),
        "config_digest": image.config_digest,
        "manifest_digest": image.manifest_digest,
        "architecture": config.get("architecture"),
        "variant": config.get("variant"),
        "os": config.get("os"),
        "created": config.get("created"),
        "config": config.get("config") or {},
        "layers": [
            {
                "diff_id": layer.diff_id,
                "digest": layer.digest or layer.diff_id,
                "media_type": layer.media_type,
                "size": layer.blob_size,
                "comment": layer.history.get("comment", ""),
                "store_paths": layer_store_paths(layer.history),
            }
            for layer in image.layers
        ],
    }
