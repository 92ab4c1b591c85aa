"""The run config: what a container of the image runs, and how (the OCI image
config's ``config`` object: Cmd, Entrypoint, Env, ExposedPorts…).

Flags are named after ``docker run``'s. The result is layered: a base image's
config, then ``--config FILE``, then flags, each overriding the one before, with
Env, Labels, ExposedPorts and Volumes merged key by key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixlayer.errors import NixlayerError, show_path
from nixlayer.jsonfile import json_strings, load_json, parse_json
from nixlayer.jsonstream import show_json

_LIST_FIELDS = ("Cmd", "Entrypoint")
_STRING_FIELDS = ("WorkingDir", "User", "StopSignal")
_SET_FIELDS = ("ExposedPorts", "Volumes")
KNOWN_FIELDS = (*_LIST_FIELDS, *_STRING_FIELDS, *_SET_FIELDS, "Env", "Labels")
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")
_ENV_NAME = re.compile(r"[^=\0]+")
# runc and umoci read a numeric user or group of User as a signed 32-bit id, and
# refuse the container (umoci the unpack) beyond it.
MAX_USER_ID = 2**31 - 1
_NUMBER = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class RunFlags:
    """The run-config flags as given on the command line (None: not given)."""

    cmd: str | None = None
    entrypoint: str | None = None
    env: Sequence[str] = ()
    expose: Sequence[str] = ()
    workdir: str | None = None
    volumes: Sequence[str] = ()
    user: str | None = None
    labels: Sequence[str] = ()
    stop_signal: str | None = None


def parse_command(value: str, flag: str) -> list[str]:
    """A JSON array of strings, or a plain string taken as one argument. An empty one
    would be a program named "", which no container can run: ``[]`` is no command."""
    if not value:
        raise NixlayerError(f"{flag}: empty; give [] for no command, or leave it out")
    if not value.lstrip().startswith("["):
        return [value]
    command = parse_json(value, f"{flag} {show_json(value)}")
    if not json_strings(command):
        raise NixlayerError(f"{flag} {show_json(value)}: must be a JSON array of strings")
    return command


def _key_value(value: str, flag: str) -> tuple[str, str]:
    key, equals, rest = value.partition("=")
    if not equals or not _ENV_NAME.fullmatch(key):
        raise NixlayerError(f"{flag} {value}: expected KEY=VALUE")
    return key, rest


def parse_port(value: str) -> str:
    """``PORT[/tcp|udp|sctp]`` as the config keys it: ``5000/tcp``."""
    match = _PORT.fullmatch(value)
    if match is None or not 0 < int(match[1]) < 65536:
        raise NixlayerError(f"--expose {value}: expected PORT[/tcp|udp] with a port 1-65535")
    return f"{int(match[1])}/{match[2] or 'tcp'}"


def merge_env(*layers: Sequence[str]) -> list[str]:
    """Env lists merged by variable name; a later layer wins, order of first mention kept."""
    merged: dict[str, str] = {}
    for env in layers:
        for item in env:
            key, _, _ = item.partition("=")
            merged[key] = item
    return list(merged.values())


def _flag_config(flags: RunFlags) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if flags.cmd is not None:
        config["Cmd"] = parse_command(flags.cmd, "--cmd")
    if flags.entrypoint is not None:
        config["Entrypoint"] = parse_command(flags.entrypoint, "--entrypoint")
    if flags.env:
        config["Env"] = ["=".join(_key_value(item, "--env")) for item in flags.env]
    if flags.expose:
        config["ExposedPorts"] = {parse_port(port): {} for port in flags.expose}
    if flags.volumes:
        config["Volumes"] = {_absolute(v, "--volume"): {} for v in flags.volumes}
    if flags.labels:
        config["Labels"] = dict(_key_value(label, "--label") for label in flags.labels)
    checks = {"WorkingDir": _absolute, "User": check_user}
    for field, flag, value in (
        ("WorkingDir", "--workdir", flags.workdir),
        ("User", "--user", flags.user),
        ("StopSignal", "--stop-signal", flags.stop_signal),
    ):
        if value == "":  # the config's "not set": it would not replace a base's value
            raise NixlayerError(f"{flag}: empty; leave it out to keep the default")
        if value is not None:
            check = checks.get(field)
            config[field] = check(value, flag) if check else value
    return config


def check_user(user: str, source: str) -> str:
    """``USER[:GROUP]`` whose numeric parts are ids a runtime accepts."""
    for part in user.split(":"):
        if _NUMBER.fullmatch(part) and not 0 <= int(part) <= MAX_USER_ID:
            raise NixlayerError(
                f"{source} {user}: the id {part} is out of range (0 to {MAX_USER_ID}, "
                "as runc and umoci read it)"
            )
    return user


def _absolute(path: str, flag: str) -> str:
    if not path.startswith("/"):
        raise NixlayerError(f"{flag} {path}: must be an absolute path")
    return path


def load_config_file(path: Path) -> dict[str, Any]:
    """``--config FILE``: an OCI image config's ``config`` object, checked field by field."""
    source = f"--config {show_path(path)}"
    config = load_json(path, source)
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        config = config["config"]  # a whole image config was given
    check_run_config(config, source)
    return config


def check_run_config(config: Any, source: str) -> None:
    """The known fields must have the types the OCI spec gives them."""
    if not isinstance(config, dict):
        raise NixlayerError(f'{source}: must be a JSON object like {{"Cmd": [...]}}')
    for field in (*_LIST_FIELDS, "Env"):
        value = config.get(field)
        if value is not None and not json_strings(value):
            raise NixlayerError(f"{source}: {field} must be a list of strings")
    for field in _STRING_FIELDS:
        value = config.get(field)
        if value is not None and not isinstance(value, str):
            raise NixlayerError(f"{source}: {field} must be a string")
    if isinstance(config.get("User"), str):
        check_user(config["User"], f"{source}: User")
    for field in _SET_FIELDS:
        value = config.get(field)
        if value is not None and not isinstance(value, dict):
            raise NixlayerError(f'{source}: {field} must be an object like {{"KEY": {{}}}}')
    labels = config.get("Labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise NixlayerError(f"{source}: Labels must be an object of strings")


def run_config(*layers: dict[str, Any], flags: RunFlags = RunFlags()) -> dict[str, Any]:
    """Base, file and flags merged, later ones winning; keys merged where docker does.
    A null field is one not set (docker writes ``"Labels": null``)."""
    merged: dict[str, Any] = {}
    for config in (*layers, _flag_config(flags)):
        for field, value in config.items():
            if value is None:
                continue
            if field == "Env":
                merged["Env"] = merge_env(merged.get("Env", []), value)
            elif field in (*_SET_FIELDS, "Labels") and isinstance(value, dict):
                merged[field] = {**merged.get(field, {}), **value}
            else:
                merged[field] = value
    return merged
