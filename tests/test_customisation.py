"""The customisation layer: symlinkJoin-like links, host files, directories, clashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nixlayer.closure import RawEntry, make_closure
from nixlayer.customisation import (
    Customisation,
    customisation_entries,
    parse_add,
    parse_link_paths,
    parse_mkdir,
    parse_symlink,
)
from nixlayer.errors import NixlayerError
from nixlayer.store import Kind

TOOL = "/nix/store/" + "a" * 32 + "-tool-1.0"
LIB = "/nix/store/" + "b" * 32 + "-lib-2.0"
SINGLE = "/nix/store/" + "c" * 32 + "-script"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    tool = tmp_path / TOOL.lstrip("/")
    (tool / "bin").mkdir(parents=True)
    (tool / "bin" / "tool").write_text("#!/bin/sh\n")
    (tool / "share" / "doc").mkdir(parents=True)
    (tool / "share" / "doc" / "tool.txt").write_text("doc")
    lib = tmp_path / LIB.lstrip("/")
    (lib / "bin").mkdir(parents=True)
    (lib / "bin" / "libtool").symlink_to("../share/x")
    (lib / "share" / "doc").mkdir(parents=True)
    (lib / "share" / "doc" / "lib.txt").write_text("doc")
    (tmp_path / SINGLE.lstrip("/")).write_text("echo")
    return tmp_path


def _closure() -> object:
    return make_closure(
        [RawEntry(p, (), 1) for p in (TOOL, LIB, SINGLE)], "/nix/store", "closure.json"
    )


def _entries(store: Path, **kwargs: object) -> dict[str, tuple[Kind, int, str]]:
    entries = customisation_entries(Customisation(**kwargs), _closure(), os.fsencode(store))
    return {os.fsdecode(e.name): (e.kind, e.mode, os.fsdecode(e.target)) for e in entries}


def test_contents_are_merged_like_symlink_join(store: Path) -> None:
    entries = _entries(store, contents=(TOOL, LIB))
    assert entries["bin"] == (Kind.DIRECTORY, 0o755, "")
    assert entries["bin/tool"] == (Kind.SYMLINK, 0o777, f"{TOOL}/bin/tool")
    assert entries["bin/libtool"] == (Kind.SYMLINK, 0o777, f"{LIB}/bin/libtool")
    assert entries["share/doc"] == (Kind.DIRECTORY, 0o755, "")
    assert entries["share/doc/tool.txt"][2] == f"{TOOL}/share/doc/tool.txt"
    assert entries["share/doc/lib.txt"][2] == f"{LIB}/share/doc/lib.txt"


def test_link_paths_limit_what_is_linked(store: Path) -> None:
    entries = _entries(store, contents=(TOOL, LIB), link_paths=("/bin",))
    assert set(entries) == {"bin", "bin/tool", "bin/libtool"}


def test_two_files_at_one_place_is_a_clash_naming_both(store: Path) -> None:
    (store / LIB.lstrip("/") / "bin" / "tool").write_text("other")
    with pytest.raises(NixlayerError, match=f"/bin/tool.*{TOOL}.*{LIB}"):
        _entries(store, contents=(TOOL, LIB))


def test_contents_must_be_in_the_closure_and_a_directory(store: Path) -> None:
    with pytest.raises(NixlayerError, match="not a path of the closure"):
        _entries(store, contents=("/nix/store/" + "d" * 32 + "-other",))
    with pytest.raises(NixlayerError, match="single file"):
        _entries(store, contents=(SINGLE,))


def test_added_files_get_root_modes_and_parents(store: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "main.py").write_text("print(1)")
    (app / "run.sh").write_text("#!/bin/sh")
    (app / "run.sh").chmod(0o700)
    (app / "main.py").chmod(0o600)
    conf = tmp_path / "x.conf"
    conf.write_text("a=1")
    entries = _entries(
        store,
        adds=(parse_add(f"{app}:/srv/app"), parse_add(f"{conf}:/etc/x.conf:0440")),
    )
    assert entries["srv"] == (Kind.DIRECTORY, 0o755, "")
    assert entries["srv/app"] == (Kind.DIRECTORY, 0o755, "")
    assert entries["srv/app/main.py"][:2] == (Kind.FILE, 0o644)
    assert entries["srv/app/run.sh"][:2] == (Kind.FILE, 0o755)
    assert entries["srv/app/pkg"][:2] == (Kind.DIRECTORY, 0o755)
    assert entries["etc/x.conf"][:2] == (Kind.FILE, 0o440)


def test_mkdir_overrides_an_implied_parent_and_symlinks(store: Path, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_text("a=1")
    entries = customisation_entries(
        Customisation(
            adds=(parse_add(f"{conf}:/data/x.conf"),),
            directories=(parse_mkdir("/data:0700:1000:100"),),
            symlinks=(parse_symlink("/usr/bin/env:/bin/env"),),
        ),
        _closure(),
        os.fsencode(store),
    )
    by_name = {e.name: e for e in entries}
    assert by_name[b"data"].mode == 0o700 and by_name[b"data"].owner == (1000, 100)
    assert by_name[b"usr/bin/env"].target == b"/bin/env"


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (parse_add, "x:relative/dest", "absolute DEST"),
        (parse_add, "nodest", "absolute DEST"),
        (parse_mkdir, "/tmp:999", "DEST"),
        (parse_symlink, "/only-dest", "DEST:TARGET"),
    ],
)
def test_malformed_flags(parse: object, value: str, message: str) -> None:
    with pytest.raises(NixlayerError, match=message):
        parse(value)  # type: ignore[operator]


def test_dest_with_dotdot_or_in_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_text("a=1")
    with pytest.raises(NixlayerError, match=r"'\.\.'"):
        _entries(store, adds=(parse_add(f"{conf}:/etc/../../x"),))
    with pytest.raises(NixlayerError, match="inside the store"):
        _entries(store, adds=(parse_add(f"{conf}:/nix/store/x"),))
    with pytest.raises(NixlayerError, match="does not exist"):
        _entries(store, adds=(parse_add(f"{tmp_path}/missing:/x"),))
    with pytest.raises(NixlayerError, match=r"'\.\.'"):
        parse_link_paths("/bin,/../etc")


def test_nothing_asked_gives_no_entries(store: Path) -> None:
    assert _entries(store) == {}
    assert not Customisation()
