"""From the user's inputs to an ``ImageSpec``: the steps every build takes, in order.

Read the closure (sizes from disk if it has none), read a base image, assemble the
customisation layer, plan the store layers within what is left of the layer
budget, and settle the image's identity and run config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nixlayer.closure import DEFAULT_STORE_DIR, Closure
from nixlayer.customisation import Customisation, customisation_entries, describe
from nixlayer.errors import NixlayerError, carried_by, show_path
from nixlayer.formats import is_image, read_image
from nixlayer.image import (
    DEFAULT_MTIME,
    MAX_TIMESTAMP,
    ImageSettings,
    SourceImage,
    config_problems,
    default_name,
    host_architecture,
    image_store_paths,
    parse_architecture,
    parse_created,
    parse_name,
    parse_tag,
    source_date_epoch,
    timestamp,
)
from nixlayer.jsonfile import CLOSURE_SIZED_LIMIT, load_json
from nixlayer.layers import EntriesLayer, Layer, StoreLayer, layer_store_paths
from nixlayer.plan import Plan, PlanLayer, make_plan
from nixlayer.readers import read_closure
from nixlayer.runconfig import RunFlags, check_run_config, load_config_file, run_config
from nixlayer.store import check_store_root, with_disk_nar_sizes


@dataclass(frozen=True)
class ClosureInput:
    """Where the closure comes from and how to read it."""

    file: Path
    input_format: str | None = None
    attrs_key: str | None = None
    store_dir: str | None = None
    store_root: Path = Path("/")


@dataclass(frozen=True)
class LastBuild:
    """``--previous``: the last build's plan JSON, image, or closure, a closure read as
    ``source`` says and planned as that build was (see ``plan_image``)."""

    value: str
    source: ClosureInput


@dataclass(frozen=True)
class Identity:
    """The image's name and platform flags, as given (None: not given)."""

    name: str | None = None
    tag: str | None = None
    arch: str | None = None
    created: str | None = None
    mtime: int | None = None


def load_closure(source: ClosureInput, note: Callable[[str], None]) -> Closure:
    closure = read_closure(source.file, source.input_format, source.attrs_key, source.store_dir)
    if not closure.has_nar_sizes:
        check_store_root(source.store_root)
        note(
            f"{closure.source} has no narSize: reading the sizes from "
            f"{show_path(source.store_root)}"
        )
        closure = with_disk_nar_sizes(closure, os.fsencode(source.store_root))
    return closure


def read_base(value: str) -> SourceImage:
    """``--from``: a base image, refused where its config has a field of the wrong type
    (``architecture`` a list, a history entry's ``comment`` a number): consumers refuse
    such a config, and the new image's would carry the same fields."""
    base = read_image(value)
    problems = config_problems(base.config)
    if problems:
        raise NixlayerError(f"{value}: the config's {problems[0]}")
    return base


def layer_budget(
    max_layers: int, base: SourceImage | None, customised: bool, store: bool = True
) -> int:
    """What the strategy may use: ``--max-layers`` less the base's and ours on top. With
    ``store`` False (the base holds every store path) the store needs none."""
    if max_layers < 1:
        raise NixlayerError(f"--max-layers {max_layers}: must be at least 1")
    taken = (len(base.layers) if base else 0) + customised
    if max_layers - taken < store:
        raise NixlayerError(
            f"--max-layers {max_layers}: the base image and customisation take {taken}, "
            "leaving none for the store"
        )
    return max_layers - taken


def _platform(arch: str | None, base: SourceImage | None) -> tuple[str, str | None]:
    if base is None:
        return parse_architecture(host_architecture() if arch is None else arch)
    base_platform = (base.config.get("architecture"), base.config.get("variant"))
    if arch is not None and parse_architecture(arch) != base_platform:
        raise NixlayerError(f"--arch {arch}: the base image {base.source} is {base_platform[0]}")
    return base_platform[0], base_platform[1]


def image_settings(
    identity: Identity, roots: Sequence[str], base: SourceImage | None, environ: Mapping[str, str]
) -> ImageSettings:
    """Name, tag, platform and times, with ``SOURCE_DATE_EPOCH`` where none is given."""
    epoch = source_date_epoch(dict(environ))
    default_time = DEFAULT_MTIME if epoch is None else epoch  # 0 is a time, not "unset"
    if identity.mtime is not None and not 0 <= identity.mtime <= MAX_TIMESTAMP:
        raise NixlayerError(f"--mtime {identity.mtime}: must be from 0 to {MAX_TIMESTAMP}")
    # An empty name or tag is refused by its parser, not taken for one not given.
    name, tag = (default_name(roots), None) if identity.name is None else parse_name(identity.name)
    if identity.tag is not None and tag not in (None, identity.tag):
        raise NixlayerError(
            f"--name {identity.name} and --tag {identity.tag}: two tags; give one of them"
        )
    architecture, variant = _platform(identity.arch, base)
    return ImageSettings(
        name=name,
        tag=tag if identity.tag is None else parse_tag(identity.tag),
        architecture=architecture,
        variant=variant,
        created=timestamp(default_time)
        if identity.created is None
        else parse_created(identity.created),
        mtime=default_time if identity.mtime is None else identity.mtime,
    )


