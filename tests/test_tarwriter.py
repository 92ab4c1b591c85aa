"""The layer tar writer, read back with Python's tarfile and GNU tar."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from nixlayer.errors import NixlayerError
from nixlayer.store import store_layer_entries, walk_store_path
from nixlayer.tarwriter import LayerLayout, file_header, header, lay_out, write_layer

HASH = "0" * 32


def _store_path(root: Path, name: str) -> tuple[str, Path]:
    logical = f"/nix/store/{HASH}-{name}"
    on_disk = root / logical.lstrip("/")
    on_disk.parent.mkdir(parents=True, exist_ok=True)
    return logical, on_disk


def lay_out_layer(root: bytes, paths: list[str], mtime: int) -> LayerLayout:
    return lay_out(store_layer_entries(root, "/nix/store", paths), mtime)


def _layer_bytes(root: Path, paths: list[str], mtime: int = 1) -> tuple[bytes, str]:
    layout = lay_out_layer(os.fsencode(root), paths, mtime)
    out = io.BytesIO()
    digest = write_layer(layout, out.write)
    data = out.getvalue()
    assert len(data) == layout.size
    return data, digest


@pytest.fixture
def tricky_store(tmp_path: Path) -> tuple[Path, str]:
    logical, top = _store_path(tmp_path, "tricky")
    top.mkdir()
    (top / "bin").mkdir()
    (top / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    (top / "bin" / "run").chmod(0o700)
    (top / "data.txt").write_bytes(b"x" * 3000)
    (top / "data.txt").chmod(0o644)
    os.link(top / "data.txt", top / "twin.txt")
    deep = top / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"deep")
    (top / "naïve-ünïcode").write_bytes(b"utf8")
    (top / os.fsdecode(b"latin1-\xe9")).write_bytes(b"not utf8")
    (top / "link").symlink_to("bin/run")
    (top / "longlink").symlink_to("/nix/store/" + "t" * 200)
    (top / "empty").mkdir()
    return tmp_path, logical


def test_layer_reads_back_with_tarfile(tricky_store: tuple[Path, str]) -> None:
    root, logical = tricky_store
    data, digest = _layer_bytes(root, [logical])
    assert digest == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
        base = logical.lstrip("/")
        assert names[:2] == ["nix", "nix/store"]
        assert [os.fsencode(n) for n in names[2:]] == sorted(os.fsencode(n) for n in names[2:])
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 1 for m in members.values())
        assert all(m.uname == "" and m.gname == "" for m in members.values())
        assert members["nix"].mode == members["nix/store"].mode == 0o755
        assert members[base].isdir() and members[base].mode == 0o555
        assert members[f"{base}/bin/run"].mode == 0o555
        assert members[f"{base}/data.txt"].mode == 0o444
        assert tar.extractfile(f"{base}/data.txt").read() == b"x" * 3000
        twin = members[f"{base}/twin.txt"]  # a hard link on disk, a file in full here
        assert twin.isreg() and tar.extractfile(twin).read() == b"x" * 3000
        deep = f"{base}/{'d' * 90}/{'e' * 90}/{'f' * 120}"
        assert tar.extractfile(deep).read() == b"deep"
        assert tar.extractfile(f"{base}/naïve-ünïcode").read() == b"utf8"
        assert tar.extractfile(f"{base}/" + os.fsdecode(b"latin1-\xe9")).read() == b"not utf8"
        assert members[f"{base}/link"].issym() and members[f"{base}/link"].mode == 0o777
        assert members[f"{base}/link"].linkname == "bin/run"
        assert members[f"{base}/longlink"].linkname == "/nix/store/" + "t" * 200
        assert members[f"{base}/empty"].isdir()


def test_gnu_tar_lists_the_layer_without_complaint(
    tricky_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, logical = tricky_store
    data, _ = _layer_bytes(root, [logical])
    layer = tmp_path / "layer.tar"
    layer.write_bytes(data)
    listing = subprocess.run(
        ["tar", "-tvf", str(layer)], capture_output=True, check=True
    ).stdout.decode(errors="replace")
    assert "ffff" in listing and "naïve-ünïcode" in listing


def test_same_store_gives_same_bytes_whatever_the_disk_metadata(
    tricky_store: tuple[Path, str],
) -> None:
    root, logical = tricky_store
    first, _ = _layer_bytes(root, [logical])
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.utime(path, (12345, 67890))
    assert _layer_bytes(root, [logical])[0] == first


def test_store_path_that_is_a_single_file_or_symlink(tmp_path: Path) -> None:
    file_path, on_disk = _store_path(tmp_path, "script")
    on_disk.write_bytes(b"echo hi\n")
    on_disk.chmod(0o755)
    link_path, link_on_disk = _store_path(tmp_path, "alias")
    link_on_disk.symlink_to(file_path)
    data, _ = _layer_bytes(tmp_path, [file_path, link_path])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        script = tar.getmember(file_path.lstrip("/"))
        alias = tar.getmember(link_path.lstrip("/"))
        assert script.isfile() and script.mode == 0o555
        assert alias.issym() and alias.linkname == file_path


@pytest.mark.parametrize("change", [b"more", b""])
def test_file_that_changes_size_while_read_is_an_error(tmp_path: Path, change: bytes) -> None:
    logical, on_disk = _store_path(tmp_path, "moving")
    on_disk.mkdir()
    (on_disk / "f").write_bytes(b"1234")
    layout = lay_out_layer(os.fsencode(tmp_path), [logical], 1)
    (on_disk / "f").write_bytes(b"1234" + change if change else b"12")
    with pytest.raises(NixlayerError, match="while it was being read"):
        write_layer(layout, io.BytesIO().write)


def test_special_files_are_refused(tmp_path: Path) -> None:
    logical, on_disk = _store_path(tmp_path, "fifo")
    on_disk.mkdir()
    os.mkfifo(on_disk / "pipe")
    with pytest.raises(NixlayerError, match="pipe"):
        lay_out_layer(os.fsencode(tmp_path), [logical], 1)


def test_sizes_beyond_ustar_use_a_pax_size_record() -> None:
    size = 9 * 1024**3
    blocks = file_header(b"big", size, 1)
    with tarfile.open(fileobj=io.BytesIO(blocks), mode="r:") as tar:
        member = tar.next()
    assert member is not None and member.name == "big" and member.size == size


def test_ustar_prefix_is_used_before_pax() -> None:
    name = b"nix/store/" + b"a" * 120 + b"/short"
    assert len(header(name, 0o444, 0, 1, b"0")) == 512
    assert len(header(b"x" * 101, 0o444, 0, 1, b"0")) > 512


def test_walk_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    logical, on_disk = _store_path(tmp_path, "escape")
    on_disk.mkdir()
    (on_disk / "door").symlink_to(outside)
    names = [e.name for e in walk_store_path(os.fsencode(tmp_path), logical)]
    assert not any(name.endswith(b"secret") for name in names)


@pytest.mark.parametrize("swapped", ["folder", "store-path", "file"])
def test_a_symlink_swapped_in_after_the_walk_is_never_followed(
    tmp_path: Path, swapped: str
) -> None:
    """Between the layout (from lstat) and the read, a folder, the store path itself or
    the file is replaced by a symlink to a tree outside with a file of the same size:
    the layer stops with an error and never holds the outside bytes."""
    logical, top = _store_path(tmp_path / "root", "victim")
    (top / "lib" / "deep").mkdir(parents=True)
    (top / "lib" / "deep" / "file").write_bytes(b"inside")
    outside = tmp_path / "outside"
    (outside / "lib" / "deep").mkdir(parents=True)
    (outside / "lib" / "deep" / "file").write_bytes(b"SECRET")
    layout = lay_out_layer(os.fsencode(tmp_path / "root"), [logical], 1)
    victim = {"folder": top / "lib", "store-path": top, "file": top / "lib/deep/file"}[swapped]
    victim.rename(victim.with_name("moved"))
    victim.symlink_to(outside / victim.relative_to(top) if swapped != "store-path" else outside)
    out = io.BytesIO()
    with pytest.raises(NixlayerError, match="replaced while it was being read"):
        write_layer(layout, out.write)
    assert b"SECRET" not in out.getvalue()
