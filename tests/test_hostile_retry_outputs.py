"""Issue 14 tried again as a hostile user, on sections 1, 2 and 4's numbers and names:
more members of each class than the first fixes' tests cover.

- ``verify`` replays the layers as consumers merge them: a higher layer that writes
  inside a store path changes it as surely as a whiteout there does, and a layer
  nixlayer wrote holds exactly the store paths its history lists.
- A layout written into may hold anything at a blob's name (a folder too); its
  ``blobs`` folder may be a link, which consumers follow, and so must ``verify``.
- ``-o /proc/PID/fd/N`` of another process is a descriptor like ``/dev/stdout``:
  a pipe there is written through, and a deleted file's name is no path to create.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from support.handmade import input_error as _input_error
from support.handmade import small_store as _small_store
from support.run import nixlayer_command
from support.tools import Tools, unpack_image
from test_hostile_names import ONE, OURS, TWO, _archive, _layer, _member, _store_layer

from nixlayer.verify import verify_image

NAME = ONE.lstrip("/")
TOOL = {"created_by": "RUN something"}


def _problems(path: Path) -> str:
    report = verify_image(str(path))
    assert not report.ok, f"verify passed {path}"
    return "\n".join(report.problems)


# --- verify: a higher layer inside a store path -------------------------------------

INSIDE = {
    "a file replaced": (_member(f"{NAME}/hi", data=b"evil\n"),),
    "a file added": (_member(f"{NAME}/bin/", tarfile.DIRTYPE), _member(f"{NAME}/bin/sh")),
    "a folder made a symlink": (_member(f"{NAME}/bin", tarfile.SYMTYPE, linkname="/tmp"),),
    "a hard link added": (
        _member("x", data=b"a"),
        _member(f"{NAME}/x", tarfile.LNKTYPE, linkname="x"),
    ),
}


@pytest.mark.parametrize("change", sorted(INSIDE))
def test_verify_flags_a_higher_layer_writing_inside_a_store_path(
    tmp_path: Path, change: str
) -> None:
    """A store path is content-addressed: a consumer that merges a later layer's file
    into it reads another path than the one the lower layer's history lists."""
    top = _layer(*INSIDE[change])
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, TOOL)])
    assert f"changes the store path {ONE}" in _problems(image)


def test_verify_accepts_a_higher_layer_that_lists_the_path_again(tmp_path: Path) -> None:
    """The same store path in a higher layer of nixlayer's is that layer's copy."""
    image = _archive(tmp_path / "i.tar", [_store_layer(), _store_layer()])
    report = verify_image(str(image))
    assert report.ok, report.problems


def test_umoci_reads_the_file_a_higher_layer_puts_in_a_store_path(
    tmp_path: Path, tools: Tools
) -> None:
    """What the check stands for: umoci unpacks the later layer's bytes in the store."""
    top = _layer(_member(f"{NAME}/hi", data=b"evil\n"))
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, TOOL)])
    rootfs = unpack_image(image, tmp_path, tools.skopeo, tools.umoci)
    assert (rootfs / NAME / "hi").read_bytes() == b"evil\n"
    assert "the member" in _problems(image)


def test_verify_flags_a_listed_store_path_the_layer_does_not_hold(tmp_path: Path) -> None:
    """A consumer of the image has no TWO, though the layer's history says it holds it."""
    layer, history = _store_layer()
    history = {**history, "comment": f"store paths: {ONE} {TWO}"}
    image = _archive(tmp_path / "i.tar", [(layer, history)])
    assert f"lists the store path {TWO}, which it does not hold" in _problems(image)


def test_verify_flags_a_nixlayer_layer_holding_files_of_an_unlisted_path(tmp_path: Path) -> None:
    """No folder entry for the path, only a file inside it: still the path, unlisted."""
    layer = _layer(
        *(_member(n, tarfile.DIRTYPE) for n in ("nix/", "nix/store/", TWO.lstrip("/") + "/")),
        _member(f"nix/store/{'3' * 32}-three/lib", data=b"x"),
    )
    history = {"created_by": OURS, "comment": f"store paths: {TWO}"}
    image = _archive(tmp_path / "i.tar", [_store_layer(), (layer, history)])
    assert f"holds the store path /nix/store/{'3' * 32}-three, which" in _problems(image)