def plan_image(
    closure: Closure,
    store_root: Path,
    customisation: Customisation,
    base: SourceImage | None,
    strategy: str,
    max_layers: int,
    roots: Sequence[str] = (),
    previous: LastBuild | None = None,
    groups: Sequence[Sequence[str]] = (),
) -> tuple[Plan, tuple[Layer, ...]]:
    """The plan of the store layers, and all of nixlayer's layers bottom first. Store
    paths a base image nixlayer wrote holds already are not added again. A last build
    given as a closure is planned with the same base and budget as this one, as it
    was when it was built."""
    check_store_root(store_root)
    root_bytes = os.fsencode(store_root)
    entries = customisation_entries(customisation, closure, root_bytes)
    provided = image_store_paths(base) if base else frozenset()
    store = not closure.paths.keys() <= provided
    budget = layer_budget(max_layers, base, bool(entries), store)
    before = last_plan(previous, strategy, budget, provided)
    plan = make_plan(closure, strategy, budget, roots, before, groups, provided)
    layers: list[Layer] = [
        StoreLayer(layer.paths, root_bytes, closure.store_dir, layer.nar_size)
        for layer in plan.layers
    ]
    if entries:
        layers.append(EntriesLayer(tuple(entries), describe(customisation)))
    return plan, tuple(layers)


def image_run_config(
    base: SourceImage | None,
    config_file: Path | None,
    inline: dict[str, Any] | None,
    flags: RunFlags,
) -> dict[str, Any]:
    """The base's run config, then ``--config FILE``, then settings, then flags."""
    base_config: dict[str, Any] = {}
    if base is not None:
        base_config = base.config.get("config") or {}
        check_run_config(base_config, f"--from {base.source}")
    file_config = load_config_file(config_file) if config_file else {}
    return run_config(base_config, file_config, inline or {}, flags=flags)


def load_groups(path: Path | None) -> list[list[str]]:
    """``--group FILE``: a JSON list of lists of name globs."""
    if path is None:
        return []
    groups = load_json(path, f"--group {show_path(path)}")
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and g and all(isinstance(glob, str) for glob in g) for g in groups
    ):
        raise NixlayerError(
            f'--group {show_path(path)}: expected a list of lists of globs, like [["python3-*"]]'
        )
    return groups


def plan_from_image(image: SourceImage) -> Plan:
    """The layering an image nixlayer wrote, read back from its history comments.

    Every layer counts, as every layer is pushed: one that lists no store paths (the
    customisation layer, a base image's) stands for itself by its diff_id, so that
    ``diff`` sees it change; ``--previous`` keeps none of those, as they are not in
    a closure. Images do not record each path's NAR size; a layer's size is shared
    out evenly among its paths, which keeps every layer's total right.
    """
    listed = [tuple(sorted(layer_store_paths(layer.history))) for layer in image.layers]
    if not any(listed):
        raise NixlayerError(
            f"{image.source}: no layer lists its store paths (not built by nixlayer)"
        )
    layers = []
    for layer, store_paths in zip(image.layers, listed, strict=True):
        paths = store_paths or (layer.diff_id,)
        share, extra = divmod(layer.blob_size, len(paths))
        layers.append(PlanLayer(paths, tuple(share + (i < extra) for i in range(len(paths)))))
    note = "sizes are the image's layer sizes shared out among their paths"
    return Plan(DEFAULT_STORE_DIR, "image", (), tuple(layers), (note,))


def last_plan(
    previous: LastBuild | None, strategy: str, max_layers: int, provided: frozenset[str]
) -> Plan | None:
    """``--previous`` as a plan; a closure is planned with this build's budget and base."""
    if previous is None:
        return None
    return load_layering(
        previous.value, "previous", previous.source, strategy, max_layers, provided
    )


def load_layering(
    value: str,
    option: str,
    closure_input: ClosureInput,
    strategy: str,
    max_layers: int,
    provided: frozenset[str] = frozenset(),
) -> Plan:
    """A plan JSON, an image nixlayer wrote, or a closure planned here and now (see
    ``make_plan`` for ``provided``); ``option`` carried ``value``."""
    path = Path(value)
    data = _json_or_none(path) if path.is_file() else None
    if Plan.recognise(data):
        with carried_by(option):
            return Plan.from_json(data, show_path(value))
    if is_image(value):
        with carried_by(option):
            image = read_image(value)
        return plan_from_image(image)
    closure = load_closure(replace(closure_input, file=path), lambda message: None)
    return make_plan(closure, strategy, max_layers, provided=provided)


def _json_or_none(path: Path) -> Any:
    """The JSON in ``path`` if it is a file of a plan's size that holds JSON: else it is
    an image or a closure (which may be larger, and is streamed: ``read_closure``)."""
    try:
        return load_json(path, str(path), CLOSURE_SIZED_LIMIT)
    except NixlayerError:
        return None
