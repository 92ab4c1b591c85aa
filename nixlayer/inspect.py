"""What an image holds, for people and scripts: config, and per layer its digests,
size and store paths (read back from the history comments nixlayer writes)."""

from __future__ import annotations

import json
from typing import Any

from nixlayer.image import SourceImage
from nixlayer.layers import CREATED_BY, STORE_PATHS_PREFIX
from nixlayer.plan import human_size


def layer_store_paths(history: dict[str, Any]) -> list[str]:
    """The store paths a layer holds, if nixlayer wrote it; empty otherwise."""
    comment = history.get("comment")
    if history.get("created_by") != CREATED_BY or not isinstance(comment, str):
        return []
    if not comment.startswith(STORE_PATHS_PREFIX):
        return []
    return comment.removeprefix(STORE_PATHS_PREFIX).split()


def image_store_paths(image: SourceImage) -> frozenset[str]:
    """The store paths an image surely holds: those its nixlayer layers list, unless a
    layer another tool wrote sits above them (it may delete files: a whiteout) or the
    history does not pair up with the layers. Then none: nothing is left out."""
    history = image.config.get("history") or []
    entries = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
    ours = [layer.history.get("created_by") == CREATED_BY for layer in image.layers]
    lowest = ours.index(True) if True in ours else len(ours)
    if len(entries) != len(image.layers) or not all(ours[lowest:]):
        return frozenset()
    return frozenset(p for layer in image.layers for p in layer_store_paths(layer.history))


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
    """A short text: the image, its run config, then one line a layer."""
    platform = "/".join(p for p in (description["os"], description["architecture"],
                                      description["variant"]) if p)  # fmt: skip
    tags = ", ".join(description["repo_tags"]) or "(no tag)"
    lines = [
        f"{description['source']}: {tags}, {platform}, created {description['created']}",
        f"config: {json.dumps(description['config'], sort_keys=True)}",
        f"{'layer':>5}  {'size':>10}  {'digest':<19}  contents",
    ]
    for index, layer in enumerate(description["layers"], 1):
        paths = layer["store_paths"]
        what = (
            f"{len(paths)} store paths: "
            + " ".join(p.rsplit("/", 1)[-1] for p in paths[:3])
            + (" …" if len(paths) > 3 else "")
            if paths
            else layer["comment"] or "-"
        )
        lines.append(f"{index:>5}  {human_size(layer['size']):>10}  {layer['digest'][:19]}  {what}")
    return "\n".join(lines)
