"""Bytes that must depend on the closure and the settings alone: hard-linked twins in
the store, files that change between the layout and the read, and times at the edges
of what a tar header and an RFC 3339 string hold (issue 14, sections 3 and 4)."""

from __future__ import annotations

import io
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.archives import layer_members, read_docker_archive
from support.handmade import Store
from support.handmade import input_error as _input_error
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore, copy_fixture_store
from support.tools import Tools, skopeo_inspect_config
from test_settings import _attrs_file

from nixlayer.errors import NixlayerError
from nixlayer.image import parse_created
from nixlayer.store import store_layer_entries
from nixlayer.tarwriter import READ_CHUNK, lay_out, write_layer

# --- hard-linked twins ----------------------------------------------------------------


def _image_bytes(
    store: FixtureStore, out: Path, image_format: str, *options: str
) -> dict[str, bytes]:
    """Every file of the image (one, or a layout folder's) by its path under ``out``."""
    run_ok(
        "from-closure", store.closure_file, "--store-root", store.root, "-o", out,
        "--format", image_format, "--no-cache", "-q", *options,
    )  # fmt: skip
    if out.is_file():
        return {".": out.read_bytes()}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("image_format", ["docker-archive", "oci"])
def test_hard_linked_twins_give_the_same_image_as_separate_files(
    fixture_store: FixtureStore, tmp_path: Path, image_format: str
) -> None:
    """The fixture store holds twins, as `nix-store --optimise` leaves them: two names
    of one inode in zlib, and one inode in zlib and in openssl. A copy (copytree keeps
    no hard link) holds separate files, as a store never optimised does. The image is
    the same to the bit, with the twins in one layer and in two."""
    plain = copy_fixture_store(fixture_store, tmp_path / "plain")
    zlib = fixture_store.path("zlib-1.3.1")
    twins = [(store.disk(zlib) / "lib/libz.so.1", store.disk(zlib) / "lib/libz.so.1.3.1")
             for store in (fixture_store, plain)]  # fmt: skip
    assert [os.path.samestat(os.stat(a), os.stat(b)) for a, b in twins] == [True, False]
    for options in ((), ("--max-layers", "1")):
        optimised, separate = (
            _image_bytes(store, tmp_path / f"{label}-{len(options)}", image_format, *options)
            for label, store in (("optimised", fixture_store), ("separate", plain))
        )
        assert optimised == separate, f"different images with {options or 'default layers'}"


# --- files that change between the layout and the read --------------------------------


def _grow(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"+")


def _socket_at(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        short = Path(tempfile.mkdtemp(dir="/tmp"), "s")  # a socket's path has 107 bytes at most
        server.bind(str(short))
        short.rename(path)
        short.parent.rmdir()


def _replaced(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        path.unlink()
        make(path)

    return change


# What happens to the file after the layer was laid out; a pipe or a shrink needs bytes
# to lose (an empty file that became an empty pipe reads as the empty file it was).
_CHANGES: dict[str, tuple[Callable[[Path], None], bool]] = {
    "grows": (_grow, True),
    "shrinks": (lambda path: os.truncate(path, path.stat().st_size - 1), False),
    "becomes a folder": (_replaced(Path.mkdir), True),
    "becomes a socket": (_replaced(_socket_at), True),
    "becomes a pipe": (_replaced(os.mkfifo), False),
}


def _error_after(folder: Path, size: int, change: Callable[[Path], None]) -> str:
    """The error of a layer whose one file of ``size`` bytes changed after its layout,
    with the file's path replaced by ``FILE``."""
    store_path = f"/nix/store/{'7' * 32}-changing"
    top = folder / "root" / store_path.lstrip("/")
    top.mkdir(parents=True)
    (top / "file").write_bytes(b"x" * size)
    layout = lay_out(
        store_layer_entries(os.fsencode(folder / "root"), "/nix/store", [store_path]), 1
    )
    change(top / "file")
    with pytest.raises(NixlayerError) as caught:
        write_layer(layout, io.BytesIO().write)
    return str(caught.value).replace(str(top / "file"), "FILE")


def test_a_file_changed_since_the_layout_is_the_same_error_whatever_its_size(
    tmp_path: Path,
) -> None:
    """Empty, small (read in one go with its header) or larger than a buffer: a file
    that grew, shrank or was replaced since the layer was laid out stops the layer
    with one message naming it. An empty file that gained bytes used to be stored
    empty, and a file replaced by a folder ended in a bare OSError."""
    sizes = (0, 100, READ_CHUNK + 100)
    for name, (change, empty_too) in _CHANGES.items():
        messages = {
            _error_after(tmp_path / f"{name}-{size}", size, change)
            for size in sizes
            if size or empty_too
        }
        assert len(messages) == 1, f"a file that {name}: {messages}"
        assert next(iter(messages)).startswith("FILE: "), messages


# --- times ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    top = store.add("app", "1")
    top.mkdir()
    (top / "data").write_bytes(b"data")
    return store


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0000-12-31T23:59:59Z"]
)
def test_created_out_of_range_in_utc_is_refused(store: Store, tmp_path: Path, value: str) -> None:
    out = tmp_path / "image.tar"
    _input_error(store.build(out, "--created", value), f"--created {value}: out of range")
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("0001-01-01T01:00:00+01:00", "0001-01-01T00:00:00Z"),  # strftime wrote "1-01-01…"
        ("0999-12-31t23:59:59.75z", "0999-12-31T23:59:59Z"),  # RFC 3339 is case-insensitive
    ],
)
def test_created_at_the_edges_is_written_as_rfc_3339(
    store: Store, tmp_path: Path, tools: Tools, value: str, written: str
) -> None:
    out = tmp_path / "image.tar"
    assert store.build(out, "--created", value).returncode == 0
    config = skopeo_inspect_config(out, tools.skopeo)
    assert [config["created"], *(h["created"] for h in config["history"])] == [written] * 2


