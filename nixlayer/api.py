"""nixlayer's public Python API: what the command line does, as functions that take
options (``nixlayer.options``) and return data.

Every function raises ``NixlayerError`` for input it cannot use, with a message that
starts with the value and says what is wrong; ``error.option`` names the option that
carried the value. Notes for people made along the way (a closure without sizes read
from disk, old layers merged) go to ``on_note``, and the plan's own notes are in
``Plan.notes``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nixlayer.build import (
    image_run_config,
    image_settings,
    load_closure,
    load_layering,
    plan_closure,
    read_base,
    store_layers,
)
from nixlayer.cache import LayerCache, default_cache_dir
from nixlayer.closure import Closure
from nixlayer.compression import parse_compression
from nixlayer.errors import NixlayerError, carried_by, show_path
from nixlayer.fleet import FleetPlan
from nixlayer.fleet import plan_fleet as _plan_fleet
from nixlayer.formats import DEFAULT_COMPRESSION, Writing, format_named, write_image
from nixlayer.formats import read_image as _read_image
from nixlayer.image import ImageSpec, SourceImage, WrittenImage, image_store_paths
from nixlayer.inspect import describe_image as _describe_image
from nixlayer.measure import PushCost, push_cost
from nixlayer.options import BuildOptions, ClosureInput, Layering
from nixlayer.output import atomic_output
from nixlayer.plan import Plan
from nixlayer.verify import VerifyReport, verify_image

__all__ = ["VerifyReport", "verify_image"]  # with the functions below, as nixlayer exports them

Note = Callable[[str], None]
ClosureLike = ClosureInput | str | os.PathLike[str]


class Progress(Protocol):
    """What ``build_image`` reports while it writes: the bytes it expects, the bytes
    done, a layer's true size once known in place of its estimate, each layer done."""

    def start(self, total: int) -> None: ...

    def update(self, count: int) -> None: ...

    def sized(self, hint: int, size: int) -> None: ...

    def layer_done(self) -> None: ...


@dataclass(frozen=True)
class BuiltImage:
    """What ``build_image`` made: the image as written, and the plan of its store layers."""

    image: WrittenImage
    plan: Plan


def _source(closure: ClosureLike) -> ClosureInput:
    return closure if isinstance(closure, ClosureInput) else ClosureInput(closure)


def _ignore(message: str) -> None:
    pass


def read_closure(closure: ClosureLike, on_note: Note = _ignore) -> Closure:
    """The closure, in any form Nix prints it, with NAR sizes (from the store on disk
    where the file has none)."""
    return load_closure(_source(closure), on_note)


def plan_image(
    closure: ClosureLike,
    layering: Layering = Layering(),
    base: str | None = None,
    on_note: Note = _ignore,
) -> Plan:
    """The layers of a closure's store paths, within ``layering.max_layers`` layers of
    store paths alone. The paths a ``base`` image nixlayer wrote holds get none."""
    source = _source(closure)
    loaded = load_closure(source, on_note)
    provided = image_store_paths(read_base(base)) if base else frozenset()
    return plan_closure(loaded, layering, provided, source)


def plan_fleet(closures: Sequence[ClosureLike], layering: Layering = Layering(),
               on_note: Note = _ignore) -> FleetPlan:  # fmt: skip
    """Several images planned together, so that the paths they share sit in identical
    layers; each image within ``layering.max_layers``."""
    for option in ("roots", "previous", "groups"):
        if getattr(layering, option):
            raise NixlayerError(": not for a fleet (it is for one image)", option)
    loaded = [load_closure(_source(closure), on_note) for closure in closures]
    return _plan_fleet(loaded, layering.strategy, layering.max_layers)


