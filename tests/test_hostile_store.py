"""Hostile store trees, for the stage that reads the store and writes layers
(nixlayer/store.py, nixlayer/tarwriter.py): sockets, devices and FIFOs, symlinks never
followed, unreadable files and folders, a file changing while it is read, names that are
not UTF-8 or longer than 255 bytes, hard-link twins across layers, files over 8 GiB and
a million small files. Each must end in one ``nixlayer: error:`` line naming the path,
exit code 2, and nothing left at the destination; or, where the input is odd but legal,
in an exact image.

What tests/test_tarwriter.py and tests/test_end_to_end.py already cover (a FIFO inside a
store path, a missing store path, a file changed between layout and write) is not
repeated here. Slow cases run only with ``NIXLAYER_SLOW_TESTS=1``; the ones that
generate large stores are marked ``scale``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.archives import layer_members, read_docker_archive
from support.handmade import STORE, Store
from support.handmade import input_error as _input_error
from support.handmade import leftovers as _leftovers
from support.handmade import store_path as _path
from support.run import nixlayer_command

from nixlayer.report import format_report
from nixlayer.store import store_layer_entries
from nixlayer.tarwriter import lay_out, write_layer
from nixlayer.verify import verify_image

SLOW = os.environ.get("NIXLAYER_SLOW_TESTS") == "1"
slow = pytest.mark.skipif(not SLOW, reason="slow: set NIXLAYER_SLOW_TESTS=1")


# --- store trees through the CLI ----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def _members(archive: Path) -> dict[bytes, tarfile.TarInfo]:
    """Every member of every layer, by its name as bytes (not UTF-8 names included)."""
    found = {}
    for layer in read_docker_archive(archive.read_bytes()).layers:
        for member in layer_members(layer):
            found[os.fsencode(member.name)] = member
    return found


def _name(path: Path, root: Path) -> bytes:
    return os.fsencode(path.relative_to(root))


def test_socket_and_device_node_are_refused_with_their_path(store: Store, tmp_path: Path) -> None:
    top = store.add("special", "1")
    top.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        short = Path(tempfile.mkdtemp(dir="/tmp"), "s")  # a socket's path has 107 bytes at most
        server.bind(str(short))
        short.rename(top / "control.sock")
        short.parent.rmdir()
        _input_error(store.build(tmp_path / "a.tar"), "control.sock", "not this special file")
    (top / "control.sock").unlink()
    try:
        os.mknod(top / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    _input_error(store.build(tmp_path / "b.tar"), "/null", "not this special file")
    assert not list(tmp_path.glob("*.tar")) and _leftovers(tmp_path) == []


def test_store_path_that_is_a_fifo_is_refused(store: Store, tmp_path: Path) -> None:
    os.mkfifo(store.add("pipe", "1"))
    _input_error(store.build(tmp_path / "a.tar"), "-pipe", "not this special file")
    assert not (tmp_path / "a.tar").exists() and _leftovers(tmp_path) == []


def test_symlinks_are_archived_as_links_never_followed(store: Store, tmp_path: Path) -> None:
    """A loop, a self-loop, a dangling link and links out of the store are all kept
    as links, with their targets byte for byte; nothing they point to is read."""
    top = store.add("links", "1")
    top.mkdir()
    (top / "a").symlink_to("b")
    (top / "b").symlink_to("a")
    (top / "self").symlink_to("self")
    (top / "dangling").symlink_to("does/not/exist")
    (top / "passwd").symlink_to("/etc/passwd")
    (top / "up").symlink_to("../../../../etc")
    store.add("etc", "2").symlink_to("/etc")  # a store path that is a link elsewhere
    loop = store.add("loop", "3")
    loop.symlink_to(_path("loop", "3"))  # a store path that is a link to itself
    out = tmp_path / "image.tar"
    result = store.build(out)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    members = _members(out)
    expected = {
        top / "a": "b",
        top / "b": "a",
        top / "self": "self",
        top / "dangling": "does/not/exist",
        top / "passwd": "/etc/passwd",
        top / "up": "../../../../etc",
        store.root / _path("etc", "2").lstrip("/"): "/etc",
        loop: _path("loop", "3"),
    }
    for path, target in expected.items():
        member = members[_name(path, store.root)]
        assert member.issym() and member.linkname == target, member.name
    assert not any(b"/etc/" in name or name.endswith(b"passwd/") for name in members)
    assert verify_image(str(out)).ok


def test_unreadable_file_and_folder(store: Store, tmp_path: Path) -> None:
    """Root reads anything, so the CLI runs without the capabilities that let it
    (setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH) when the tests are root."""
    prefix = _without_read_override()
    secret = store.add("secret-file", "1")
    secret.mkdir()
    (secret / "key").write_bytes(b"k")
    (secret / "key").chmod(0)
    closed = store.add("closed-folder", "2")
    (closed / "inner").mkdir(parents=True)
    (closed / "inner" / "file").write_bytes(b"f")
    (closed / "inner").chmod(0)
    try:
        store.paths = [_path("secret-file", "1")]
        _input_error(
            store.build(tmp_path / "a.tar", prefix=prefix), "secret-file/key", "cannot read"
        )
        store.paths = [_path("closed-folder", "2")]
        _input_error(
            store.build(tmp_path / "b.tar", prefix=prefix), "closed-folder/inner", "cannot read"
        )
    finally:
        (closed / "inner").chmod(0o755)
    assert not list(tmp_path.glob("*.tar")) and _leftovers(tmp_path) == []


def _without_read_override() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    drop = ("--bounding-set=-dac_override,-dac_read_search",)
    if setpriv is None:
        pytest.skip("as root, reading is never denied; setpriv (util-linux) is missing")
    probe = subprocess.run([setpriv, *drop, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()}")
    return (setpriv, *drop)


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_file_changing_while_the_cli_reads_it(store: Store, tmp_path: Path, change: str) -> None:
    """A writer keeps changing a 64 MB file during the whole build: the size nixlayer
    laid the layer out with is never the size it reads, and it stops with an error
    instead of writing a layer whose header lies."""
    top = store.add("moving", "1")
    top.mkdir()
    moving = top / "data"
    moving.write_bytes(bytes(64 << 20))
    stop = threading.Event()

    def keep_changing() -> None:
        with moving.open("r+b") as file:
            size = 64 << 20
            while not stop.is_set():
                size += 4096 if change == "grows" else -4096
                file.truncate(size)
                time.sleep(0.0005)

    writer = threading.Thread(target=keep_changing)
    writer.start()
    try:
        result = store.build(tmp_path / "image.tar", "--no-cache")
    finally:
        stop.set()
        writer.join()
    word = "grew" if change == "grows" else "shrank"
    _input_error(result, str(moving), f"the file {word} while it was being read")
    assert not (tmp_path / "image.tar").exists() and _leftovers(tmp_path) == []


def test_names_that_are_not_utf8_are_archived_byte_exact(store: Store, tmp_path: Path) -> None:
    top = store.add("bytes", "1")
    top.mkdir()
    names = [b"latin1-\xe9t\xe9", b"lone-\xff", b"half-\xc3", b"ok-\xc3\xa9"]
    root = os.fsencode(top)
    for name in names:
        with open(os.path.join(root, name), "wb") as file:
            file.write(name)
    os.symlink(b"target-\xfe\xfd", os.path.join(root, b"link-\xfe"))
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    members = _members(out)
    base = _name(top, store.root)
    for name in names:
        assert members[base + b"/" + name].isfile()
    assert os.fsencode(members[base + b"/link-\xfe"].linkname) == b"target-\xfe\xfd"
    layer = next(layer for layer in read_docker_archive(out.read_bytes()).layers if base in layer)
    assert b"hdrcharset=BINARY" in layer  # the PAX way to say the names are raw bytes
    assert b"path=" + base + b"/lone-\xff" in layer


def test_names_and_link_targets_over_255_bytes(store: Store, tmp_path: Path) -> None:
    top = store.add("long", "1")
    deep = top / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    (deep / ("f" * 255)).write_bytes(b"deep")
    target = "/".join(["x" * 250] * 16)  # 4,015 bytes: near PATH_MAX
    (top / "long-link").symlink_to(target)
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    members = _members(out)
    file_name = _name(deep / ("f" * 255), store.root)
    assert len(file_name) > 700 and members[file_name].size == 4
    assert members[_name(top / "long-link", store.root)].linkname == target
    assert verify_image(str(out)).ok


def test_hard_link_twins_in_two_layers_make_self_contained_layers(
    store: Store, tmp_path: Path
) -> None:
    """One inode under three names in two store paths that land in different layers:
    every name is a file holding the bytes, so each layer unpacks alone."""
    first, second = store.add("first", "1"), store.add("second", "2")
    first.mkdir()
    second.mkdir()
    (first / "shared").write_bytes(b"shared bytes")
    os.link(first / "shared", second / "shared")
    os.link(first / "shared", first / "again")
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    report = verify_image(str(out))
    assert report.ok and report.layers == 2, format_report(report)
    members = _members(out)
    for path in (second / "shared", first / "again", first / "shared"):
        assert members[_name(path, store.root)].isfile()


@pytest.mark.scale
def test_file_over_8_gib_gets_a_pax_size_record(tmp_path: Path) -> None:
    """A sparse file of 8 GiB + 1 byte, laid out and streamed only as far as its
    header: the layout's size counts every byte, and the header carries a PAX size
    that tarfile reads back (USTAR's 11 octal digits stop at 8 GiB - 1)."""
    size = (8 << 30) + 1
    path = _path("huge", "1")
    on_disk = tmp_path / path.lstrip("/")
    on_disk.parent.mkdir(parents=True)
    with on_disk.open("wb") as file:
        file.truncate(size)
    layout = lay_out(store_layer_entries(os.fsencode(tmp_path), STORE, [path]), 1)
    head = io.BytesIO()

    class Enough(Exception):
        pass

    def write(data: Any) -> None:
        head.write(bytes(data))
        if head.tell() > 8192:
            raise Enough

    with pytest.raises(Enough):
        write_layer(layout, write)
    with tarfile.open(fileobj=io.BytesIO(head.getvalue()), mode="r|") as tar:
        member = next(m for m in tar if m.name == path.lstrip("/"))
        assert member.size == size and member.isfile()
        assert member.pax_headers["size"] == str(size)
    assert layout.size % 512 == 0 and layout.size > size


@pytest.mark.scale
@slow
def test_file_over_8_gib_streams_through_the_cli(store: Store, tmp_path: Path) -> None:
    """The whole 8 GiB + 1 through ``-o -`` into a reader that parses and counts it,
    so that no 8 GiB tar reaches the disk."""
    huge = store.add("huge", "1")
    with huge.open("wb") as file:
        file.seek(8 << 30)
        file.write(b"!")
    command = [*nixlayer_command(), "from-closure", str(store.closure()), "--store-root",
               str(store.root), "-o", "-", "-q"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        with tarfile.open(fileobj=process.stdout, mode="r|") as outer:
            seen = _stream_layers(outer)
    assert process.returncode == 0
    assert seen == {os.fsencode(_name(huge, store.root)): (8 << 30) + 1}


def _stream_layers(outer: tarfile.TarFile) -> dict[bytes, int]:
    """Regular files of every layer in a streamed docker-archive: name → bytes read,
    checking that the last byte is the ``!`` the test wrote."""
    seen = {}
    for member in outer:
        if not member.name.endswith("layer.tar"):
            continue
        with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
            for inner in layer:
                if inner.isfile() and inner.size:
                    data = layer.extractfile(inner)
                    assert data is not None
                    count, last = 0, b""
                    while chunk := data.read(8 << 20):
                        count, last = count + len(chunk), chunk[-1:]
                    assert last == b"!"
                    seen[os.fsencode(inner.name)] = count
    return seen


# Runs a command and prints its peak RSS on stderr. ru_maxrss of a child counts the
# memory of the process it was forked from, so the command must be forked from this
# small wrapper, not from pytest.
_PEAK_WRAPPER = (
    sys.executable,
    "-c",
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(f'peak-kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
    "file=sys.stderr); sys.exit(code)",
)


@pytest.mark.scale
@slow
def test_a_million_small_files(tmp_path: Path) -> None:
    """1,000,000 files of a few bytes in 1,000 folders of one store path: the image is
    written and verifies; the report gives the time and peak memory measured."""
    store = Store(tmp_path)
    top = store.add("many", "1")
    started = time.monotonic()
    for folder in range(1000):
        (top / f"{folder:03d}").mkdir(parents=True)
        for number in range(1000):
            (top / f"{folder:03d}" / f"f{number:03d}").write_bytes(b"%d\n" % number)
    made = time.monotonic() - started
    out = tmp_path / "image.tar"
    started = time.monotonic()
    result = store.build(out, "--no-cache", prefix=_PEAK_WRAPPER)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    peak = int(result.stderr.decode().rsplit("peak-kib=", 1)[1]) / 1024
    started = time.monotonic()
    report = verify_image(str(out))
    checked = time.monotonic() - started
    print(f"1M files: made {made:.0f} s, built {took:.0f} s, peak {peak:.0f} MiB, "
          f"verified {checked:.0f} s, {out.stat().st_size >> 20} MiB")  # fmt: skip
    assert report.ok, format_report(report)
    assert peak < 2048, f"peak RSS {peak:.0f} MiB"