@pytest.mark.parametrize(
    "value",
    [
        "2024-W01-1T00:00:00Z",
        "2024-01-01T00:00Z",
        "20240101T000000Z",
        "2024-01-01T00:00:00+01:00:30",
    ],
)
def test_created_that_is_not_rfc_3339_is_refused(value: str) -> None:
    """Forms Python's fromisoformat takes: ISO 8601's week dates, no seconds, its basic
    format, an offset with seconds."""
    with pytest.raises(NixlayerError, match="not an RFC 3339 time"):
        parse_created(value)


def test_an_empty_created_is_refused_not_taken_for_unset(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    _input_error(store.build(out, "--created", ""), "--created: not an RFC 3339 time")
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "'created' is empty"), ("0001-01-01T00:00:00+01:00", "'created' 0001")],
)
def test_created_from_the_settings_is_checked_like_the_flag(
    fixture_store: FixtureStore, tmp_path: Path, value: str, message: str
) -> None:
    attrs = _attrs_file(fixture_store, tmp_path, {"created": value})
    out = tmp_path / "image.tar"
    result = run_nixlayer(
        "from-closure", attrs, "--attrs-key", "closure", "--settings-from-attrs",
        "--store-root", fixture_store.root, "-o", out,
    )  # fmt: skip
    _input_error(result, message)
    assert not out.exists()


# 1700000000 in Arabic-Indic and in fullwidth digits; a superscript two.
_OTHER_DIGITS = ["\u0661\u0667" + "\u0660" * 8, "\uff11\uff17" + "\uff10" * 8, "\u00b2"]


@pytest.mark.parametrize("value", _OTHER_DIGITS)
def test_source_date_epoch_in_other_digits_is_refused(
    store: Store, tmp_path: Path, value: str
) -> None:
    """The convention asks for ASCII digits; Python's int() reads Arabic-Indic and
    fullwidth digits, and isdigit() passes superscripts that int() then refuses."""
    out = tmp_path / "image.tar"
    result = store.build(out, prefix=("env", f"SOURCE_DATE_EPOCH={value}"))
    _input_error(result, f"SOURCE_DATE_EPOCH={value}: ", "ASCII digits")
    assert not out.exists()


def test_source_date_epoch_0_is_time_0(store: Store, tmp_path: Path) -> None:
    """Not "unset": the config's times and every member's mtime, in the archive and
    in each layer, are 0."""
    out = tmp_path / "image.tar"
    assert store.build(out, prefix=("env", "SOURCE_DATE_EPOCH=0")).returncode == 0
    archive = read_docker_archive(out.read_bytes())
    created = [archive.config["created"], *(h["created"] for h in archive.config["history"])]
    assert set(created) == {"1970-01-01T00:00:00Z"}
    mtimes = {m.mtime for m in layer_members(out.read_bytes())}
    mtimes |= {m.mtime for layer in archive.layers for m in layer_members(layer)}
    assert mtimes == {0}