def save_plans(plans: Mapping[str, Plan]) -> None:
    """Each plan as JSON to its file (``-``: stdout); all or none, as they were planned
    together: a full disk fails before any plan takes its name."""
    with carried_by("output"), contextlib.ExitStack() as outputs:
        for destination, plan in plans.items():
            out = outputs.enter_context(atomic_output(destination))
            out.write(json.dumps(plan.to_json(), indent=2).encode() + b"\n")
            out.flush()


def fleet_plan_files(closures: Sequence[str | os.PathLike[str]], folder: str) -> list[str]:
    """Where each closure's plan goes: ``<stem>.plan.json`` in ``folder``, or, where
    stems repeat (a.json and b/a.json), named after their folders too."""
    if not os.path.isdir(folder):
        raise NixlayerError(
            f"{show_path(folder)}: a fleet's plans go into a folder, one per closure", "output"
        )
    files = [Path(closure) for closure in closures]
    stems = [file.stem for file in files]
    if len(set(stems)) < len(stems):
        stems = ["-".join(file.with_suffix("").parts[-2:]) for file in files]
    for file, stem in zip(files, stems, strict=True):
        if stems.count(stem) > 1:
            raise NixlayerError(
                f"{show_path(file)}: another closure's plan would also be "
                f"{show_path(stem)}.plan.json"
            )
    return [os.path.join(folder, f"{stem}.plan.json") for stem in stems]


def build_image(
    closure: ClosureLike,
    options: BuildOptions = BuildOptions(),
    progress: Progress | None = None,
    on_note: Note = _ignore,
    environ: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Read the closure and the base, plan the store layers within what the base and
    the customisation layer leave of the budget, and write the image. ``environ``
    (default: this process's) gives ``SOURCE_DATE_EPOCH`` and the cache's home."""
    environ = os.environ if environ is None else environ
    source = _source(closure)
    loaded = load_closure(source, on_note)
    base = None if options.base is None else read_base(options.base)
    run = image_run_config(base, options.run)
    plan, layers = store_layers(
        loaded, source.store_root, options.customisation, base, options.layering, source
    )
    settings = image_settings(options.identity, plan.roots, base, environ)
    spec = ImageSpec(settings, run, layers, base)
    output = options.output
    algorithm = output.compression
    if algorithm is None:
        algorithm = DEFAULT_COMPRESSION.get(output.image_format, "none")
    compression = parse_compression(algorithm, output.compress_level)
    cache_dir = default_cache_dir(dict(environ)) if output.cache_dir is None else output.cache_dir
    cache = LayerCache(cache_dir if output.use_cache else None)
    with carried_by("image_format"):
        image_format = format_named(output.image_format)
    if progress is not None:
        progress.start(sum(layer.size_hint for layer in spec.all_layers))
    told = (progress.update, progress.layer_done, progress.sized) if progress else ()
    with carried_by("output"):
        written = write_image(
            spec,
            image_format,
            image_format.DEFAULT_OUTPUT if output.path is None else output.path,
            Writing(compression, cache, output.clobber, *told),
        )
    return BuiltImage(written, plan)


def diff_builds(
    old: str, new: str, layering: Layering = Layering(), store_root: Path = Path("/")
) -> PushCost:
    """What changes between two builds' layers and what pushing the new one costs; each
    is a plan JSON, an image nixlayer wrote or a closure (planned with ``layering``)."""
    costs = []
    for option, value in (("old", old), ("new", new)):
        with carried_by(option):
            source = ClosureInput(value, store_root=store_root)
            costs.append(load_layering(value, source, layering.strategy, layering.max_layers))
    before, after = costs
    return push_cost(before.layer_sets(), after.layer_sets(), after.sizes())


def read_image(image: str) -> SourceImage:
    """A docker-archive, OCI layout or oci-archive (``PATH:REF`` for one of several)."""
    with carried_by("image"):
        return _read_image(image)


def describe_image(image: str) -> dict[str, object]:
    """What ``inspect --json`` prints: the config, and per layer its digests, size
    and store paths."""
    return _describe_image(read_image(image))
