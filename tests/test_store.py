"""Walking a store tree and computing NAR sizes without reading file contents."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from nixlayer.errors import NixlayerError
from nixlayer.store import Kind, nar_size, walk_store_path

STORE_PATH = "/nix/store/" + "1" * 32 + "-sample"


def _nar_string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + bytes(-len(data) % 8)


def _serialise(path: Path) -> bytes:
    """A straightforward NAR serialiser, written from the format's definition."""
    out = [_nar_string(b"("), _nar_string(b"type")]
    if path.is_symlink():
        out += [_nar_string(b"symlink"), _nar_string(b"target")]
        out.append(_nar_string(os.fsencode(os.readlink(path))))
    elif path.is_dir():
        out.append(_nar_string(b"directory"))
        for child in sorted(os.listdir(os.fsencode(path))):
            out += [_nar_string(s) for s in (b"entry", b"(", b"name", child, b"node")]
            out += [_serialise(path / os.fsdecode(child)), _nar_string(b")")]
    else:
        out.append(_nar_string(b"regular"))
        if os.access(path, os.X_OK):
            out += [_nar_string(b"executable"), _nar_string(b"")]
        out += [_nar_string(b"contents"), _nar_string(path.read_bytes())]
    out.append(_nar_string(b")"))
    return b"".join(out)


def _nar(path: Path) -> bytes:
    return _nar_string(b"nix-archive-1") + _serialise(path)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    top = tmp_path / STORE_PATH.lstrip("/")
    (top / "bin").mkdir(parents=True)
    (top / "bin" / "tool").write_bytes(b"#!/bin/sh\necho 1\n")
    (top / "bin" / "tool").chmod(0o755)
    (top / "share" / "doc").mkdir(parents=True)
    (top / "share" / "doc" / "README").write_bytes(b"r" * 13)
    (top / "lib").symlink_to("share")
    (top / "empty").mkdir()
    return tmp_path


def test_nar_size_matches_a_real_serialisation(sample: Path) -> None:
    entries = list(walk_store_path(os.fsencode(sample), STORE_PATH))
    assert nar_size(entries) == len(_nar(sample / STORE_PATH.lstrip("/")))


def test_nar_size_of_a_single_file_store_path(tmp_path: Path) -> None:
    on_disk = tmp_path / STORE_PATH.lstrip("/")
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"hello\n")
    entries = list(walk_store_path(os.fsencode(tmp_path), STORE_PATH))
    assert [e.kind for e in entries] == [Kind.FILE]
    assert nar_size(entries) == len(_nar(on_disk))


def test_modes_are_canonical_whatever_the_disk_says(sample: Path) -> None:
    top = sample / STORE_PATH.lstrip("/")
    (top / "share" / "doc" / "README").chmod(0o600)
    modes = {
        e.name.rsplit(b"/", 1)[1]: e.mode for e in walk_store_path(os.fsencode(sample), STORE_PATH)
    }
    assert modes[b"tool"] == 0o555
    assert modes[b"README"] == 0o444
    assert modes[b"doc"] == 0o555
    assert modes[b"lib"] == 0o777


def test_missing_store_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(NixlayerError, match="does not exist"):
        list(walk_store_path(os.fsencode(tmp_path), STORE_PATH))
