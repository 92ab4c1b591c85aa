"""Image settings from a structured-attrs file, for builds inside Nix.

A Nix function passes its arguments as one attribute (``nixlayer`` by default) of
the same ``.attrs.json`` that holds the closure, keyed by the command line's option
names (``max-layers``, ``from``), so that its builder needs no long command line.
Each becomes the API option field it stands for (``max_layers``, ``base``); options
given on the command line win over these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixlayer.errors import NixlayerError, show_path
from nixlayer.jsonfile import CLOSURE_SIZED_LIMIT, json_strings, load_json
from nixlayer.runconfig import check_run_config

DEFAULT_KEY = "nixlayer"

# Option name → the kind of value it takes: one string, a whole number, a list of
# strings (repeatable options), or a command (a list, or one string).
_KINDS = {
    **dict.fromkeys(
        (
            "name",
            "tag",
            "arch",
            "created",
            "workdir",
            "user",
            "stop-signal",
            "link-paths",
            "from",
            "strategy",
            "format",
            "compress",
            "store-dir",
            "previous",
            "group",
        ),
        "string",
    ),
    **dict.fromkeys(("mtime", "max-layers", "compress-level"), "integer"),
    **dict.fromkeys(
        ("env", "expose", "volume", "label", "contents", "add", "mkdir", "symlink", "root"),
        "strings",
    ),
    **dict.fromkeys(("cmd", "entrypoint"), "command"),
}
# The settings whose API option field is not the setting's name with underscores.
_FIELDS = {
    "from": "base",
    "format": "image_format",
    "compress": "compression",
    "group": "groups",
    "root": "roots",
    "volume": "volumes",
    "label": "labels",
    "add": "adds",
    "mkdir": "directories",
    "symlink": "symlinks",
}


@dataclass(frozen=True)
class Settings:
    """The settings as API option fields → values, and where they were read."""

    values: dict[str, Any]
    where: str  # the file and attribute, as a message shows them

    def name_of(self, option: str) -> str:
        """How a message names the setting that gave an option: by its key in the file."""
        key = next((k for k, f in _FIELDS.items() if f == option), option.replace("_", "-"))
        return f"{self.where}: {key!r}"


def _checked(key: str, value: Any, where: str) -> Any:
    kind = _KINDS[key]
    if kind == "string" and value == "":  # as on the command line: not "not set"
        raise NixlayerError(f"{where}: {key!r} is empty; null (or no {key!r}) is not set")
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "integer" and type(value) is int:
        return value
    if kind == "strings" and json_strings(value):
        return value
    if kind == "command" and isinstance(value, str):
        return value
    if kind == "command" and json_strings(value):
        return value
    raise NixlayerError(f"{where}: {key!r} must be {kind.replace('strings', 'a list of strings')}")


def load_attrs_settings(path: Path, key: str = DEFAULT_KEY) -> Settings:
    """The settings in attribute ``key`` of a structured-attrs file; ``config`` is an
    OCI ``config`` object."""
    attrs = load_json(path, show_path(path), CLOSURE_SIZED_LIMIT)
    where = f"{show_path(path)}: attribute {key!r}"
    settings = attrs.get(key) if isinstance(attrs, dict) else None
    if not isinstance(settings, dict):
        raise NixlayerError(f"{where} is missing or not an object of settings")
    values: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue  # Nix's null: not set
        if name == "config":
            check_run_config(value, f"{where}, config")
            values["config"] = value
        elif name in _KINDS:
            values[_FIELDS.get(name, name.replace("-", "_"))] = _checked(name, value, where)
        else:
            raise NixlayerError(f"{where}: unknown setting {name!r}")
    return Settings(values, where)
