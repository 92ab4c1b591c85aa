"""Issue 14 tried again as its new hostile user: more members of the classes of
sections 3, 5 and 6. Values that were taken for something else (an empty --name for
no name, ``--mtime 1_000`` for a thousand), image metadata of the wrong JSON type shown
as Python text, ``verify PATH:REF``, and a full temporary folder blamed on the image.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.handmade import input_error as _input_error
from test_hostile_inputs import _build, _docker_archive_with, _layout_copy, run, small

from nixlayer.errors import NixlayerError
from nixlayer.formats.files import decompressed_copy

__all__ = ["small"]  # the fixture, shared with test_hostile_inputs

PYTHON_TEXT = ("['", "{'", "None", "b'")


def _clean(line: str) -> str:
    for text in PYTHON_TEXT:
        assert text not in line, line
    return line


# --- integers in ASCII digits, as SOURCE_DATE_EPOCH -----------------------------------

INTEGER_FLAGS = {
    "--mtime": (),
    "--max-layers": (),
    "--compress-level": ("--compress", "gzip"),
}


@pytest.mark.parametrize("flag", sorted(INTEGER_FLAGS))
@pytest.mark.parametrize("value", ["\u0661\u0662", "1_0", " 5", "5 ", "+5", "\uff15", ""])
def test_integer_options_take_ascii_digits_only(
    small: dict[str, Path], tmp_path: Path, flag: str, value: str
) -> None:
    """Python's int() read all of these as numbers (``--mtime 1_000`` was 1000)."""
    out = tmp_path / "image.tar"
    result = _build(small, out, *INTEGER_FLAGS[flag], flag, value)
    _input_error(result, flag, "not a whole number in ASCII digits")
    assert not out.exists()


@pytest.mark.parametrize("flag", sorted(INTEGER_FLAGS))
def test_an_integer_of_thousands_of_digits_is_one_short_line(
    small: dict[str, Path], tmp_path: Path, flag: str
) -> None:
    result = _build(small, tmp_path / "image.tar", *INTEGER_FLAGS[flag], flag, "9" * 5000)
    assert len(_input_error(result, flag, "out of range")) < 600


def test_plan_and_diff_take_max_layers_in_ascii_digits(small: dict[str, Path]) -> None:
    _input_error(run("plan", small["closure"], "-q", "--max-layers", "1_0"), "--max-layers")
    _input_error(run("diff", small["closure"], small["closure"], "--max-layers", "\u0663"))


@pytest.mark.parametrize(
    "value", ["/x:0755:\u0660:\u0660", "/x:0755:" + "1" * 5000 + ":0"], ids=["arabic", "long"]
)
def test_mkdir_ids_in_ascii_digits_within_range(
    small: dict[str, Path], tmp_path: Path, value: str
) -> None:
    """Arabic-Indic digits were read as uid 0; 5000 digits were an internal error."""
    _input_error(_build(small, tmp_path / "image.tar", "--mkdir", value), "--mkdir")


