"""The format interface: one ``detect`` for every image kind, each format's ``write``
returning what it wrote (checked against the bytes on disk), ``inspect --json``'s
digests, media type and compression mapped one way, and errors worded as before."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore

from nixlayer.cache import LayerCache
from nixlayer.compression import (
    Compression,
    layer_media_type,
    magic_compression,
    media_type_compression,
)
from nixlayer.errors import NixlayerError, carried_by
from nixlayer.formats import (
    FORMATS,
    Writing,
    detect,
    find_image,
    format_named,
    is_image,
    read_image,
    write_image,
)
from nixlayer.formats.files import archive_files, folder_files
from nixlayer.image import ImageSettings, ImageSpec, WrittenImage, WrittenLayer
from nixlayer.layers import StoreLayer
from nixlayer.report import written_line

STORE = "/nix/store"


def _spec(store: FixtureStore, tag: str | None = "v1") -> ImageSpec:
    """Two store layers of the fixture store, with fixed settings."""
    paths = sorted(store.paths)
    root = os.fsencode(store.root)
    layers = (StoreLayer(tuple(paths[:3]), root, STORE), StoreLayer(tuple(paths[3:]), root, STORE))
    settings = ImageSettings("app", tag, "amd64", None, "1970-01-01T00:00:01Z", 1)
    return ImageSpec(settings, {"Cmd": ["/bin/app"]}, layers)


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _oci_parts(layout: Path) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """The only index descriptor of a layout, its manifest, and the config's bytes."""
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = json.loads(_blob(layout, descriptor["digest"]))
    return descriptor, manifest, _blob(layout, manifest["config"]["digest"])


def test_every_format_is_one_module_in_the_registry() -> None:
    assert list(FORMATS) == ["docker-archive", "oci", "oci-archive"]
    for name, module in FORMATS.items():
        assert name == module.NAME
        for function in ("detect", "read", "write", "verify"):
            assert callable(getattr(module, function)), (name, function)
    assert {name: m.DEFAULT_COMPRESSION for name, m in FORMATS.items()} == {
        "docker-archive": "none", "oci": "gzip", "oci-archive": "gzip",
    }  # fmt: skip
    with pytest.raises(NixlayerError) as raised, carried_by("image_format"):
        format_named("docker")
    assert raised.value.worded(lambda option: "--format") == (
        "--format docker: expected one of docker-archive, oci, oci-archive"
    )


