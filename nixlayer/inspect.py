"""What an image holds, for people and scripts: config, and per layer its digests,
size and store paths (read back from the history comments nixlayer writes)."""

from __future__ import annotations

import json
from typing import Any

from nixlayer.errors import one_line
from nixlayer.image import SourceImage
from nixlayer.layers import layer_store_paths
from nixlayer.plan import human_size


def describe_image(image: SourceImage) -> dict[str, Any]:
    config = image.config
    return {
        "source": image.source,
        "repo_tags": list(image.repo_tags),
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


def format_description(description: dict[str, Any]) -> str:
    """A short text: the image, its run config, then one line a layer. What the image
    says of itself (tags, comments) is shown on one line, with no control character
    reaching the terminal."""
    platform = "/".join(_shown(p) for p in (description["os"], description["architecture"],
                                             description["variant"]) if p)  # fmt: skip
    tags = ", ".join(description["repo_tags"]) or "(no tag)"
    lines = [
        f"{description['source']}: {tags}, {platform}, created {_shown(description['created'])}",
        f"config: {json.dumps(description['config'], sort_keys=True)}",
        f"{'layer':>5}  {'size':>10}  {'digest':<19}  contents",
    ]
    for index, layer in enumerate(description["layers"], 1):
        paths = layer["store_paths"]
        what = (
            f"{len(paths)} store path{'s' if len(paths) > 1 else ''}: "
            + " ".join(p.rsplit("/", 1)[-1] for p in paths[:3])
            + (" …" if len(paths) > 3 else "")
            if paths
            else _shown(layer["comment"] or "-")
        )
        lines.append(f"{index:>5}  {human_size(layer['size']):>10}  {layer['digest'][:19]}  {what}")
    return "\n".join(map(one_line, lines))


def _shown(value: Any) -> str:
    """A field as the config has it: a string as it is, another type (which ``verify``
    reports) as JSON, never as Python would print it."""
    return value if isinstance(value, str) else json.dumps(value)
