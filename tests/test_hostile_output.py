"""``-o`` never destroys what it names, and no build reports success over an image its
own ``verify`` rejects: for every command that writes (from-closure in each format,
plan, plan --fleet).

A symlink given as ``-o`` stays: the file it leads to gets the output, and one that
leads to a descriptor (``/proc/self/fd/N``, as ``/dev/stdout`` does), a pipe or a
socket is written through. Writing in place is for a derivation's own output only.
An OCI layout written into trusts no blob by its name, keeps nothing of a run that
failed, and refuses a folder whose ``oci-layout`` file is not a layout's. A full disk,
a read-only folder or a folder that does not exist is one error line, and leaves
nothing; a file in the way is replaced atomically, or kept with ``--no-clobber``.

The real ``/dev/stdout`` is never used as ``-o`` here: a nixlayer that replaced it
would replace it for the whole machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.handmade import P1, P2, P3, Store
from support.handmade import entry as _entry
from support.handmade import input_error as _input_error
from support.handmade import leftovers as _leftovers
from support.handmade import small_store as _small_store
from support.run import nixlayer_command, run_nixlayer, run_ok

from nixlayer.errors import NixlayerError
from nixlayer.output import atomic_output
from nixlayer.report import format_report
from nixlayer.verify import verify_image

ARCHIVES = ["docker-archive", "oci-archive"]


def _args(store: Store, *args: str | os.PathLike[str], cached: bool = False) -> list[str]:
    """``from-closure``'s arguments for the store, and ``args``; the layer cache only
    if ``cached`` (then with a --cache-dir among ``args``)."""
    base = ["from-closure", store.closure(), "--store-root", store.root, "-q"]
    return [*map(str, base), *map(str, args), *([] if cached else ["--no-cache"])]


def _command(store: Store, *args: str | os.PathLike[str]) -> list[str]:
    return [*nixlayer_command(), *_args(store, *args)]


def _output(store: Store, what: str, out: str | Path) -> list[str]:
    """The command that writes ``what`` (an image format, or a plan) to ``out``."""
    if what == "plan":
        return [*nixlayer_command(), "plan", str(store.closure()), "-q", "-o", str(out)]
    return _command(store, "--format", what, "-o", out)


def _expected(store: Store, what: str, folder: Path) -> bytes:
    """The bytes a plain file destination gets (builds are reproducible)."""
    out = folder / f"expected-{what}"
    subprocess.run(_output(store, what, out), check=True, timeout=300)
    return out.read_bytes()


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative name, with its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- -o through links, descriptors, pipes and sockets ---------------------------------


@pytest.mark.parametrize("what", [*ARCHIVES, "plan"])
def test_a_link_to_a_descriptor_is_written_through(tmp_path: Path, what: str) -> None:
    """``ln -s /proc/self/fd/1 mystdout; nixlayer … -o mystdout > r.tar``, through a
    second link too: r.tar gets the output, both links stay."""
    store = _small_store(tmp_path, 4096)
    link = tmp_path / "mystdout"
    link.symlink_to("/proc/self/fd/1")
    chained = tmp_path / "chained"
    chained.symlink_to(link.name)
    received = tmp_path / "r.out"
    with received.open("wb") as stdout:
        result = subprocess.run(_output(store, what, chained), stdout=stdout, timeout=300)
    assert result.returncode == 0
    assert received.read_bytes() == _expected(store, what, tmp_path)
    assert os.readlink(link) == "/proc/self/fd/1" and os.readlink(chained) == link.name


def test_a_descriptor_is_written_at_its_own_position(tmp_path: Path) -> None:
    """Through the descriptor itself, not the file reopened: ``>>`` appends."""
    store = _small_store(tmp_path, 4096)
    link = tmp_path / "mystdout"
    link.symlink_to("/proc/self/fd/1")
    received = tmp_path / "log"
    received.write_bytes(b"before\n")
    with received.open("ab") as stdout:
        subprocess.run(_command(store, "-o", link), stdout=stdout, check=True, timeout=300)
    expected = _expected(store, "docker-archive", tmp_path)
    assert received.read_bytes() == b"before\n" + expected


def test_a_socket_is_written_through(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 4096)
    path = tmp_path / "image.sock"
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def accept() -> None:
            connection, _ = server.accept()
            with connection, connection.makefile("rb") as stream:
                received.append(stream.read())

        reader = threading.Thread(target=accept, daemon=True)
        reader.start()
        result = subprocess.run(_command(store, "-o", path), capture_output=True, timeout=300)
        reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert received == [_expected(store, "docker-archive", tmp_path)]
    assert path.is_socket()


@pytest.mark.parametrize(
    ("what", "target"), [("docker-archive", "file"), ("oci-archive", "nothing"), ("plan", "file")]
)
def test_a_link_to_a_file_or_nothing_keeps_the_link(tmp_path: Path, what: str, target: str) -> None:
    """The file the link leads to gets the output, atomically (a hard link to the
    old one keeps its bytes); a dangling link's target is created."""
    store = _small_store(tmp_path, 4096)
    (tmp_path / "images").mkdir()
    file = tmp_path / "images" / "image"
    if target == "file":
        file.write_bytes(b"the previous image")
        os.link(file, tmp_path / "previous")
    link = tmp_path / "link"
    link.symlink_to("images/image")
    result = subprocess.run(_output(store, what, link), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.readlink(link) == "images/image"
    assert file.read_bytes() == _expected(store, what, tmp_path)
    if target == "file":
        assert (tmp_path / "previous").read_bytes() == b"the previous image"
    assert sorted(os.listdir(tmp_path / "images")) == ["image"]


def test_no_clobber_looks_at_what_the_link_leads_to(tmp_path: Path) -> None:
    """A dangling link names no file yet: --no-clobber creates it, and refuses the
    next build, which would replace it."""
    store = _small_store(tmp_path, 4096)
    link = tmp_path / "link"
    link.symlink_to("image.tar")
    run_ok(*_args(store, "-o", link, "--no-clobber"))
    assert link.is_symlink() and verify_image(str(tmp_path / "image.tar")).ok
    before = (tmp_path / "image.tar").read_bytes()
    _input_error(run_nixlayer(*_args(store, "-o", link, "--no-clobber")), "exists already")
    assert (tmp_path / "image.tar").read_bytes() == before


def test_a_link_loop_is_an_error_and_stays(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 4096)
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    result = run_nixlayer(*_args(store, "-o", tmp_path / "a"))
    _input_error(result, f"-o {tmp_path / 'a'}", "symbolic links")
    assert os.readlink(tmp_path / "a") == "b" and os.readlink(tmp_path / "b") == "a"


def test_an_oci_layout_goes_where_a_dangling_link_leads(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 4096)
    link = tmp_path / "image"
    link.symlink_to("layouts/app")
    (tmp_path / "layouts").mkdir()
    run_ok(*_args(store, "--format", "oci", "-o", link))
    assert os.readlink(link) == "layouts/app"
    assert verify_image(str(tmp_path / "layouts" / "app")).ok


def test_fleet_plans_through_links(tmp_path: Path) -> None:
    """A plan file that is a link is written where it leads, the link kept."""
    store = _small_store(tmp_path, 4096)
    closure = store.closure()
    (tmp_path / "plans").mkdir()
    (tmp_path / "kept").mkdir()
    link = tmp_path / "plans" / f"{closure.stem}.plan.json"
    link.symlink_to("../kept/plan.json")
    run_ok("plan", "--fleet", closure, "-o", tmp_path / "plans", "-q")
    assert link.is_symlink()
    assert json.loads((tmp_path / "kept" / "plan.json").read_bytes())["layers"]


# --- in place only for a derivation's output ----------------------------------------


def _previous_file(folder: Path) -> Path:
    """An image file from an earlier build, with a hard link that shows whether the
    next build replaces it (the link keeps the old bytes) or writes into it."""
    out = folder / "image.tar"
    out.write_bytes(b"the previous image")
    os.link(out, folder / "previous")
    return out


def test_nix_build_top_alone_does_not_write_in_place(tmp_path: Path) -> None:
    """nix-shell sets NIX_BUILD_TOP: a build in it is atomic as anywhere, and a
    failing one leaves the previous image."""
    store = _small_store(tmp_path, 4096)
    out = _previous_file(tmp_path)
    env = {**os.environ, "NIX_BUILD_TOP": str(tmp_path), "NIX_STORE": "/nix/store"}
    run_ok(*_args(store, "-o", out), env=env)
    assert (tmp_path / "previous").read_bytes() == b"the previous image"
    assert verify_image(str(out)).ok
    built = out.read_bytes()
    store.add("gone", "2")  # in the closure, not on disk: the next build fails
    _input_error(run_nixlayer(*_args(store, "-o", out), env=env), "does not exist")
    assert out.read_bytes() == built


def test_a_derivation_output_is_written_in_place(tmp_path: Path) -> None:
    """A direct child of the store directory ($NIX_STORE) is a derivation's $out: no
    temporary name beside it, which would be a write into the store."""
    store = _small_store(tmp_path, 4096)
    nix_store = tmp_path / "nix-store"
    nix_store.mkdir()
    out = _previous_file(nix_store)
    env = {**os.environ, "NIX_STORE": str(nix_store)}
    env.pop("NIX_BUILD_TOP", None)
    run_ok(*_args(store, "-o", out), env=env)
    assert (nix_store / "previous").read_bytes() == out.read_bytes()
    assert verify_image(str(out)).ok


# --- OCI layouts: blobs trusted by content ------------------------------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _image_blobs(layout: Path) -> dict[str, Any]:
    """The manifest of the layout's only image."""
    index = json.loads((layout / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    return json.loads((layout / "blobs" / "sha256" / digest).read_bytes())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.parametrize("damaged", ["layer", "config", "base-layer"])
def test_a_damaged_blob_is_made_again(tmp_path: Path, damaged: str) -> None:
    """One flipped byte in a blob the rebuild would reuse: the rebuild (with the
    layer cache, or without it for the config) exits 0 with an image that verifies."""
    store = _small_store(tmp_path, 64 << 10)
    out = tmp_path / "image"
    options = ["--format", "oci", "-o", str(out), "--cache-dir", str(tmp_path / "cache")]
    if damaged == "base-layer":
        base = tmp_path / "base"
        run_ok(*_args(store, "--format", "oci", "-o", base))
        options += ["--from", str(base), "--mkdir", "/data"]
    build = _args(store, *options, cached=damaged != "config")
    run_ok(*build)
    manifest = _image_blobs(out)
    damaged_blob = manifest["config"] if damaged == "config" else manifest["layers"][0]
    _flip_a_byte(_blob(out, damaged_blob["digest"]))
    run_ok(*build)
    report = verify_image(str(out))
    assert report.ok, format_report(report)


def test_a_damaged_cache_entry_names_no_layer(tmp_path: Path) -> None:
    """One hex digit of a cached diff_id changed (still a digest), its blob intact in
    the layout: the entry is ignored, not trusted into the config."""
    store = _small_store(tmp_path, 64 << 10)
    out, cache = tmp_path / "image", tmp_path / "cache"
    build = _args(store, "--format", "oci", "-o", out, "--cache-dir", cache, cached=True)
    run_ok(*build)
    (entry,) = cache.rglob("*.json")
    data = json.loads(entry.read_bytes())
    last = data["diff_id"][-1]
    data["diff_id"] = data["diff_id"][:-1] + ("0" if last != "0" else "1")
    entry.write_text(json.dumps(data), encoding="utf-8")
    run_ok(*build)
    report = verify_image(str(out))
    assert report.ok, format_report(report)


# --- OCI layouts: nothing of a failed run stays -------------------------------------


class SlowStore(Store):
    """P1 (small, the previous image), P2 (small, new) and P3 (32 MiB that does not
    compress: a second or more in gzip), with their sizes in the closure, as layers
    are started largest first: P3 is still being written when P2's blob is in."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        for path, data in ((P1, b"one"), (P2, b"two"), (P3, os.urandom(32 << 20))):
            (self.root / path.lstrip("/")).mkdir()
            (self.root / path.lstrip("/") / "data").write_bytes(data)
        self.sizes = {P1: 1000, P2: 2000, P3: 32 << 20}
        self.paths = [P1]

    def closure(self) -> Path:
        entries = [_entry(p, nar_size=self.sizes.get(p, 1000)) for p in self.paths]
        target = self.folder / "closure.json"
        target.write_text(json.dumps(entries), encoding="utf-8")
        return target


def _blob_names(layout: Path) -> set[str]:
    folder = layout / "blobs" / "sha256"
    return {n for n in os.listdir(folder) if not n.startswith(".")} if folder.is_dir() else set()


def _signalled_once_a_blob_is_new(args: list[str], layout: Path, signum: int) -> int:
    """Run the build, send ``signum`` once a blob that was not there is in the layout
    (the run added it), and return the exit code."""
    before = _blob_names(layout)
    command = [*nixlayer_command(), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _blob_names(layout) - before:
        assert process.poll() is None, "the build ended before a new blob was in"
        assert time.monotonic() < deadline, "no new blob within 120 s"
        time.sleep(0.002)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if signum != signal.SIGKILL:
        assert stderr.decode() == "nixlayer: error: interrupted\n"
    return process.returncode


def _oci(store: Store, out: Path) -> list[str]:
    return _args(store, "--format", "oci", "--compress", "gzip", "-o", out)


def test_sigterm_removes_the_blobs_the_run_added(tmp_path: Path) -> None:
    """SIGTERM unwinds as Ctrl-C does (tests/test_interrupt.py): one of them will do."""
    store = SlowStore(tmp_path)
    out = tmp_path / "image"
    run_ok(*_oci(store, out))
    before = _files(out)
    store.paths = [P1, P2, P3]
    assert _signalled_once_a_blob_is_new(_oci(store, out), out, signal.SIGTERM) == 130
    assert _files(out) == before
    report = verify_image(str(out))
    assert report.ok and report.notes == [], format_report(report)


def test_an_error_removes_the_blobs_the_run_added(tmp_path: Path) -> None:
    """A store path missing on disk, whose layer starts after two others were made."""
    store = SlowStore(tmp_path)
    out = tmp_path / "image"
    run_ok(*_oci(store, out))
    before = _files(out)
    store.paths = [P1, P2, P3]
    store.add("gone", "4")  # in the closure (the smallest layer, made last), not on disk
    _input_error(run_nixlayer(*_oci(store, out)), "does not exist on disk")
    assert _files(out) == before


@pytest.mark.parametrize("before", ["no-folder", "empty-folder"])
def test_kill_9_during_a_first_write_leaves_no_layout(tmp_path: Path, before: str) -> None:
    """Nothing runs after SIGKILL: the watcher removes what the first write made,
    since its index.json is not there."""
    store = SlowStore(tmp_path)
    store.paths = [P1, P2, P3]
    out = tmp_path / "out" / "image"
    if before == "empty-folder":
        out.mkdir(parents=True)
    code = _signalled_once_a_blob_is_new(_oci(store, out), out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    expected = [out.name] if before == "empty-folder" else []
    deadline = time.monotonic() + 30
    while (tmp_path / "out").exists() and time.monotonic() < deadline:
        if before == "empty-folder" and not any(out.iterdir()):
            break
        time.sleep(0.02)
    left = sorted(os.listdir(tmp_path / "out")) if (tmp_path / "out").exists() else []
    assert left == expected
    assert before == "no-folder" or list(out.iterdir()) == []


def test_verify_notes_an_unreferenced_blob(tmp_path: Path) -> None:
    """The layout allows it (a killed writer, an image dropped from the index): a
    note, in text and JSON, not a problem."""
    store = _small_store(tmp_path, 4096)
    out = tmp_path / "image"
    run_ok(*_args(store, "--format", "oci", "-o", out))
    data = b"a blob no manifest names"
    stray = _blob(out, hashlib.sha256(data).hexdigest())
    stray.write_bytes(data)
    name = f"blobs/sha256/{stray.name}"
    result = run_ok("verify", out)
    assert f"note: {name}" in result.stdout.decode()
    report = json.loads(run_ok("verify", "--json", out).stdout)
    assert report["ok"] and [note for note in report["notes"] if note.startswith(name)]


@pytest.mark.parametrize(
    "content", [b"", b'{"version": 1}', b"[" * 5000], ids=["empty", "no-version", "deep"]
)
def test_a_layout_file_that_is_not_a_layouts_is_refused(tmp_path: Path, content: bytes) -> None:
    store = _small_store(tmp_path, 4096)
    out = tmp_path / "image"
    out.mkdir()
    (out / "oci-layout").write_bytes(content)
    result = run_nixlayer(*_args(store, "--format", "oci", "-o", out))
    _input_error(result, f"-o {out}", "oci-layout")
    assert os.listdir(out) == ["oci-layout"]


# --- outputs ------------------------------------------------------------------------


def _destination(folder: Path, image_format: str) -> Path:
    return folder / ("image" if image_format == "oci" else "image.tar")


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A folder and a function that mounts a small tmpfs on it (root only); unmounted
    at the end whatever happens."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode()}")
        mounted.append(point)
        return point

    yield point, mount
    for done in mounted:
        subprocess.run(["umount", "-l", str(done)], check=False)


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_full_disk(mount_point: tuple[Path, Any], tmp_path: Path, image_format: str) -> None:
    """A 1 MiB tmpfs and a 4 MiB image: exit 2 with one line naming -o and the
    folder, and no temporary file left to fill the disk further."""
    _, mount = mount_point
    folder = mount("size=1m")
    store = _small_store(tmp_path)
    out = _destination(folder, image_format)
    result = store.build(out, "--format", image_format, "--compress", "none", "--no-cache")
    _input_error(result, "-o ", str(folder), "No space left on device")
    assert not (out / "index.json").exists() if image_format == "oci" else not out.exists()
    leftovers = [str(p) for p in folder.rglob(".nixlayer-*")]
    assert leftovers == [], leftovers


def test_full_disk_while_a_base_layer_is_copied(
    mount_point: tuple[Path, Any], tmp_path: Path
) -> None:
    """An OCI image copies a base's compressed layers as stored: a full disk then is
    the folder's problem, not a damaged base."""
    _, mount = mount_point
    store = _small_store(tmp_path)
    base = tmp_path / "base"
    assert store.build(base, "--format", "oci", "--compress", "gzip").returncode == 0
    folder = mount("size=1m")
    result = store.build(folder / "image", "--format", "oci", "--from", base, "--no-cache")
    _input_error(result, "-o ", str(folder), "No space left on device")
    assert [str(p) for p in folder.rglob(".nixlayer-*")] == []


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_read_only_folder(mount_point: tuple[Path, Any], tmp_path: Path, image_format: str) -> None:
    _, mount = mount_point
    folder = mount("ro,size=1m")
    result = _small_store(tmp_path, 1024).build(
        _destination(folder, image_format), "--format", image_format
    )
    _input_error(result, "-o ", str(folder), "Read-only file system")


def test_folder_that_does_not_exist(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 1024)
    out = tmp_path / "missing" / "image.tar"
    _input_error(store.build(out), f"-o {out}", "does not exist")
    _input_error(store.build(tmp_path), f"-o {tmp_path}", "is a folder")


def test_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    """The old image is replaced by a rename, not overwritten in place: a hard link
    to the old file still holds the old bytes, and the new file gets the umask's mode."""
    store = _small_store(tmp_path, 1024)
    out = tmp_path / "image.tar"
    out.write_bytes(b"the previous image")
    os.link(out, tmp_path / "previous")
    result = run_nixlayer(
        "from-closure", store.closure(), "--store-root", store.root, "-o", out, "-q", umask=0o027
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "previous").read_bytes() == b"the previous image"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert verify_image(str(out)).ok
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("before", ["no-folder", "empty-folder", "layout"])
def test_a_failed_oci_write_removes_what_it_created(tmp_path: Path, before: str) -> None:
    """A store path missing on disk stops the build after other layers were written:
    a layout that was not there before goes again (with the folders made for it),
    an empty folder is left empty, and an existing layout is as it was."""
    store = _small_store(tmp_path)
    target = tmp_path / "out"
    out = target / "sub" / "image" if before == "no-folder" else target
    if before == "empty-folder":
        target.mkdir()
    if before == "layout":
        assert store.build(out, "--format", "oci", "--no-cache").returncode == 0
    store.add("gone", "2")  # in the closure, not on disk
    store.closure()
    kept = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = store.build(out, "--format", "oci", "--no-cache")
    _input_error(result, "does not exist on disk")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == kept


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_no_clobber_refuses_an_existing_image(tmp_path: Path, image_format: str) -> None:
    store = _small_store(tmp_path, 1024)
    out = _destination(tmp_path, image_format)
    assert store.build(out, "--format", image_format, "--no-cache").returncode == 0
    before = sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    result = store.build(out, "--format", image_format, "--no-clobber", "--no-cache")
    _input_error(result, f"-o {out}", "exists already")
    assert sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before
    fresh = tmp_path / "fresh" / out.name
    fresh.parent.mkdir()
    assert store.build(fresh, "--format", image_format, "--no-clobber").returncode == 0
    assert verify_image(str(fresh)).ok


def test_no_clobber_holds_when_the_file_appears_during_the_write(tmp_path: Path) -> None:
    """The check before the write is not the only one: a file that appears meanwhile
    is kept, and the new one is dropped, because the name is taken by ``link``."""
    out = tmp_path / "image.tar"
    refused = pytest.raises(NixlayerError, match="exists already")
    with refused, atomic_output(str(out), clobber=False) as file:
        file.write(b"new")
        out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["image.tar"]


def test_a_named_pipe_as_destination_is_written_into_not_replaced(tmp_path: Path) -> None:
    """As ``-o /dev/null`` must be: a file renamed over it would replace the device."""
    store = _small_store(tmp_path, 1024)
    expected = tmp_path / "image.tar"
    assert store.build(expected, "--no-cache").returncode == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = store.build(fifo, "--no-cache")
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received == [expected.read_bytes()]