def test_a_docker_archive_write_returns_what_is_on_disk(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    out = tmp_path / "image.tar"
    spec = _spec(fixture_store)
    written = write_image(spec, FORMATS["docker-archive"], str(out), Writing())
    with tarfile.open(out) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        tars = [tar.extractfile(name).read() for name in entry["Layers"]]  # type: ignore[union-attr]
    assert (written.image_format, written.destination, written.ref) == (
        "docker-archive", str(out), "app:v1",
    )  # fmt: skip
    assert written.manifest_digest is None
    assert written.config_digest == _sha256(config)
    assert [layer.diff_id for layer in written.layers] == json.loads(config)["rootfs"]["diff_ids"]
    assert [layer.digest for layer in written.layers] == [_sha256(data) for data in tars]
    assert [layer.size for layer in written.layers] == [len(data) for data in tars]
    assert [layer.store_paths for layer in written.layers] == [
        layer.paths
        for layer in spec.layers  # type: ignore[attr-defined]
    ]
    assert {layer.media_type for layer in written.layers} == {layer_media_type(None)}
    image = read_image(str(out))
    assert (image.config_digest, image.manifest_digest) == (written.config_digest, None)


@pytest.mark.parametrize("image_format", ["oci", "oci-archive"])
def test_an_oci_write_returns_what_is_on_disk(
    fixture_store: FixtureStore, tmp_path: Path, image_format: str
) -> None:
    out = tmp_path / ("layout" if image_format == "oci" else "image.tar")
    writing = Writing(Compression("zstd"), LayerCache(tmp_path / "cache"))
    written = write_image(_spec(fixture_store, tag=None), FORMATS[image_format], str(out), writing)
    layout = out
    if image_format == "oci-archive":
        layout = tmp_path / "unpacked"
        with tarfile.open(out) as tar:
            tar.extractall(layout, filter="data")
    descriptor, manifest, config = _oci_parts(layout)
    assert written.manifest_digest == descriptor["digest"]
    assert written.config_digest == _sha256(config) == manifest["config"]["digest"]
    assert written.tag == hashlib.sha256(config).hexdigest()[:32]  # derived from the config
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == written.ref
    assert [(layer.digest, layer.size, layer.media_type) for layer in written.layers] == [
        (layer["digest"], layer["size"], layer["mediaType"]) for layer in manifest["layers"]
    ]
    assert {layer.media_type for layer in written.layers} == {layer_media_type("zstd")}
    assert not any(layer.reused for layer in written.layers)
    image = read_image(str(out))
    assert (image.config_digest, image.manifest_digest) == (
        written.config_digest, written.manifest_digest,
    )  # fmt: skip


def test_a_layout_written_again_reuses_its_blobs(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    out = tmp_path / "layout"
    writing = Writing(Compression("gzip"), LayerCache(tmp_path / "cache"))
    first = write_image(_spec(fixture_store), FORMATS["oci"], str(out), writing)
    again = write_image(_spec(fixture_store), FORMATS["oci"], str(out), writing)
    assert [layer.reused for layer in again.layers] == [True, True]
    assert again.manifest_digest == first.manifest_digest
    assert written_line(again) == f"wrote app:v1 to {out} (2 layers, 2 reused)"


def _written(image_format: str, destination: str, reused: tuple[bool, ...]) -> WrittenImage:
    layers = tuple(
        WrittenLayer(f"sha256:{n}", f"sha256:{n}", 1, layer_media_type(None), (), r)
        for n, r in enumerate(reused)
    )
    return WrittenImage(image_format, destination, "app", "v1", None, "sha256:c", layers)


def test_the_written_line_is_worded_as_before() -> None:
    assert written_line(_written("docker-archive", "out.tar", (False,) * 3)) == (
        "wrote app:v1 to out.tar (3 layers)"
    )
    assert (
        written_line(_written("oci-archive", "-", (False,) * 2)) == "wrote app:v1 to - (2 layers)"
    )
    assert written_line(_written("oci", "dir", (True, False, True))) == (
        "wrote app:v1 to dir (3 layers, 2 reused)"
    )
    assert written_line(_written("oci", "a\nb", ())) == "wrote app:v1 to a\\nb (0 layers, 0 reused)"


@pytest.mark.parametrize(
    ("image_format", "options"),
    [
        ("docker-archive", ()),
        ("oci", ()),
        ("oci-archive", ()),
        ("docker-archive", ("--compress", "zstd")),
    ],
)
def test_the_cli_says_what_it_wrote(
    fixture_store: FixtureStore, tmp_path: Path, image_format: str, options: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    result = run_ok("from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
                    "--format", image_format, "--name", "app:v1", "-o", out, "--no-cache",
                    *options)  # fmt: skip
    layers = len(read_image(str(out)).layers)
    kept = ", 0 reused" if image_format == "oci" else ""
    line = result.stderr.decode().splitlines()[-1]
    assert line == f"nixlayer: wrote app:v1 to {out} ({layers} layers{kept})"


def test_inspect_json_has_the_config_and_manifest_digests(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    layout, archive = tmp_path / "layout", tmp_path / "image.tar"
    base = ["from-closure", fixture_store.closure_file, "--store-root", fixture_store.root]
    run_ok(*base, "--format", "oci", "-o", layout, "--name", "app:v1")
    run_ok(*base, "-o", archive)
    descriptor, manifest, config = _oci_parts(layout)
    shown = json.loads(run_ok("inspect", "--json", f"{layout}:app:v1").stdout)
    assert shown["manifest_digest"] == descriptor["digest"]
    assert shown["config_digest"] == manifest["config"]["digest"] == _sha256(config)
    shown = json.loads(run_ok("inspect", "--json", archive).stdout)
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
    assert shown["manifest_digest"] is None
    assert shown["config_digest"] == _sha256(config)
    assert {"source", "repo_tags", "architecture", "config", "layers"} <= shown.keys()


def test_one_detect_tells_every_kind_apart(fixture_store: FixtureStore, tmp_path: Path) -> None:
    base = ["from-closure", fixture_store.closure_file, "--store-root", fixture_store.root]
    images = {
        "docker-archive": tmp_path / "d.tar",
        "oci": tmp_path / "layout",
        "oci-archive": tmp_path / "o.tar",
    }
    for image_format, path in images.items():
        run_ok(*base, "--format", image_format, "-o", path)
        found = find_image(str(path))
        assert image_format == found.image_format.NAME
        files = folder_files(path) if path.is_dir() else archive_files(path)
        claims = [name for name, module in FORMATS.items() if module.detect(files)]
        claims = [n for n in claims if path.is_dir() == FORMATS[n].FOLDER]
        assert claims == [image_format]  # never two formats
        assert detect(files, path.is_dir()) is found.image_format
        assert is_image(str(path))
    assert not is_image(str(fixture_store.closure_file))
    assert not is_image(str(tmp_path / "missing.json"))
    assert is_image(f"{images['oci']}:app:v1")  # PATH:REF


def test_a_zstd_docker_archive_is_an_image_for_diff(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """tarfile.is_tarfile reads no zstd, so ``diff`` took such an archive for a closure."""
    packed = tmp_path / "image.tar.zst"
    run_ok("from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
           "-o", packed, "--compress", "zstd")  # fmt: skip
    assert is_image(str(packed))
    result = run_ok("diff", packed, packed, "--json")
    assert json.loads(result.stdout)["pushed"] == 0


def test_media_type_and_compression_are_mapped_once() -> None:
    for algorithm in ("gzip", "zstd"):
        assert media_type_compression(layer_media_type(algorithm)) == algorithm
        assert Compression(algorithm).media_type == layer_media_type(algorithm)
    assert media_type_compression(layer_media_type(None)) is None
    assert layer_media_type("none") == layer_media_type(None) == Compression().media_type
    docker = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert media_type_compression(docker) == "gzip"
    assert magic_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert magic_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert magic_compression(b"ustar") is None


def _error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 2, result.stderr
    return result.stderr.decode()


def test_errors_name_the_flag_only_for_the_value_itself(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """A value that names no image is the flag's (``--from x``, ``IMAGE x``); what an
    image's files hold is said of the file, as before (no flag)."""
    layout = tmp_path / "layout"
    base = ["from-closure", fixture_store.closure_file, "--store-root", fixture_store.root]
    for tag in ("a", "b"):
        run_ok(*base, "--format", "oci", "-o", layout, "--name", f"app:{tag}")
    missing = tmp_path / "missing.tar"
    assert _error(run_nixlayer("inspect", missing)) == (
        f"nixlayer: error: IMAGE {missing}: no such image file or folder\n"
    )
    assert _error(run_nixlayer(*base, "-o", tmp_path / "x.tar", "--from", missing)) == (
        f"nixlayer: error: --from {missing}: no such image file or folder\n"
    )
    holds = f"{layout}: choose an image with PATH:REF (it holds: app:a, app:b)"
    assert _error(run_nixlayer("inspect", layout)) == f"nixlayer: error: {holds}\n"
    assert _error(run_nixlayer(*base, "-o", tmp_path / "x.tar", "--from", layout)) == (
        f"nixlayer: error: {holds}\n"
    )
    assert _error(run_nixlayer("diff", layout, fixture_store.closure_file)) == (
        f"nixlayer: error: {holds}\n"
    )
    nowhere = tmp_path / "no" / "x.tar"
    assert _error(run_nixlayer(*base, "-o", nowhere)) == (
        f"nixlayer: error: -o {nowhere}: the folder {nowhere.parent} does not exist\n"
    )
    assert _error(run_nixlayer("plan", fixture_store.closure_file, "-o", nowhere)) == (
        f"nixlayer: error: -o {nowhere}: the folder {nowhere.parent} does not exist\n"
    )


def test_a_store_path_gone_while_writing_is_not_the_outputs_error(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """Reading a layer's files is not writing the output: no ``-o`` before it."""
    closure = json.loads(fixture_store.closure_file.read_text())
    gone = {**closure[0], "path": f"{STORE}/{'0' * 32}-gone"}
    given = tmp_path / "closure.json"
    given.write_text(json.dumps([*closure, gone]))
    on_disk = fixture_store.root / f"{STORE}/{'0' * 32}-gone".lstrip("/")
    for image_format in ("docker-archive", "oci"):
        out = tmp_path / image_format
        args = ["--store-root", fixture_store.root, "--format", image_format, "-o", out]
        line = _error(run_nixlayer("from-closure", given, *args))
        assert line == f"nixlayer: error: {on_disk}: does not exist on disk\n"
