"""Image settings read from a structured-attrs file (--settings-from-attrs)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from support.archives import read_docker_archive
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore

from nixlayer import options
from nixlayer.errors import NixlayerError
from nixlayer.settings import _KINDS, load_attrs_settings


def _attrs_file(store: FixtureStore, tmp_path: Path, settings: object) -> Path:
    attrs = {"closure": store.entries, "name": "drv-name", "nixlayer": settings}
    path = tmp_path / ".attrs.json"
    path.write_text(json.dumps(attrs))
    return path


def test_settings_become_options(fixture_store: FixtureStore, tmp_path: Path) -> None:
    settings = {
        "name": "from-attrs",
        "tag": "v1",
        "max-layers": 3,
        "config": {"Cmd": ["/bin/app"], "Env": ["A=1"]},
        "env": ["B=2"],
        "mkdir": ["/tmp:1777"],
        "format": "docker-archive",
        "created": None,
    }
    attrs = _attrs_file(fixture_store, tmp_path, settings)
    out = tmp_path / "image.tar"
    run_ok(
        "from-closure", attrs, "--attrs-key", "closure", "--settings-from-attrs",
        "--store-root", fixture_store.root, "-o", out, "--tag", "cli-wins",
    )  # fmt: skip
    archive = read_docker_archive(out.read_bytes())
    assert archive.manifest[0]["RepoTags"] == ["docker.io/library/from-attrs:cli-wins"]
    assert archive.config["config"] == {"Cmd": ["/bin/app"], "Env": ["A=1", "B=2"]}
    assert len(archive.config["rootfs"]["diff_ids"]) == 3  # 2 store layers + customisation


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("not an object", "not an object of settings"),
        ({"max-layers": "many"}, "'max-layers' must be integer"),
        ({"env": "A=1"}, "'env' must be a list of strings"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"config": {"Cmd": "sh"}}, "Cmd must be a list of strings"),
    ],
)
def test_bad_settings(
    settings: object, message: str, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    attrs = _attrs_file(fixture_store, tmp_path, settings)
    with pytest.raises(NixlayerError, match=message):
        load_attrs_settings(attrs)
    result = run_nixlayer(
        "from-closure", attrs, "--attrs-key", "closure", "--settings-from-attrs",
        "--store-root", fixture_store.root, "-o", tmp_path / "x.tar",
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1
    assert not (tmp_path / "x.tar").exists()


def test_an_mtime_from_the_settings_is_checked_like_the_flag_and_named_by_its_key(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """A millisecond timestamp would not fit a tar header's mtime field."""
    attrs = _attrs_file(fixture_store, tmp_path, {"mtime": 1_700_000_000_000})
    result = run_nixlayer(
        "from-closure", attrs, "--attrs-key", "closure", "--settings-from-attrs",
        "--store-root", fixture_store.root, "-o", tmp_path / "x.tar",
    )  # fmt: skip
    assert result.returncode == 2
    where = f"{attrs}: attribute 'nixlayer': 'mtime'"
    assert result.stderr.decode() == (
        f"nixlayer: error: {where} 1700000000000: must be from 0 to 8589934591\n"
    )
    assert not (tmp_path / "x.tar").exists()


def test_settings_become_option_fields(fixture_store: FixtureStore, tmp_path: Path) -> None:
    settings = {"cmd": ["uvicorn", "main:app"], "entrypoint": "/bin/sh", "from": "base.tar"}
    loaded = load_attrs_settings(_attrs_file(fixture_store, tmp_path, settings))
    assert loaded.values == {
        "cmd": ["uvicorn", "main:app"],
        "entrypoint": "/bin/sh",
        "base": "base.tar",
    }


_EXAMPLES = {"string": "x", "integer": 1, "strings": ["x"], "command": ["x"]}


def test_every_setting_is_an_option_field(tmp_path: Path) -> None:
    """A setting becomes the API option of its meaning, whatever the command line calls
    its parameter: renaming a CLI parameter cannot break a Nix build's settings."""
    groups = (options.ClosureInput, options.Layering, options.Customisation,
              options.RunConfig, options.Identity, options.Output)  # fmt: skip
    known = {"base", "config"} | {member.name for group in groups for member in fields(group)}
    path = tmp_path / "attrs.json"
    for key, kind in _KINDS.items():
        path.write_text(json.dumps({"nixlayer": {key: _EXAMPLES[kind]}}))
        settings = load_attrs_settings(path)
        (field,) = settings.values
        assert field in known, key
        assert settings.name_of(field) == f"{path}: attribute 'nixlayer': {key!r}"
