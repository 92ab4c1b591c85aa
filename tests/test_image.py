"""Image identity: architectures, names, times."""

from __future__ import annotations

import re

import pytest

from nixlayer.errors import NixlayerError
from nixlayer.image import (
    default_name,
    parse_architecture,
    parse_created,
    parse_name,
    qualified_name,
    source_date_epoch,
)


@pytest.mark.parametrize(
    ("value", "platform"),
    [
        ("x86_64-linux", ("amd64", None)),
        ("aarch64-linux", ("arm64", None)),
        ("i686-linux", ("386", None)),
        ("armv7l-linux", ("arm", "v7")),
        ("arm/v7", ("arm", "v7")),
        ("amd64", ("amd64", None)),
    ],
)
def test_architectures(value: str, platform: tuple[str, str | None]) -> None:
    assert parse_architecture(value) == platform


def test_unknown_architecture() -> None:
    with pytest.raises(NixlayerError, match=r"^sparc: unknown architecture"):
        parse_architecture("sparc")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("app", ("app", None)),
        ("app:1.0", ("app", "1.0")),
        ("localhost:5000/team/app", ("localhost:5000/team/app", None)),
        ("localhost:5000/team/app:v2", ("localhost:5000/team/app", "v2")),
    ],
)
def test_names(value: str, parsed: tuple[str, str | None]) -> None:
    assert parse_name(value) == parsed


@pytest.mark.parametrize("value", ["App", "app:", "app:-x", "a//b"])
def test_bad_names(value: str) -> None:
    with pytest.raises(NixlayerError, match=f"^{re.escape(value)}: ") as raised:
        parse_name(value)
    assert raised.value.option is None  # the caller says which option carried it


def test_default_name_comes_from_the_single_root() -> None:
    assert default_name(["/nix/store/" + "a" * 32 + "-Hello_World-2.10"]) == "hello_world-2.10"
    assert default_name(["/nix/store/a", "/nix/store/b"]) == "image"


def test_created_is_normalised_to_utc() -> None:
    assert parse_created("2024-05-01T12:00:00+02:00") == "2024-05-01T10:00:00Z"
    with pytest.raises(NixlayerError, match="time zone"):
        parse_created("2024-05-01T12:00:00")
    with pytest.raises(NixlayerError, match="RFC 3339"):
        parse_created("yesterday")


def test_source_date_epoch() -> None:
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1700000000
    assert source_date_epoch({}) is None
    with pytest.raises(NixlayerError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "soon"})


@pytest.mark.parametrize(
    ("name", "qualified"),
    [
        ("app:v1", "docker.io/library/app:v1"),
        ("team/app:v1", "docker.io/team/app:v1"),
        ("registry.example/team/app:v1", "registry.example/team/app:v1"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("localhost/app:v1", "localhost/app:v1"),
    ],
)
def test_names_are_qualified_as_docker_spells_them(name: str, qualified: str) -> None:
    assert qualified_name(name) == qualified
