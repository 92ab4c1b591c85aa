"""What a build is asked to do, as small frozen data classes grouped by concern: where
the closure comes from, how it is layered, what goes in the image root, how the image
runs, what it is called, and where it is written.

The API takes these. ``options_from_fields`` makes them from values as people give
them (the command line's strings, a Nix build's settings), keyed by the classes' field
names; an error about such a value names its field (``NixlayerError.option``), which
each front end words its own way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nixlayer.customisation import (
    AddFiles,
    Customisation,
    MakeDirectory,
    MakeSymlink,
    parse_add,
    parse_link_paths,
    parse_mkdir,
    parse_symlink,
)
from nixlayer.errors import NixlayerError, carried_by, show_path
from nixlayer.jsonfile import json_strings, load_json
from nixlayer.runconfig import RunConfig, parse_command

DEFAULT_STRATEGY = "cochange"
DEFAULT_MAX_LAYERS = 100

__all__ = [
    "AddFiles",
    "BuildOptions",
    "ClosureInput",
    "Customisation",
    "Identity",
    "Layering",
    "MakeDirectory",
    "MakeSymlink",
    "Output",
    "RunConfig",
    "options_from_fields",
]


@dataclass(frozen=True)
class ClosureInput:
    """Where the closure comes from: a closure file in any form Nix prints (``-`` for
    stdin), read as ``input_format`` says (None: detected); ``store_root`` is where the
    store directory is found on this machine."""

    closure: str | os.PathLike[str]
    input_format: str | None = None
    attrs_key: str | None = None
    store_dir: str | None = None
    store_root: Path = Path("/")


@dataclass(frozen=True)
class Layering:
    """How store paths are assigned to layers. ``previous`` is the last build (its plan
    JSON, image or closure), whose layers are kept where they can be; ``groups`` are
    lists of ``name-version`` globs whose paths share a layer."""

    strategy: str = DEFAULT_STRATEGY
    max_layers: int = DEFAULT_MAX_LAYERS
    roots: tuple[str, ...] = ()
    previous: str | None = None
    groups: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Identity:
    """The image's name (``NAME[:TAG]``) and platform, as given (None: the default: the
    root's name, a tag from the content, this machine's architecture, and
    ``SOURCE_DATE_EPOCH`` or the epoch for the times)."""

    name: str | None = None
    tag: str | None = None
    arch: str | None = None
    created: str | None = None
    mtime: int | None = None


@dataclass(frozen=True)
class Output:
    """Where and how the image is written. ``path`` None is ``image.tar`` (``image``
    for an OCI layout); ``compression`` None is gzip for OCI and none for a
    docker-archive; ``cache_dir`` None is ``$XDG_CACHE_HOME/nixlayer``."""

    path: str | None = None
    image_format: str = "docker-archive"
    compression: str | None = None
    compress_level: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    clobber: bool = True


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build_image`` is asked, but the closure."""

    layering: Layering = field(default_factory=Layering)
    customisation: Customisation = field(default_factory=Customisation)
    run: RunConfig = field(default_factory=RunConfig)
    identity: Identity = field(default_factory=Identity)
    output: Output = field(default_factory=Output)
    base: str | None = None


def _command(value: str | Sequence[str]) -> tuple[str, ...]:
    """A command as a string (a JSON array, or one argument) or a list of strings."""
    return tuple(parse_command(value) if isinstance(value, str) else value)


def load_groups(path: str | os.PathLike[str]) -> tuple[tuple[str, ...], ...]:
    """A JSON file of a list of lists of ``name-version`` globs."""
    groups = load_json(Path(path), show_path(path))
    if not isinstance(groups, list) or not all(json_strings(group) and group for group in groups):
        raise NixlayerError(
            f'{show_path(path)}: expected a list of lists of globs, like [["python3-*"]]'
        )
    return tuple(tuple(group) for group in groups)


def _link_paths(value: str | Sequence[str]) -> tuple[str, ...]:
    return parse_link_paths(value if isinstance(value, str) else ",".join(value))


# How a value as people give it becomes a field's value: each field named here is
# parsed so, any other is taken as it is.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "roots": tuple,
    "groups": load_groups,
    "contents": tuple,
    "link_paths": _link_paths,
    "adds": lambda values: tuple(map(parse_add, values)),
    "directories": lambda values: tuple(map(parse_mkdir, values)),
    "symlinks": lambda values: tuple(map(parse_symlink, values)),
    "cmd": _command,
    "entrypoint": _command,
    "env": tuple,
    "expose": tuple,
    "volumes": tuple,
    "labels": tuple,
    "config_file": Path,
    "store_root": Path,
    "cache_dir": Path,
}


def _group(kind: type, given: Mapping[str, Any]) -> Any:
    """A data class of ``kind`` from the values given for its fields (None: not given)."""
    values = {}
    for member in fields(kind):
        value = given.get(member.name)
        if value is not None:
            with carried_by(member.name):
                parse = _PARSERS.get(member.name)
                values[member.name] = parse(value) if parse else value
    return kind(**values)


def options_from_fields(given: Mapping[str, Any]) -> tuple[ClosureInput, BuildOptions]:
    """The options from values keyed by field name, each parsed as people write it
    (``adds`` as ``SRC:DEST[:MODE]``, ``cmd`` as a JSON array or one argument, ``groups``
    as a file of globs); a field not given (or None) keeps its default."""
    closure = _group(ClosureInput, given)
    options = BuildOptions(
        layering=_group(Layering, given),
        customisation=_group(Customisation, given),
        run=_group(RunConfig, given),
        identity=_group(Identity, given),
        output=_group(Output, given),
        base=given.get("base"),
    )
    return closure, options
