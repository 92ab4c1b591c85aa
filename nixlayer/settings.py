"""Image settings from a structured-attrs file, for builds inside Nix.

A Nix function passes its arguments as one attribute (``nixlayer`` by default) of
the same ``.attrs.json`` that holds the closure, keyed by the command line's option
names, so that its builder needs no long command line. Options given on the command
line win over these.
"""

from __future__ import annotations

import json
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
_PARAMETERS = {"from": "from_image", "format": "image_format"}


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
        return json.dumps(value)
    raise NixlayerError(f"{where}: {key!r} must be {kind.replace('strings', 'a list of strings')}")


def load_attrs_settings(path: Path, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """The settings as CLI parameter names → values; ``config`` (an OCI ``config``
    object) comes back as ``inline_config``. The closure on stdin cannot be read
    again for them: that is refused."""
    if path == Path("-"):
        raise NixlayerError(
            "--settings-from-attrs: reads the closure's file a second time, so the closure "
            "cannot come from stdin (-); give the .attrs.json file's path"
        )
    attrs = load_json(path, f"--settings-from-attrs {show_path(path)}", CLOSURE_SIZED_LIMIT)
    where = f"{show_path(path)}: attribute {key!r}"
    settings = attrs.get(key) if isinstance(attrs, dict) else None
    if not isinstance(settings, dict):
        raise NixlayerError(f"{where} is missing or not an object of settings")
    parameters: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue  # Nix's null: not set
        if name == "config":
            check_run_config(value, f"{where}, config")
            parameters["inline_config"] = value
        elif name in _KINDS:
            parameter = _PARAMETERS.get(name, name.replace("-", "_"))
            parameters[parameter] = _checked(name, value, where)
        else:
            raise NixlayerError(f"{where}: unknown setting {name!r}")
    return parameters