def test_a_store_path_held_without_its_folder_entry_is_held(tmp_path: Path) -> None:
    """Consumers make the folder of a member whose folder has no entry: the path is
    there, as listed."""
    layer = _layer(_member(f"{NAME}/hi", data=b"hi\n"))
    image = _archive(tmp_path / "i.tar", [(layer, _store_layer()[1])])
    report = verify_image(str(image))
    assert report.ok, report.problems


def test_a_store_path_named_like_a_prefix_of_another_is_not_inside_it(tmp_path: Path) -> None:
    """``…-one`` and ``…-one-dev`` share a prefix, not a folder."""
    top = _layer(_member(f"{NAME}-dev/", tarfile.DIRTYPE), _member(f"{NAME}-dev/x"))
    history = {"created_by": OURS, "comment": f"store paths: {ONE}-dev"}
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, history)])
    report = verify_image(str(image))
    assert report.ok, report.problems


# --- OCI layouts written into --------------------------------------------------------


def _layout_build(store: object, out: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    args = ["from-closure", store.closure(), "--store-root", store.root, "-q", "--no-cache"]  # type: ignore[attr-defined]
    command = [*nixlayer_command(), *map(str, args), "--format", "oci", "-o", str(out), *flags]
    return subprocess.run(command, capture_output=True, check=False, timeout=300)


def _manifest_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


@pytest.mark.parametrize("blob", ["manifest", "layer"])
def test_a_folder_at_a_blobs_name_is_one_error(tmp_path: Path, blob: str) -> None:
    """A rebuild finds a folder where a blob it needs goes: it can neither trust it nor
    replace it (that would delete what is in it). Before: a traceback, exit 1."""
    store = _small_store(tmp_path, 4096)
    layout = tmp_path / "image"
    assert _layout_build(store, layout).returncode == 0
    digest = _manifest_digest(layout)
    if blob == "layer":
        manifest = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_text())
        digest = manifest["layers"][0]["digest"]
    path = layout / "blobs" / "sha256" / digest[7:]
    path.unlink()
    path.mkdir()
    before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    message = _input_error(_layout_build(store, layout, "--tag", "again"), digest[7:], "folder")
    assert "not a blob" in message
    assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == before


def test_a_layout_whose_blobs_folder_is_a_link_verifies(tmp_path: Path, tools: Tools) -> None:
    """Blobs kept on another disk through a symlink: the build writes through it, and
    consumers read through it; verify said its blobs were missing."""
    store = _small_store(tmp_path, 4096)
    layout = tmp_path / "image"
    assert _layout_build(store, layout, "--tag", "v0").returncode == 0
    elsewhere = (layout / "blobs").rename(tmp_path / "elsewhere")
    (layout / "blobs").symlink_to(elsewhere)
    assert _layout_build(store, layout, "--tag", "v1", "--label", "a=b").returncode == 0
    report = verify_image(str(layout))
    assert report.ok and report.images == 2, report.problems
    copied = tmp_path / "copy"
    subprocess.run([tools.skopeo, "copy", f"oci:{layout}:data:v1", f"oci:{copied}:x"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    assert verify_image(str(copied)).ok


def test_verify_walks_no_link_loop_in_a_layout(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 4096)
    layout = tmp_path / "image"
    assert _layout_build(store, layout).returncode == 0
    (layout / "blobs" / "up").symlink_to("..")
    (layout / "blobs" / "sha256" / "self").symlink_to(".")
    (layout / "blobs" / "sha256" / "me").symlink_to("..")
    assert verify_image(str(layout)).ok


# --- -o through another process's descriptor -----------------------------------------


def _holder(tmp_path: Path, shell: str) -> subprocess.Popen[bytes]:
    """A process that holds a descriptor as ``shell`` sets it up, until it is killed."""
    return subprocess.Popen(["sh", "-c", shell], cwd=tmp_path)


def _opened(holder: subprocess.Popen[bytes], fd: int) -> None:
    """Wait until ``holder`` has opened ``fd``."""
    for _ in range(200):
        if os.path.lexists(f"/proc/{holder.pid}/fd/{fd}"):
            return
        time.sleep(0.05)


def _archive_to(store: object, out: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    args = ["from-closure", store.closure(), "--store-root", store.root, "-q", "--no-cache"]  # type: ignore[attr-defined]
    command = [*nixlayer_command(), *map(str, args), "-o", out, *flags]
    return subprocess.run(command, capture_output=True, check=False, timeout=300)


def test_another_process_pipe_is_written_through(tmp_path: Path) -> None:
    """``-o /proc/$PID/fd/1`` of a process writing into ``| cat > got``: the image goes
    down the pipe. Before: a file was made in /proc, which fails."""
    store = _small_store(tmp_path, 4096)
    expected = tmp_path / "expected.tar"
    assert _archive_to(store, str(expected)).returncode == 0
    writer = subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None
        got = writer.stdout
        result = _archive_to(store, f"/proc/{writer.pid}/fd/1")
        assert result.returncode == 0, result.stderr
    finally:
        writer.kill()
        data = got.read()
        writer.wait()
    assert data == expected.read_bytes()


def test_another_process_deleted_file_is_refused(tmp_path: Path) -> None:
    """The link of a descriptor open on a deleted file reads ``/path (deleted)``: no
    file of that name is to be made."""
    store = _small_store(tmp_path, 4096)
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    holder = _holder(tmp_path, "exec 9>>victim; rm victim; sleep 60")
    try:
        for _ in range(200):  # until the holder has removed it
            if not victim.exists():
                break
            time.sleep(0.05)
        _input_error(_archive_to(store, f"/proc/{holder.pid}/fd/9"), "deleted")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("victim")) == []


def test_another_process_file_gets_the_image_by_its_name(tmp_path: Path) -> None:
    """A descriptor open on a file that is still there leads to the file, as a
    symlink does: the image replaces it, complete."""
    store = _small_store(tmp_path, 4096)
    target = tmp_path / "target.tar"
    target.write_bytes(b"old")
    holder = _holder(tmp_path, "exec 9>>target.tar; sleep 60")
    try:
        _opened(holder, 9)
        result = _archive_to(store, f"/proc/{holder.pid}/fd/9")
        assert result.returncode == 0, result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert verify_image(str(target)).ok


# --- -o naming a folder that is a file ----------------------------------------------


@pytest.mark.parametrize("suffix", ["/.", "/"])
@pytest.mark.parametrize("what", ["docker-archive", "plan"])
def test_a_file_named_as_a_folder_is_left_alone(tmp_path: Path, suffix: str, what: str) -> None:
    """``-o old.tar/.`` names nothing (the system says "not a directory"); it replaced
    old.tar with the image."""
    store = _small_store(tmp_path, 4096)
    old = tmp_path / "old.tar"
    old.write_bytes(b"old")
    out = f"{old}{suffix}"
    if what == "plan":
        command = [*nixlayer_command(), "plan", str(store.closure()), "-q", "-o", out]
        result = subprocess.run(command, capture_output=True, check=False, timeout=300)
    else:
        result = _archive_to(store, out)
    _input_error(result, "old.tar", "is a file, not a folder")
    assert old.read_bytes() == b"old"


# --- a layout whose own files verify (and umoci) reject ------------------------------


def _layout_with(folder: Path, layout_file: str, index: object | None) -> Path:
    (folder / "blobs" / "sha256").mkdir(parents=True)
    (folder / "oci-layout").write_text(layout_file)
    if index is not None:
        (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_a_layout_of_another_version_is_refused_and_flagged(tmp_path: Path, tools: Tools) -> None:
    """umoci reads only version 1.0.0 ("layout version is not supported"); the build
    wrote into a 2.0.0 layout and verify said OK."""
    store = _small_store(tmp_path, 4096)
    layout = _layout_with(tmp_path / "image", '{"imageLayoutVersion":"2.0.0"}', None)
    _input_error(_layout_build(store, layout), "oci-layout", "version 1.0.0")
    assert sorted(p.name for p in layout.rglob("*")) == ["blobs", "oci-layout", "sha256"]
    good = tmp_path / "good"
    assert _layout_build(store, good).returncode == 0
    (good / "oci-layout").write_text('{"imageLayoutVersion":"1.0.1"}')
    assert "imageLayoutVersion is not 1.0.0" in _problems(good)
    listed = subprocess.run([tools.umoci, "ls", "--layout", str(good)], capture_output=True)
    assert listed.returncode != 0


KEPT = {
    "no digest": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 3},
    "a missing blob": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "a" * 64,
        "size": 3,
    },
}


@pytest.mark.parametrize("entry", sorted(KEPT))
def test_an_index_listing_a_broken_image_is_refused(tmp_path: Path, entry: str) -> None:
    """The layout's other image stays beside the new one: written into, it made a
    layout its own verify rejects, with exit 0."""
    store = _small_store(tmp_path, 4096)
    index = {"schemaVersion": 2, "manifests": [KEPT[entry]]}
    layout = _layout_with(tmp_path / "image", '{"imageLayoutVersion":"1.0.0"}', index)
    _input_error(_layout_build(store, layout), "index.json", "manifest 1")
    assert json.loads((layout / "index.json").read_text()) == index
    assert list((layout / "blobs" / "sha256").iterdir()) == []


# --- numbers consumers reject: the config's User -------------------------------------


@pytest.mark.parametrize("user", ["2147483648", "0:99999999999", "-1", "app:-5"])
def test_a_user_id_runtimes_reject_is_refused(tmp_path: Path, user: str) -> None:
    """runc and umoci read a numeric user or group as a signed 32-bit id."""
    store = _small_store(tmp_path, 4096)
    out = tmp_path / "image.tar"
    _input_error(_archive_to(store, str(out), "--user", user), "--user", "out of range")
    assert not out.exists()


def test_verify_flags_a_user_id_umoci_rejects(tmp_path: Path, tools: Tools) -> None:
    """An image another tool wrote with such a User: umoci cannot unpack it."""
    store = _small_store(tmp_path, 4096)
    image = tmp_path / "image.tar"
    assert _archive_to(store, str(image), "--user", "2147483647").returncode == 0
    assert verify_image(str(image)).ok
    hacked = _with_config(image, tmp_path / "hacked.tar", {"User": "4294967295"})
    assert "User 4294967295: the id 4294967295 is out of range" in _problems(hacked)
    unpacked = subprocess.run(
        [tools.skopeo, "copy", f"docker-archive:{hacked}", f"oci:{tmp_path / 'oci'}:x"],
        capture_output=True,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    bundle = subprocess.run(
        [tools.umoci, "unpack", "--image", f"{tmp_path / 'oci'}:x", str(tmp_path / "b")],
        capture_output=True,
    )
    assert b"must be in range" in bundle.stderr


def _with_config(image: Path, out: Path, run_config: dict[str, object], **fields: object) -> Path:
    """A copy of a docker-archive with fields of its config (and run config) changed."""
    with tarfile.open(image) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    name = json.loads(files["manifest.json"])[0]["Config"]
    config = json.loads(files[name])
    config["config"].update(run_config)
    config.update(fields)
    files[name] = json.dumps(config).encode()
    with tarfile.open(out, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


# --- a base whose history is shorter than its layers ---------------------------------


def test_our_history_describes_our_layers_over_a_base_without_history(tmp_path: Path) -> None:
    """History entries pair with layers in order: over a base with none, our entry
    listing the store paths described the base's layer, and ours had none."""
    store = _small_store(tmp_path, 4096)
    first = tmp_path / "first.tar"
    assert _archive_to(store, str(first)).returncode == 0
    base = _with_config(first, tmp_path / "base.tar", {}, history=None)
    out = tmp_path / "out.tar"
    result = _archive_to(store, str(out), "--from", str(base))
    assert result.returncode == 0, result.stderr
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    assert len(config["history"]) == len(config["rootfs"]["diff_ids"]) == 2
    assert "created_by" not in config["history"][0]
    assert config["history"][1]["comment"].startswith("store paths: ")
    report = verify_image(str(out))
    assert report.ok, report.problems


@pytest.mark.parametrize("blocker", ["blobs", "blobs/sha256"])
def test_a_file_where_a_layouts_folder_goes_is_named(tmp_path: Path, blocker: str) -> None:
    """Neither "the folder image does not exist" nor "File exists": they sent the user to
    the wrong place. The file in the way is named."""
    store = _small_store(tmp_path, 4096)
    layout = _layout_with(tmp_path / "image", '{"imageLayoutVersion":"1.0.0"}', None)
    for folder in (layout / "blobs" / "sha256", layout / "blobs"):
        folder.rmdir()
    (layout / blocker).parent.mkdir(exist_ok=True)
    (layout / blocker).write_text("x")
    _input_error(_layout_build(store, layout), f"{layout / blocker} is a file, not a folder")
