"""The run config: flags parsed like docker run's, layered over a base and a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixlayer.errors import NixlayerError
from nixlayer.runconfig import (
    RunConfig,
    check_run_config,
    load_config_file,
    parse_command,
    parse_port,
    run_config,
)


def test_commands_are_json_arrays_or_one_plain_argument() -> None:
    assert parse_command('["uvicorn", "main:app"]') == ["uvicorn", "main:app"]
    assert parse_command("echo hello world") == ["echo hello world"]
    with pytest.raises(NixlayerError, match="must be a JSON array of strings"):
        parse_command("[1, 2]")
    with pytest.raises(NixlayerError, match="not valid JSON"):
        parse_command("[oops")


@pytest.mark.parametrize(("port", "key"), [("5000", "5000/tcp"), ("53/udp", "53/udp")])
def test_ports(port: str, key: str) -> None:
    assert parse_port(port) == key


@pytest.mark.parametrize("port", ["0", "70000", "80/icmp", "http"])
def test_bad_ports(port: str) -> None:
    with pytest.raises(NixlayerError, match=f"^{port}: expected PORT"):
        parse_port(port)


def test_flags_become_the_oci_config() -> None:
    flags = RunConfig(
        cmd=["uvicorn", "main:app"],
        env=["UVICORN_HOST=0.0.0.0", "UVICORN_PORT=5000"],
        expose=["5000"],
        workdir="/app",
        volumes=["/app"],
        user="1000",
        labels=["a=b=c"],
        stop_signal="SIGINT",
    )
    assert run_config({}, flags) == {
        "Cmd": ["uvicorn", "main:app"],
        "Env": ["UVICORN_HOST=0.0.0.0", "UVICORN_PORT=5000"],
        "ExposedPorts": {"5000/tcp": {}},
        "WorkingDir": "/app",
        "Volumes": {"/app": {}},
        "User": "1000",
        "Labels": {"a": "b=c"},
        "StopSignal": "SIGINT",
    }


def test_base_then_file_then_flags_with_env_merged_by_name() -> None:
    base = {"Env": ["PATH=/bin", "LANG=C"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}}
    file = {"Env": ["LANG=C.UTF-8"], "User": "nobody"}
    flags = RunConfig(env=["PATH=/usr/bin"], expose=["443"], cmd=["run"], config=file)
    assert run_config(base, flags) == {
        "Env": ["PATH=/usr/bin", "LANG=C.UTF-8"],
        "Cmd": ["run"],
        "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
        "User": "nobody",
    }


def test_null_fields_of_a_base_are_unset() -> None:
    """docker writes ``"Labels": null``; flags then add to nothing."""
    base = {"Env": None, "Labels": None, "Volumes": None, "Cmd": ["sh"], "Entrypoint": None,
            "User": None}  # fmt: skip
    check_run_config(base, "--from base.tar")
    flags = RunConfig(env=["A=1"], labels=["k=v"], volumes=["/data"])
    assert run_config(base, flags) == {
        "Env": ["A=1"],
        "Labels": {"k": "v"},
        "Volumes": {"/data": {}},
        "Cmd": ["sh"],
    }


@pytest.mark.parametrize("env", ["NOEQUALS", "=value"])
def test_malformed_env(env: str) -> None:
    with pytest.raises(NixlayerError, match="expected KEY=VALUE") as raised:
        run_config({}, RunConfig(env=[env]))
    assert raised.value.option == "env"


def test_relative_workdir_is_refused() -> None:
    with pytest.raises(NixlayerError, match=r"^workdir app: must be an absolute path$"):
        run_config({}, RunConfig(workdir="app"))


def test_config_file_accepts_a_config_object_or_a_whole_image_config(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"Cmd": ["a"]}))
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps({"architecture": "amd64", "config": {"Cmd": ["b"]}}))
    assert load_config_file(plain) == {"Cmd": ["a"]}
    assert load_config_file(whole) == {"Cmd": ["b"]}


@pytest.mark.parametrize(
    "content",
    ["not json", "[1]", '{"Cmd": "sh"}', '{"Env": [1]}', '{"ExposedPorts": ["80"]}', '{"User": 1}'],
)
def test_malformed_config_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(NixlayerError, match=f"^{path}"):
        load_config_file(path)