def test_mkdir_ids_with_leading_zeros(small: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    assert _build(small, out, "--mkdir", "/x:0755:00000000000001:0").returncode == 0


# --- an empty value is refused, not taken for one not given ---------------------------

EMPTY_REFUSED = (
    "--name", "--tag", "--arch", "--compress", "--link-paths", "--workdir", "--user",
    "--stop-signal", "--cmd", "--entrypoint",
)  # fmt: skip


@pytest.mark.parametrize("flag", EMPTY_REFUSED)
def test_an_empty_value_is_refused(small: dict[str, Path], tmp_path: Path, flag: str) -> None:
    """``--name ""`` was the default name, ``--link-paths ""`` every path, ``--user ""``
    the base's user; ``--cmd ""`` a program named ""."""
    out = tmp_path / "image.tar"
    _input_error(_build(small, out, flag, ""), flag)
    assert not out.exists()


def _attrs(small: dict[str, Path], folder: Path, settings: dict[str, Any]) -> Path:
    closure = json.loads(small["closure"].read_text())
    attrs = folder / "attrs.json"
    attrs.write_text(json.dumps({"closure": closure, "nixlayer": settings}))
    return attrs


@pytest.mark.parametrize("key", ["from", "previous", "group", "tag", "link-paths"])
def test_an_empty_setting_is_refused(small: dict[str, Path], tmp_path: Path, key: str) -> None:
    """A settings file's "" for --from, --previous or --group was no base, no last build
    and no groups: its values skip the command line's parsers."""
    attrs = _attrs(small, tmp_path, {key: ""})
    out = tmp_path / "image.tar"
    result = run(
        "from-closure", attrs, "--attrs-key", "closure", "--settings-from-attrs",
        "--store-root", small["root"], "-q", "--no-cache", "-o", out,
    )  # fmt: skip
    _input_error(result, "attrs.json", repr(key), "empty")
    assert not out.exists()


# --- image metadata of the wrong JSON type, shown as JSON -----------------------------


def _put(layout: Path, value: Any) -> str:
    data = json.dumps(value).encode()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def _damaged_layout(small: dict[str, Path], tmp_path: Path, damage: str) -> Path:
    layout = _layout_copy(small, tmp_path)
    index = json.loads((layout / "index.json").read_text())
    descriptor = index["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / descriptor["digest"][7:]).read_text())
    if damage == "digest-list":
        descriptor["digest"] = [descriptor["digest"]]
    elif damage == "digest-missing":
        del descriptor["digest"]
    elif damage == "media-type-list":
        descriptor["mediaType"] = ["x"]
    else:
        if damage == "config-digest-object":
            manifest["config"]["digest"] = {"a": 1}
        elif damage == "layer-media-type-number":
            manifest["layers"][0]["mediaType"] = 5
        descriptor["digest"] = _put(layout, manifest)
        descriptor["size"] = len(json.dumps(manifest))
    (layout / "index.json").write_text(json.dumps(index))
    return layout


DAMAGES = {
    "digest-list": '["sha256:',
    "digest-missing": "null",
    "media-type-list": '["x"]',
    "config-digest-object": '{"a": 1}',
    "layer-media-type-number": "mediaType 5 is not a string",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_metadata_of_the_wrong_type_is_shown_as_json(
    small: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    """str() of such a value put "['sha256:…']" or "None" into the message; a layer's
    mediaType 5 was a tar that could not be read, or a layer not matching its diff_id."""
    layout = _damaged_layout(small, tmp_path, damage)
    _clean(_input_error(run("inspect", layout), DAMAGES[damage]))
    _clean(_input_error(_build(small, tmp_path / "out.tar", "--from", layout), DAMAGES[damage]))
    verified = run("verify", layout)
    assert verified.returncode == 1, verified.stdout
    problems = [line for line in verified.stdout.decode().splitlines() if "problem:" in line]
    assert problems and DAMAGES[damage] in problems[0], problems
    for line in problems:
        _clean(line)


def test_a_docker_manifest_whose_config_is_no_name(small: dict[str, Path], tmp_path: Path) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest[0]["Config"] = [manifest[0]["Config"]]
        return json.dumps(manifest).encode()

    image = _docker_archive_with(small["docker"], tmp_path / "image.tar", change)
    _clean(_input_error(run("inspect", image), "Config is not a file name"))


# --- verify PATH:REF --------------------------------------------------------------------


def test_verify_of_one_image_of_a_layout_says_what_it_checks(
    small: dict[str, Path], tmp_path: Path
) -> None:
    """``inspect PATH:REF`` works; ``verify PATH:REF`` said there was no such image."""
    layout = _layout_copy(small, tmp_path)
    ref = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"
    ]
    assert run("inspect", f"{layout}:{ref}").returncode == 0
    _input_error(run("verify", f"{layout}:{ref}"), "verify checks every image in", "without :")


# --- a compressed archive decompressed into a full temporary folder --------------------


class _FullDisk:
    """A temporary file on a full file system."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_full_temporary_folder_is_not_a_corrupt_image(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """It said "the gzip stream is corrupt: No space left on device", and verify
    reported the image as damaged."""
    compressed = tmp_path / "image.tar.gz"
    _gzip(small["docker"], compressed)
    monkeypatch.setattr(tempfile, "TemporaryFile", _FullDisk)
    line = _input_error(run(command, compressed), "TMPDIR", "No space left on device")
    assert "corrupt" not in line


def test_decompressed_copy_closes_its_file_on_a_full_disk(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = tmp_path / "image.tar.gz"
    _gzip(small["docker"], compressed)
    made: list[_FullDisk] = []
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda: made.append(_FullDisk()) or made[-1])
    with pytest.raises(NixlayerError, match="cannot decompress it into"):
        decompressed_copy(compressed, "gzip")
    assert made and made[0].closed


def _gzip(source: Path, target: Path) -> None:
    import gzip

    with source.open("rb") as plain, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(plain, packed)
