"""The run config: what a container of the image runs, and how (the OCI image
config's ``config`` object: Cmd, Entrypoint, Env, ExposedPorts…).

Flags are named after ``docker run``'s. The result is layered: a base image's
config, then ``--config FILE``, then flags, each overriding the one before, with
Env, Labels, ExposedPorts and Volumes merged key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixlayer.errors import NixlayerError, carried_by, show_path
from nixlayer.jsonfile import json_strings, load_json, parse_json
from nixlayer.jsonstream import show_json

_LIST_FIELDS = ("Cmd", "Entrypoint")
_STRING_FIELDS = ("WorkingDir", "User", "StopSignal")
_SET_FIELDS = ("ExposedPorts", "Volumes")
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")
_ENV_NAME = re.compile(r"[^=\0]+")
# runc and umoci read a numeric user or group of User as a signed 32-bit id, and
# refuse the container (umoci the unpack) beyond it.
MAX_USER_ID = 2**31 - 1
_NUMBER = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class RunConfig:
    """How the image runs: the OCI config's ``config`` fields. ``config_file`` and
    ``config`` are whole ``config`` objects, merged over the base image's and under
    the fields given one by one; ``env`` and ``labels`` are ``KEY=VALUE``."""

    cmd: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    env: Sequence[str] = ()
    expose: Sequence[str] = ()
    workdir: str | None = None
    volumes: Sequence[str] = ()
    user: str | None = None
    labels: Sequence[str] = ()
    stop_signal: str | None = None
    config_file: Path | None = None
    config: Mapping[str, Any] | None = None


def parse_command(value: str) -> list[str]:
    """A JSON array of strings, or a plain string taken as one argument. An empty one
    would be a program named "", which no container can run: ``[]`` is no command."""
    if not value:
        raise NixlayerError(": empty; give [] for no command, or leave it out")
    if not value.lstrip().startswith("["):
        return [value]
    command = parse_json(value, show_json(value))
    if not json_strings(command):
        raise NixlayerError(f"{show_json(value)}: must be a JSON array of strings")
    return command


def _key_value(value: str) -> tuple[str, str]:
    key, equals, rest = value.partition("=")
    if not equals or not _ENV_NAME.fullmatch(key):
        raise NixlayerError(f"{value}: expected KEY=VALUE")
    return key, rest


def parse_port(value: str) -> str:
    """``PORT[/tcp|udp|sctp]`` as the config keys it: ``5000/tcp``."""
    match = _PORT.fullmatch(value)
    if match is None or not 0 < int(match[1]) < 65536:
        raise NixlayerError(f"{value}: expected PORT[/tcp|udp] with a port 1-65535")
    return f"{int(match[1])}/{match[2] or 'tcp'}"


def merge_env(*layers: Sequence[str]) -> list[str]:
    """Env lists merged by variable name; a later layer wins, order of first mention kept."""
    merged: dict[str, str] = {}
    for env in layers:
        for item in env:
            key, _, _ = item.partition("=")
            merged[key] = item
    return list(merged.values())


def _command(command: Sequence[str]) -> list[str]:
    if isinstance(command, str) or not json_strings(list(command)):
        raise NixlayerError(f"{show_json(command)}: must be a list of strings")
    return list(command)


def _given_config(run: RunConfig) -> dict[str, Any]:
    """The fields given one by one, as config fields; each error names its field."""
    config: dict[str, Any] = {}
    with carried_by("cmd"):
        if run.cmd is not None:
            config["Cmd"] = _command(run.cmd)
    with carried_by("entrypoint"):
        if run.entrypoint is not None:
            config["Entrypoint"] = _command(run.entrypoint)
    with carried_by("env"):
        if run.env:
            config["Env"] = ["=".join(_key_value(item)) for item in run.env]
    with carried_by("expose"):
        if run.expose:
            config["ExposedPorts"] = {parse_port(port): {} for port in run.expose}
    with carried_by("volumes"):
        if run.volumes:
            config["Volumes"] = {_absolute(v): {} for v in run.volumes}
    with carried_by("labels"):
        if run.labels:
            config["Labels"] = dict(map(_key_value, run.labels))
    checks = {"WorkingDir": _absolute, "User": check_user}
    for key, option, value in (
        ("WorkingDir", "workdir", run.workdir),
        ("User", "user", run.user),
        ("StopSignal", "stop_signal", run.stop_signal),
    ):
        if value == "":  # the config's "not set": it would not replace a base's value
            raise NixlayerError(": empty; leave it out to keep the default", option)
        if value is not None:
            check = checks.get(key)
            with carried_by(option):
                config[key] = check(value) if check else value
    return config


def _user_problem(user: str) -> str | None:
    """What is wrong with ``USER[:GROUP]``: a numeric part no runtime accepts as an id."""
    for part in user.split(":"):
        if _NUMBER.fullmatch(part) and not 0 <= int(part) <= MAX_USER_ID:
            return f"the id {part} is out of range (0 to {MAX_USER_ID}, as runc and umoci read it)"
    return None


def check_user(user: str) -> str:
    problem = _user_problem(user)
    if problem:
        raise NixlayerError(f"{user}: {problem}")
    return user


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise NixlayerError(f"{path}: must be an absolute path")
    return path


def load_config_file(path: Path) -> dict[str, Any]:
    """``--config FILE``: an OCI image config's ``config`` object, checked field by field."""
    source = show_path(path)
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
    problem = _user_problem(config["User"]) if isinstance(config.get("User"), str) else None
    if problem:
        raise NixlayerError(f"{source}: User {config['User']}: {problem}")
    for field in _SET_FIELDS:
        value = config.get(field)
        if value is not None and not isinstance(value, dict):
            raise NixlayerError(f'{source}: {field} must be an object like {{"KEY": {{}}}}')
    labels = config.get("Labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise NixlayerError(f"{source}: Labels must be an object of strings")


def run_config(base: dict[str, Any], run: RunConfig) -> dict[str, Any]:
    """The base's config, then ``config_file``, ``config`` and the fields given one by
    one, later ones winning; keys merged where docker does. A null field is one not
    set (docker writes ``"Labels": null``)."""
    with carried_by("config_file"):
        file_config = load_config_file(run.config_file) if run.config_file else {}
    inline = dict(run.config or {})
    with carried_by("config"):
        check_run_config(inline, "the config")
    merged: dict[str, Any] = {}
    for config in (base, file_config, inline, _given_config(run)):
        for key, value in config.items():
            if value is None:
                continue
            if key == "Env":
                merged["Env"] = merge_env(merged.get("Env", []), value)
            elif key in (*_SET_FIELDS, "Labels") and isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged
