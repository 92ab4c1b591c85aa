"""``nixlayer.verify``: every image nixlayer writes verifies clean, in every format and
compression, and each kind of damage to a copy is caught and named.

The corruptions that would also break a digest (a flipped byte) are made bluntly; the
ones inside a layer tar (a member twice, a dangling hard link, a missing end marker)
are made on an uncompressed image whose digests, sizes, config, manifest and index are
then all rewritten to match, so that only the tar-level check can catch them.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.builds import ImageBuilds
from support.run import run_nixlayer
from support.tools import Tools

from nixlayer.errors import NixlayerError
from nixlayer.report import format_report
from nixlayer.verify import VerifyReport, verify_image

# The consumer matrix builds its images under this name; asking for the same one
# shares those builds (ImageBuilds makes each once per session).
NAME = "nixlayer-matrix:v1"
FORMATS = [
    (image_format, compress)
    for image_format in ("docker-archive", "oci", "oci-archive")
    for compress in ("none", "gzip", "zstd")
]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _copy(image_builds: ImageBuilds, image_format: str, compress: str, tmp_path: Path) -> Path:
    """A private copy of a session image, free to damage."""
    source = image_builds.get(image_format, compress, NAME).path
    target = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


def _only_problem(report: VerifyReport, *words: str) -> str:
    """The report has exactly one problem, and it says all of ``words``."""
    assert len(report.problems) == 1, format_report(report)
    (problem,) = report.problems
    for word in words:
        assert word in problem, format_report(report)
    return problem


def _caught(report: VerifyReport, *words: str) -> None:
    """Some problem of the report says all of ``words``."""
    assert any(all(w in p for w in words) for p in report.problems), format_report(report)


# --- clean images -------------------------------------------------------------------


@pytest.mark.parametrize(("image_format", "compress"), FORMATS)
def test_every_image_nixlayer_writes_verifies(
    image_format: str, compress: str, image_builds: ImageBuilds
) -> None:
    path = image_builds.get(image_format, compress, NAME).path
    report = verify_image(str(path))
    assert report.ok, format_report(report)
    assert report.notes == []
    assert report.image_format == image_format
    assert report.images == 1
    assert report.layers >= 2
    whole_stream = compress if image_format == "docker-archive" and compress != "none" else None
    assert report.compression == whole_stream


def test_images_skopeo_rewrites_verify(
    image_builds: ImageBuilds, tools: Tools, tmp_path: Path
) -> None:
    """verify is not tuned to nixlayer's own writer: skopeo's OCI layout and
    docker-archive of the same image pass too."""
    source = image_builds.get("oci", "gzip", NAME).path
    for destination in (f"oci:{tmp_path / 'layout'}:x", f"docker-archive:{tmp_path / 'd.tar'}"):
        subprocess.run(
            [tools.skopeo, "--insecure-policy", "copy", "-q", f"oci:{source}:{NAME}", destination],
            check=True,
            capture_output=True,
        )
    for path in (tmp_path / "layout", tmp_path / "d.tar"):
        report = verify_image(str(path))
        assert report.ok, format_report(report)


def test_report_text_and_json(image_builds: ImageBuilds, tmp_path: Path) -> None:
    clean = verify_image(str(image_builds.get("oci", "gzip", NAME).path))
    assert format_report(clean).splitlines()[0].endswith(": OK")
    broken = VerifyReport("x.tar", "docker-archive", None, 1, 2, ["a", "b"], ["n"])
    assert format_report(broken).splitlines() == [
        "x.tar: docker-archive, 1 image(s), 2 layer(s): 2 problem(s)",
        "  problem: a",
        "  problem: b",
        "  note: n",
    ]
    assert json.loads(json.dumps(broken.to_json())) == {
        "source": "x.tar",
        "format": "docker-archive",
        "compression": None,
        "images": 1,
        "layers": 2,
        "ok": False,
        "problems": ["a", "b"],
        "notes": ["n"],
    }


def test_not_an_image_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(NixlayerError, match="no such image"):
        verify_image(str(tmp_path / "missing.tar"))
    (tmp_path / "junk").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(NixlayerError, match="not a docker-archive or OCI image"):
        verify_image(str(tmp_path / "junk"))
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("readme"), io.BytesIO(b""))
    with pytest.raises(NixlayerError, match="not a docker-archive or OCI image"):
        verify_image(str(tmp_path / "other.tar"))


# --- helpers to damage tar archives and OCI layouts ----------------------------------


def _member(archive: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(archive) as tar:
        return tar.getmember(name)


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x55]))


def _docker_manifest(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        extracted = tar.extractfile("manifest.json")
        assert extracted is not None
        return json.loads(extracted.read())


def _rewrite_archive(archive: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> None:
    """Rewrite a tar image with Python's own tar writer: name → bytes, in order."""
    with tarfile.open(archive) as tar:
        members = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isreg()
        }
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in change(members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _blob(folder: Path, digest: str) -> Path:
    return folder / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _put(folder: Path, data: bytes) -> dict[str, Any]:
    _blob(folder, _sha256(data)).write_bytes(data)
    return {"digest": _sha256(data), "size": len(data)}


def _oci_parts(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    index = json.loads((folder / "index.json").read_bytes())
    manifest = json.loads(_blob(folder, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(_blob(folder, manifest["config"]["digest"]).read_bytes())
    return index, manifest, config


def _save_oci(
    folder: Path, index: dict[str, Any], manifest: dict[str, Any], config: dict[str, Any]
) -> None:
    """Write config, manifest and index so that each names the next by digest and size."""
    manifest["config"].update(_put(folder, json.dumps(config).encode()))
    index["manifests"][0].update(_put(folder, json.dumps(manifest).encode()))
    (folder / "index.json").write_text(json.dumps(index), encoding="utf-8")


def _largest_layer(manifest: dict[str, Any]) -> int:
    sizes = [layer["size"] for layer in manifest["layers"]]
    return sizes.index(max(sizes))


def _replace_layer(folder: Path, change: Callable[[bytes], bytes]) -> None:
    """Change the largest layer of an uncompressed layout, and everything that names
    it, so that the layout is consistent except for what ``change`` did to the tar."""
    index, manifest, config = _oci_parts(folder)
    number = _largest_layer(manifest)
    descriptor = manifest["layers"][number]
    assert descriptor["mediaType"].endswith(".tar"), "needs an uncompressed layout"
    data = change(_blob(folder, descriptor["digest"]).read_bytes())
    descriptor.update(_put(folder, data))
    config["rootfs"]["diff_ids"][number] = _sha256(data)
    _save_oci(folder, index, manifest, config)


def _tar_end(data: bytes) -> int:
    """Where the end-of-archive marker of a layer tar starts."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.getmembers()
        return tar.offset


def _first_file(data: bytes) -> tarfile.TarInfo:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return next(m for m in tar.getmembers() if m.isreg() and m.size)


def _insert_before_end(data: bytes, blocks: bytes) -> bytes:
    end = _tar_end(data)
    return data[:end] + blocks + data[end:]


def _duplicate_member(data: bytes) -> bytes:
    member = _first_file(data)
    stop = member.offset_data + -(-member.size // 512) * 512
    return _insert_before_end(data, data[member.offset : stop])


def _extra_member(info: tarfile.TarInfo) -> Callable[[bytes], bytes]:
    return lambda data: _insert_before_end(data, info.tobuf(tarfile.PAX_FORMAT))


# --- corruption caught ----------------------------------------------------------------


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_flipped_byte_in_a_layer_blob(
    compress: str, image_builds: ImageBuilds, tmp_path: Path
) -> None:
    folder = _copy(image_builds, "oci", compress, tmp_path)
    _, manifest, _ = _oci_parts(folder)
    layer = manifest["layers"][_largest_layer(manifest)]
    _flip(_blob(folder, layer["digest"]), layer["size"] // 2)
    report = verify_image(str(folder))
    _caught(report, layer["digest"], "has sha256")
    _caught(report, layer["digest"].removeprefix("sha256:"))


def test_flipped_byte_in_a_docker_archive_layer(image_builds: ImageBuilds, tmp_path: Path) -> None:
    archive = _copy(image_builds, "docker-archive", "none", tmp_path)
    name = _docker_manifest(archive)[0]["Layers"][-1]
    member = _member(archive, name)
    with archive.open("rb") as file:
        file.seek(member.offset_data)
        inner = _first_file(file.read(member.size))
    _flip(archive, member.offset_data + inner.offset_data)  # a file's first byte
    _only_problem(verify_image(str(archive)), name, "diff_id")


def test_flipped_byte_in_a_layer_inside_an_oci_archive(
    image_builds: ImageBuilds, tmp_path: Path
) -> None:
    archive = _copy(image_builds, "oci-archive", "gzip", tmp_path)
    with tarfile.open(archive) as tar:
        blobs = [m for m in tar.getmembers() if m.name.startswith("blobs/") and m.isreg()]
    largest = max(blobs, key=lambda m: m.size)
    _flip(archive, largest.offset_data + largest.size // 2)
    _caught(verify_image(str(archive)), largest.name.rsplit("/", 1)[1], "has sha256")


@pytest.mark.parametrize("image_format", ["docker-archive", "oci"])
def test_flipped_byte_in_the_config(
    image_format: str, image_builds: ImageBuilds, tmp_path: Path
) -> None:
    image = _copy(image_builds, image_format, "none", tmp_path)
    if image_format == "oci":
        _, manifest, _ = _oci_parts(image)
        _flip(_blob(image, manifest["config"]["digest"]), 10)
        _caught(verify_image(str(image)), manifest["config"]["digest"], "has sha256")
    else:
        config = _docker_manifest(image)[0]["Config"]
        _flip(image, _member(image, config).offset_data + 1)  # still JSON: '{' + 1 byte
        _caught(verify_image(str(image)), config, "not the one its name says")


def test_truncated_layer_blob(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "gzip", tmp_path)
    _, manifest, _ = _oci_parts(folder)
    layer = manifest["layers"][_largest_layer(manifest)]
    with _blob(folder, layer["digest"]).open("r+b") as file:
        file.truncate(layer["size"] // 2)
    report = verify_image(str(folder))
    _caught(report, layer["digest"], f"is {layer['size'] // 2} bytes", f"says {layer['size']}")
    _caught(report, "cannot be read as a gzip tar")


def test_truncated_docker_archive(image_builds: ImageBuilds, tmp_path: Path) -> None:
    archive = _copy(image_builds, "docker-archive", "none", tmp_path)
    name = _docker_manifest(archive)[0]["Layers"][-1]
    with archive.open("r+b") as file:
        file.truncate(_member(archive, name).offset_data + 100)
    _caught(verify_image(str(archive)), "truncated", name)


def test_truncated_compressed_docker_archive(image_builds: ImageBuilds, tmp_path: Path) -> None:
    archive = _copy(image_builds, "docker-archive", "gzip", tmp_path)
    with archive.open("r+b") as file:
        file.truncate(archive.stat().st_size // 2)
    _only_problem(verify_image(str(archive)), "gzip stream is corrupt")


def test_manifest_layer_size_changed(image_builds: ImageBuilds, tmp_path: Path) -> None:
    """Only the size is wrong: the manifest is rewritten, and the index names it."""
    folder = _copy(image_builds, "oci", "gzip", tmp_path)
    index, manifest, config = _oci_parts(folder)
    layer = manifest["layers"][0]
    layer["size"] += 1
    _save_oci(folder, index, manifest, config)
    report = verify_image(str(folder))
    _only_problem(report, layer["digest"], f"the descriptor says {layer['size']}")


def test_index_manifest_size_changed(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "zstd", tmp_path)
    index = json.loads((folder / "index.json").read_bytes())
    index["manifests"][0]["size"] -= 1
    (folder / "index.json").write_text(json.dumps(index), encoding="utf-8")
    _only_problem(verify_image(str(folder)), "index.json manifest 1", "the descriptor says")


def test_config_diff_id_changed(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "zstd", tmp_path)
    index, manifest, config = _oci_parts(folder)
    config["rootfs"]["diff_ids"][1] = _sha256(b"something else")
    _save_oci(folder, index, manifest, config)
    _only_problem(verify_image(str(folder)), "the diff_id " + _sha256(b"something else"))


def test_config_with_a_layer_too_few(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    index, manifest, config = _oci_parts(folder)
    config["rootfs"]["diff_ids"].pop()
    _save_oci(folder, index, manifest, config)
    _caught(verify_image(str(folder)), "but the config has")


def test_platform_disagrees_with_the_config(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    index = json.loads((folder / "index.json").read_bytes())
    index["manifests"][0]["platform"]["architecture"] = "s390x"
    (folder / "index.json").write_text(json.dumps(index), encoding="utf-8")
    _only_problem(verify_image(str(folder)), 'the index says architecture "s390x"')


def test_missing_layer_blob(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    _, manifest, _ = _oci_parts(folder)
    _blob(folder, manifest["layers"][0]["digest"]).unlink()
    _only_problem(verify_image(str(folder)), manifest["layers"][0]["digest"], "missing")


def test_member_twice_in_a_layer(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    _replace_layer(folder, _duplicate_member)
    _only_problem(verify_image(str(folder)), "twice")


def test_member_twice_in_a_docker_archive_layer(image_builds: ImageBuilds, tmp_path: Path) -> None:
    """The same damage in a docker-archive whose config and manifest are rewritten."""
    archive = _copy(image_builds, "docker-archive", "none", tmp_path)
    entry = _docker_manifest(archive)[0]

    def change(members: dict[str, bytes]) -> dict[str, bytes]:
        layer = entry["Layers"][-1]
        members[layer] = _duplicate_member(members[layer])
        config = json.loads(members.pop(entry["Config"]))
        config["rootfs"]["diff_ids"][-1] = _sha256(members[layer])
        config_bytes = json.dumps(config).encode()
        entry["Config"] = _sha256(config_bytes).removeprefix("sha256:") + ".json"
        members[entry["Config"]] = config_bytes
        members["manifest.json"] = json.dumps([entry]).encode()
        return members

    _rewrite_archive(archive, change)
    _only_problem(verify_image(str(archive)), entry["Layers"][-1], "twice")


def test_hard_link_to_a_file_not_in_the_layer(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    link = tarfile.TarInfo("zz-link")
    link.type, link.linkname = tarfile.LNKTYPE, "nix/store/elsewhere/file"
    _replace_layer(folder, _extra_member(link))
    _only_problem(verify_image(str(folder)), "hard link", "not earlier in this layer")


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "nix/../../escape"])
def test_unsafe_member_name(name: str, image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    _replace_layer(folder, _extra_member(tarfile.TarInfo(name)))
    _only_problem(verify_image(str(folder)), "unsafe member name")


def test_layer_without_end_marker(image_builds: ImageBuilds, tmp_path: Path) -> None:
    folder = _copy(image_builds, "oci", "none", tmp_path)
    _replace_layer(folder, lambda data: data[: _tar_end(data)])
    _only_problem(verify_image(str(folder)), "no end-of-archive marker")


def test_layer_with_a_damaged_header(image_builds: ImageBuilds, tmp_path: Path) -> None:
    """A header with a bad checksum makes tarfile stop silently; what follows it is data,
    not the end marker, and that is reported."""
    folder = _copy(image_builds, "oci", "none", tmp_path)

    def damage(data: bytes) -> bytes:
        offset = _first_file(data).offset + 1  # the name: breaks the header's checksum
        return data[:offset] + b"\xff" + data[offset + 1 :]

    _replace_layer(folder, damage)
    _only_problem(verify_image(str(folder)), "damaged")


def test_member_twice_in_the_outer_archive(image_builds: ImageBuilds, tmp_path: Path) -> None:
    archive = _copy(image_builds, "docker-archive", "none", tmp_path)
    with tarfile.open(archive, "a") as tar:  # Python drops the end marker and appends
        data = json.dumps(_docker_manifest(archive)).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _only_problem(verify_image(str(archive)), "holds manifest.json twice")


def test_damaged_header_in_the_outer_archive(image_builds: ImageBuilds, tmp_path: Path) -> None:
    archive = _copy(image_builds, "docker-archive", "none", tmp_path)
    _flip(archive, _member(archive, "manifest.json").offset + 3)
    report = verify_image(str(archive))
    _caught(report, "the archive has data after a header it cannot read")


def test_docker_manifest_of_an_oci_archive_names_a_missing_file(
    image_builds: ImageBuilds, tmp_path: Path
) -> None:
    archive = _copy(image_builds, "oci-archive", "none", tmp_path)

    def change(members: dict[str, bytes]) -> dict[str, bytes]:
        manifest = json.loads(members["manifest.json"])
        manifest[0]["Layers"][0] = "blobs/sha256/" + "0" * 64
        members["manifest.json"] = json.dumps(manifest).encode()
        return members

    _rewrite_archive(archive, change)
    _only_problem(verify_image(str(archive)), "0" * 64, "missing")


def test_stray_files_in_blobs_are_notes_or_problems(
    image_builds: ImageBuilds, tmp_path: Path
) -> None:
    """A leftover temporary file is a note; a blob whose bytes are not its name, a problem."""
    folder = _copy(image_builds, "oci", "none", tmp_path)
    (folder / "blobs" / "sha256" / ".nixlayer-abc.tmp").write_bytes(b"half")
    report = verify_image(str(folder))
    assert report.ok and len(report.notes) == 1 and ".nixlayer-abc.tmp" in report.notes[0]
    (folder / "blobs" / "sha256" / ("f" * 64)).write_bytes(b"not f")
    _only_problem(verify_image(str(folder)), "f" * 64, "its sha256 is")


def test_cli_exit_codes(image_builds: ImageBuilds, tmp_path: Path) -> None:
    """``nixlayer verify``: 0 for a sound image, 1 and the problem for a damaged one,
    2 and one error line for a path that is not an image."""
    sound = image_builds.get("oci", "zstd", NAME).path
    assert run_nixlayer("verify", sound).returncode == 0
    folder = _copy(image_builds, "oci", "zstd", tmp_path)
    config = _oci_parts(folder)[1]["config"]["digest"]
    _flip(_blob(folder, config), 5)
    damaged = run_nixlayer("verify", folder, "--json")
    assert damaged.returncode == 1
    assert any(config in problem for problem in json.loads(damaged.stdout)["problems"])
    missing = run_nixlayer("verify", tmp_path / "nothing.tar")
    assert missing.returncode == 2
    assert missing.stderr.decode().startswith("nixlayer: error: ")
