"""From the options to an ``ImageSpec``: the steps every build takes, in order, which
``api`` runs.

Read the closure (a store path's through Nix; sizes from disk if it has none), read a
base image, assemble the customisation layer, plan the store layers within what is
left of the layer budget (``plan_closure``, the one way a closure is planned, for a
plan on its own too), and settle the image's identity and run config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nixlayer.closure import DEFAULT_STORE_DIR, Closure
from nixlayer.customisation import Customisation, customisation_entries, describe
from nixlayer.errors import NixlayerError, carried_by, in_a_file, show_path
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
from nixlayer.nixinput import closure_file, nix_argument
from nixlayer.options import ClosureInput, Identity, Layering
from nixlayer.plan import Plan, PlanLayer, make_plan
from nixlayer.readers import read_closure
from nixlayer.runconfig import RunConfig, check_run_config, run_config
from nixlayer.store import check_store_root, with_disk_nar_sizes


def load_closure(source: ClosureInput, note: Callable[[str], None]) -> Closure:
    """The closure, with the sizes read from the store on disk where it has none; a
    store path or an installable is asked of Nix (see ``nixinput``)."""
    with (
        closure_file(source.closure, source.store_root, source.store_dir) as (file, name),
        in_a_file(),  # its errors name the file
    ):
        closure = read_closure(file, source.input_format, source.attrs_key, source.store_dir, name)
    if not closure.has_nar_sizes:
        with carried_by("store_root"):
            check_store_root(source.store_root)
        note(
            f"{closure.source} has no narSize: reading the sizes from "
            f"{show_path(source.store_root)}"
        )
        closure = with_disk_nar_sizes(closure, os.fsencode(source.store_root))
    return closure


def read_base(value: str) -> SourceImage:
    """A base image, refused where its config has a field of the wrong type
    (``architecture`` a list, a history entry's ``comment`` a number): consumers refuse
    such a config, and the new image's would carry the same fields."""
    with carried_by("base"):
        base = read_image(value)
        problems = config_problems(base.config)
        if problems:
            raise NixlayerError(f"{value}: the config's {problems[0]}")
    return base


def layer_budget(
    max_layers: int, base: SourceImage | None, customised: bool, store: bool = True
) -> int:
    """What the strategy may use: ``max_layers`` less the base's and ours on top. With
    ``store`` False (the base holds every store path) the store needs none."""
    if max_layers < 1:
        raise NixlayerError(f"{max_layers}: must be at least 1", "max_layers")
    taken = (len(base.layers) if base else 0) + customised
    if max_layers - taken < store:
        raise NixlayerError(
            f"{max_layers}: the base image and customisation take {taken}, "
            "leaving none for the store",
            "max_layers",
        )
    return max_layers - taken


def _platform(arch: str | None, base: SourceImage | None) -> tuple[str, str | None]:
    with carried_by("arch"):
        return _checked_platform(arch, base)


def _checked_platform(arch: str | None, base: SourceImage | None) -> tuple[str, str | None]:
    if base is None:
        return parse_architecture(host_architecture() if arch is None else arch)
    base_platform = (base.config.get("architecture"), base.config.get("variant"))
    if arch is not None and parse_architecture(arch) != base_platform:
        raise NixlayerError(f"{arch}: the base image {base.source} is {base_platform[0]}")
    return base_platform[0], base_platform[1]


def image_settings(
    identity: Identity, roots: Sequence[str], base: SourceImage | None, environ: Mapping[str, str]
) -> ImageSettings:
    """Name, tag, platform and times, with ``SOURCE_DATE_EPOCH`` where none is given."""
    epoch = source_date_epoch(dict(environ))
    default_time = DEFAULT_MTIME if epoch is None else epoch  # 0 is a time, not "unset"
    if identity.mtime is not None and not 0 <= identity.mtime <= MAX_TIMESTAMP:
        raise NixlayerError(f"{identity.mtime}: must be from 0 to {MAX_TIMESTAMP}", "mtime")
    # An empty name or tag is refused by its parser, not taken for one not given.
    with carried_by("name"):
        name, tag = (
            (default_name(roots), None) if identity.name is None else parse_name(identity.name)
        )
        if identity.tag is not None and tag not in (None, identity.tag):
            raise NixlayerError(
                f"{identity.name}: a second tag beside the tag {identity.tag}; give one"
            )
    with carried_by("tag"):
        tag = tag if identity.tag is None else parse_tag(identity.tag)
    architecture, variant = _platform(identity.arch, base)
    with carried_by("created"):
        created = (
            timestamp(default_time) if identity.created is None else parse_created(identity.created)
        )
    return ImageSettings(
        name=name,
        tag=tag,
        architecture=architecture,
        variant=variant,
        created=created,
        mtime=default_time if identity.mtime is None else identity.mtime,
    )


def store_layers(
    closure: Closure,
    store_root: Path,
    customisation: Customisation,
    base: SourceImage | None,
    layering: Layering,
    closure_input: ClosureInput,
) -> tuple[Plan, tuple[Layer, ...]]:
    """The plan of the store layers, and all of nixlayer's layers bottom first: the
    budget is what the base and the customisation layer leave of ``max_layers``."""
    with carried_by("store_root"):
        check_store_root(store_root)
    root_bytes = os.fsencode(store_root)
    entries = customisation_entries(customisation, closure, root_bytes)
    provided = image_store_paths(base) if base else frozenset()
    budget = layer_budget(
        layering.max_layers, base, bool(entries), not closure.paths.keys() <= provided
    )
    plan = plan_closure(closure, replace(layering, max_layers=budget), provided, closure_input)
    layers: list[Layer] = [
        StoreLayer(layer.paths, root_bytes, closure.store_dir, layer.nar_size)
        for layer in plan.layers
    ]
    if entries:
        layers.append(EntriesLayer(tuple(entries), describe(customisation)))
    return plan, tuple(layers)


def plan_closure(
    closure: Closure, layering: Layering, provided: frozenset[str], closure_input: ClosureInput
) -> Plan:
    """The one way a closure is planned, for an image or for a plan on its own: store
    paths a base image holds (``provided``) get no layer, and the last build's layers
    are kept where they can be. A last build given as a closure is read as this one
    is and planned with the same base and budget, as it was when it was built."""
    before = None
    if layering.previous is not None:
        with carried_by("previous"):
            before = load_layering(
                layering.previous, closure_input, layering.strategy, layering.max_layers, provided
            )
    return make_plan(
        closure, layering.strategy, layering.max_layers, layering.roots, before,
        layering.groups, provided,
    )  # fmt: skip


def image_run_config(base: SourceImage | None, run: RunConfig) -> dict[str, Any]:
    """The base's run config, then the config file, the config and the fields given."""
    base_config: dict[str, Any] = {}
    if base is not None:
        base_config = base.config.get("config") or {}
        with carried_by("base"):
            check_run_config(base_config, base.source)
    return run_config(base_config, run)


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


def load_layering(
    value: str,
    closure_input: ClosureInput,
    strategy: str,
    max_layers: int,
    provided: frozenset[str] = frozenset(),
) -> Plan:
    """A plan JSON, an image nixlayer wrote, or a closure read as ``closure_input`` says
    and planned here and now (see ``make_plan`` for ``provided``): a closure file, or a
    store path or installable that is no image (see ``nixinput``; ``PATH:REF`` is an
    image's, a ``#`` an installable's)."""
    path = Path(value)
    data = _json_or_none(path) if path.is_file() else None
    if Plan.recognise(data):
        return Plan.from_json(data, show_path(value))
    for_nix = nix_argument(value, closure_input.store_root, closure_input.store_dir) is not None
    if is_image(value, any_folder=not for_nix):
        return plan_from_image(read_image(value))
    closure = load_closure(replace(closure_input, closure=value), lambda message: None)
    return make_plan(closure, strategy, max_layers, provided=provided)


def _json_or_none(path: Path) -> Any:
    """The JSON in ``path`` if it is a file of a plan's size that holds JSON: else it is
    an image or a closure (which may be larger, and is streamed: ``read_closure``)."""
    try:
        return load_json(path, str(path), CLOSURE_SIZED_LIMIT)
    except NixlayerError:
        return None
