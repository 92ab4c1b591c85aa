"""Base images (--from) and inspect, over docker-archives and OCI layouts that skopeo made."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.archives import read_docker_archive, read_oci_layout
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore
from support.tools import Tools, skopeo_copy_to_oci, umoci_unpack
from support.trees import compare_tree


@pytest.fixture(scope="module")
def base_closure(fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closure of one store path of the fixture (zlib → glibc), for a base image."""
    zlib = fixture_store.path("zlib-1.3.1")
    wanted = {zlib, *next(e for e in fixture_store.entries if e["path"] == zlib)["references"]}
    entries = [e for e in fixture_store.entries if e["path"] in wanted]
    path = tmp_path_factory.mktemp("base-closure") / "closure.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def base_image(
    base_closure: Path, fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An image of the base closure with a run config, to build on."""
    out = tmp_path_factory.mktemp("base") / "base.tar"
    run_ok(
        "from-closure", base_closure, "--store-root", fixture_store.root,
        "-o", out, "--env", "PATH=/bin", "--env", "LANG=C", "--cmd", "sh", "--name", "base:1",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def top_closure(fixture_store: FixtureStore) -> Path:
    """The whole fixture closure, which holds the base's paths and more, to put on top."""
    return fixture_store.closure_file


def _build_on(base: str, closure: Path, store: FixtureStore, out: Path, *extra: str) -> None:
    run_ok("from-closure", closure, "--store-root", store.root, "-o", out, "--from", base, *extra)


def _layer_paths(image: Path | str) -> list[list[str]]:
    return [
        layer["store_paths"]
        for layer in json.loads(run_ok("inspect", image, "--json").stdout)["layers"]
    ]


@pytest.mark.parametrize("base_format", ["docker-archive", "oci"])
def test_layers_go_on_top_of_the_base(
    base_format: str,
    base_image: Path,
    top_closure: Path,
    fixture_store: FixtureStore,
    tools: Tools,
    tmp_path: Path,
) -> None:
    """Ours go on top, without the store paths the base holds already (its history
    comments say which), and the image holds the whole closure."""
    base = str(base_image)
    if base_format == "oci":  # skopeo's OCI layout holds gzip-compressed layers
        skopeo_copy_to_oci(base_image, tmp_path / "base-oci", tag="b")
        base = f"{tmp_path / 'base-oci'}:b"
    out = tmp_path / "top.tar"
    _build_on(base, top_closure, fixture_store, out, "--env", "LANG=C.UTF-8", "--workdir", "/w")
    base_config = read_docker_archive(base_image.read_bytes()).config
    config = read_docker_archive(out.read_bytes()).config
    base_ids = base_config["rootfs"]["diff_ids"]
    assert config["rootfs"]["diff_ids"][: len(base_ids)] == base_ids
    assert config["history"][: len(base_ids)] == base_config["history"]
    assert config["config"] == {"Cmd": ["sh"], "Env": ["PATH=/bin", "LANG=C.UTF-8"],
                                "WorkingDir": "/w"}  # fmt: skip
    layers = _layer_paths(out)
    in_base = {p for layer in layers[: len(base_ids)] for p in layer}
    ours = [p for layer in layers[len(base_ids) :] for p in layer]
    assert in_base == {fixture_store.path("zlib-1.3.1"), fixture_store.path("glibc-2.38-27")}
    assert sorted(ours) == sorted(set(fixture_store.paths) - in_base)
    skopeo_copy_to_oci(out, tmp_path / "oci")
    rootfs = umoci_unpack(tmp_path / "oci", "test", tmp_path / "bundle")
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_an_oci_image_keeps_the_compressed_base_layers_as_they_are(
    compress: str,
    base_image: Path,
    top_closure: Path,
    fixture_store: FixtureStore,
    tools: Tools,
    tmp_path: Path,
) -> None:
    """Compressed anew, a base's layers would get new digests, and whoever has the base
    would fetch them again: they are copied, whatever --compress says for ours."""
    skopeo_copy_to_oci(base_image, tmp_path / "base-oci", tag="b")  # gzip layers
    base = read_oci_layout(tmp_path / "base-oci", "b").manifest["layers"]
    out = tmp_path / "top-oci"
    for _ in range(2):  # the second time into the same folder, where the blobs are
        _build_on(f"{tmp_path / 'base-oci'}:b", top_closure, fixture_store, out,
                  "--format", "oci", "--compress", compress, "--name", "top:1")  # fmt: skip
        layers = read_oci_layout(out, "top:1").manifest["layers"]
        assert layers[: len(base)] == base
        assert all(layer["mediaType"].endswith(compress) for layer in layers[len(base) :])
    copied = tmp_path / "copied"
    run_tool = subprocess.run(
        [tools.skopeo, "--insecure-policy", "copy", "--dest-compress-format", "gzip",
         f"oci:{out}:top:1", f"oci:{copied}:t"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run_tool.returncode == 0, run_tool.stderr  # skopeo checks every blob's digest
    rootfs = umoci_unpack(copied, "t", tmp_path / "bundle")
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []


def test_plan_from_a_base_shows_the_layers_from_closure_adds(
    base_image: Path, top_closure: Path, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    base_layers = len(_layer_paths(base_image))
    plan = json.loads(run_ok("plan", top_closure, "--from", base_image,
                             "--max-layers", str(100 - base_layers), "-q").stdout)  # fmt: skip
    out = tmp_path / "top.tar"
    _build_on(str(base_image), top_closure, fixture_store, out)
    assert [layer["paths"] for layer in plan["layers"]] == _layer_paths(out)[base_layers:]


def test_docker_media_types_of_a_base_become_oci_ones(
    base_image: Path, top_closure: Path, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """containerd exports OCI layouts whose manifests carry Docker media types: the
    blobs are kept, under the OCI type of the same compression."""
    skopeo_copy_to_oci(base_image, tmp_path / "base-oci", tag="b")
    layout = tmp_path / "base-oci"
    index = json.loads((layout / "index.json").read_text())
    manifest = _oci_blob(layout, index["manifests"][0]["digest"])
    data = json.loads(manifest.read_text())
    for layer in data["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    manifest.write_text(json.dumps(data))
    out = tmp_path / "top-oci"
    _build_on(f"{layout}:b", top_closure, fixture_store, out, "--format", "oci", "--name", "t:1")
    layers = read_oci_layout(out, "t:1").manifest["layers"]
    assert [layer["digest"] for layer in layers[: len(data["layers"])]] == [
        layer["digest"] for layer in data["layers"]
    ]
    assert {layer["mediaType"] for layer in layers} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }


def test_a_base_nixlayer_did_not_write_gets_every_path(
    top_closure: Path, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """Without history comments nothing says what the base holds: every path is added."""
    base = tmp_path / "other.tar"
    _docker_archive_with_layer(base, _tar([("etc/motd", b"hello\n")]), compress=False)
    out = tmp_path / "top.tar"
    _build_on(str(base), top_closure, fixture_store, out)
    assert sorted(p for layer in _layer_paths(out) for p in layer) == sorted(fixture_store.paths)


def _with_layer_on_top(base: Path, target: Path, layer: bytes, created_by: str) -> None:
    """``base`` (a docker-archive) with one more layer, as another tool would add it."""
    with tarfile.open(base) as outer:
        members = {m.name: outer.extractfile(m).read() for m in outer if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members.pop("manifest.json"))
    config = json.loads(members.pop(manifest[0]["Config"]))
    config["rootfs"]["diff_ids"].append(f"sha256:{hashlib.sha256(layer).hexdigest()}")
    config["history"].append({"created_by": created_by})
    manifest[0] |= {"Config": "config.json", "Layers": [*manifest[0]["Layers"], "top.tar"]}
    members |= {"top.tar": layer, "config.json": json.dumps(config).encode(),
                "manifest.json": json.dumps(manifest).encode()}  # fmt: skip
    target.write_bytes(_tar(list(members.items())))


def test_a_layer_another_tool_added_above_makes_every_path_go_in(
    base_image: Path, top_closure: Path, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """A layer above the base's own may have deleted store paths (here a whiteout of
    zlib): nothing is left out, and the image holds the whole closure."""
    zlib = fixture_store.path("zlib-1.3.1").lstrip("/")
    whiteout = _tar([(f"{zlib.rsplit('/', 1)[0]}/.wh.{zlib.rsplit('/', 1)[1]}", b"")])
    base = tmp_path / "extended.tar"
    _with_layer_on_top(base_image, base, whiteout, f"RUN rm -rf /{zlib}")
    out = tmp_path / "top.tar"
    _build_on(str(base), top_closure, fixture_store, out)
    base_count = len(read_docker_archive(base.read_bytes()).config["rootfs"]["diff_ids"])
    ours = [p for layer in _layer_paths(out)[base_count:] for p in layer]
    assert sorted(ours) == sorted(fixture_store.paths)
    skopeo_copy_to_oci(out, tmp_path / "oci")
    rootfs = umoci_unpack(tmp_path / "oci", "test", tmp_path / "bundle")
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []


def test_the_base_counts_against_max_layers(
    base_image: Path, top_closure: Path, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    base_layers = len(read_docker_archive(base_image.read_bytes()).config["rootfs"]["diff_ids"])
    out = tmp_path / "top.tar"
    _build_on(
        str(base_image), top_closure, fixture_store, out, "--max-layers", str(base_layers + 1)
    )
    assert (
        len(read_docker_archive(out.read_bytes()).config["rootfs"]["diff_ids"]) == base_layers + 1
    )
    result = run_nixlayer(
        "from-closure", top_closure, "--store-root", fixture_store.root, "-o", tmp_path / "x.tar",
        "--from", base_image, "--max-layers", str(base_layers),
    )  # fmt: skip
    assert result.returncode == 2 and b"--max-layers" in result.stderr
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(
    ("image_format", "said"),
    [("docker-archive", b"does not match its diff_id"), ("oci", b"does not match its digest")],
)
def test_a_corrupt_base_layer_stops_the_build(
    image_format: str,
    said: bytes,
    base_image: Path,
    top_closure: Path,
    fixture_store: FixtureStore,
    tools: Tools,
    tmp_path: Path,
) -> None:
    """A docker-archive holds the base's layers uncompressed, checked against their
    diff_ids; an OCI image copies them as stored, checked against their digests."""
    skopeo_copy_to_oci(base_image, tmp_path / "oci", tag="b")
    manifest_digest = json.loads((tmp_path / "oci" / "index.json").read_text())["manifests"][0]
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest["digest"].split(":")[1]).read_text())
    victim = blobs / manifest["layers"][-1]["digest"].split(":")[1]
    victim.write_bytes(subprocess.run(
        ["gzip", "-n"], input=b"not the layer", capture_output=True, check=True
    ).stdout)  # fmt: skip
    out = tmp_path / "top"
    result = run_nixlayer(
        "from-closure", top_closure, "--store-root", fixture_store.root, "-o", out,
        "--from", f"{tmp_path / 'oci'}:b", "--format", image_format, "-q",
    )  # fmt: skip
    assert result.returncode == 2
    assert said in result.stderr and result.stderr.count(b"\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("what", ["missing", "folder", "not-a-tar"])
def test_a_base_that_is_not_an_image(
    what: str, top_closure: Path, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    if what == "folder":
        base.mkdir()
    elif what == "not-a-tar":
        base.write_text("hello")
    result = run_nixlayer(
        "from-closure", top_closure, "--store-root", fixture_store.root,
        "-o", tmp_path / "x.tar", "--from", base,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixlayer: error:") and str(base) in lines[0]
    assert not (tmp_path / "x.tar").exists()


def _oci_blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _break_index(layout: Path) -> None:
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [1]}')


def _break_annotations(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = "b"
    (layout / "index.json").write_text(json.dumps(index))


def _break_rootfs(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_oci_blob(layout, index["manifests"][0]["digest"]).read_text())
    config = _oci_blob(layout, manifest["config"]["digest"])
    config.write_text(json.dumps(json.loads(config.read_text()) | {"rootfs": []}))


def _break_layers(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    manifest = _oci_blob(layout, index["manifests"][0]["digest"])
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"layers": [1] * len(data["layers"])}))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_break_index, "index.json: a manifest is not a JSON object"),
        (_break_annotations, "the manifest's annotations is not a JSON object"),
        (_break_rootfs, "the config's rootfs is not a JSON object"),
        (_break_layers, "the manifest's layer is not a JSON object"),
    ],
    ids=["index", "annotations", "rootfs", "layers"],
)
def test_malformed_image_metadata_is_one_error_line(
    damage: Callable[[Path], None],
    said: str,
    base_closure: Path,
    top_closure: Path,
    fixture_store: FixtureStore,
    tmp_path: Path,
) -> None:
    """inspect, --from and -o into an existing layout name the image and what is wrong."""
    layout = tmp_path / "layout"
    run_ok("from-closure", base_closure, "--store-root", fixture_store.root,
           "--format", "oci", "-o", layout)  # fmt: skip
    damage(layout)
    uses = [
        ("inspect", layout),
        ("from-closure", top_closure, "--store-root", fixture_store.root,
         "-o", tmp_path / "x.tar", "--from", layout),
        ("from-closure", top_closure, "--store-root", fixture_store.root,
         "--format", "oci", "-o", layout),
    ]  # fmt: skip
    for args in uses[: 3 if damage is _break_index else 2]:
        result = run_nixlayer(*args, "-q") if args[0] != "inspect" else run_nixlayer(*args)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("nixlayer: error: ") and said in lines[0], lines
        assert str(layout) in lines[0]
    assert not (tmp_path / "x.tar").exists()


def test_a_docker_archive_with_a_malformed_config_is_one_error_line(tmp_path: Path) -> None:
    manifest = json.dumps([{"Config": "config.json", "Layers": ["layer.tar"]}]).encode()
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": []}).encode()
    image = tmp_path / "image.tar"
    image.write_bytes(_tar([("manifest.json", manifest), ("config.json", config)]))
    result = run_nixlayer("inspect", image)
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"nixlayer: error: {image}: the config's rootfs is not a JSON object\n"
    )


def test_optional_metadata_of_the_wrong_type_is_ignored(tmp_path: Path) -> None:
    """history and RepoTags are optional: where they are not lists, an image has none."""
    layer = _tar([("etc/motd", b"hello\n")])
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = {"architecture": "amd64", "os": "linux", "history": 5,
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}  # fmt: skip
    manifest = [{"Config": "config.json", "RepoTags": "x", "Layers": ["layer.tar"]}]
    image = tmp_path / "image.tar"
    image.write_bytes(_tar([("layer.tar", layer), ("config.json", json.dumps(config).encode()),
                            ("manifest.json", json.dumps(manifest).encode())]))  # fmt: skip
    described = json.loads(run_ok("inspect", image, "--json").stdout)
    assert described["repo_tags"] == [] and described["layers"][0]["store_paths"] == []


def test_inspect_reads_back_the_plan(
    base_image: Path, base_closure: Path, tools: Tools, tmp_path: Path
) -> None:
    plan = json.loads(run_ok("plan", base_closure, "-q").stdout)
    described = json.loads(run_ok("inspect", base_image, "--json").stdout)
    assert described["repo_tags"] == ["docker.io/library/base:1"]  # as written: in full
    assert described["config"]["Cmd"] == ["sh"]
    assert [layer["store_paths"] for layer in described["layers"]] == [
        layer["paths"] for layer in plan["layers"]
    ]
    skopeo_copy_to_oci(base_image, tmp_path / "oci", tag="b")
    from_oci = json.loads(run_ok("inspect", f"{tmp_path / 'oci'}:b", "--json").stdout)
    assert [layer["diff_id"] for layer in from_oci["layers"]] == [
        layer["diff_id"] for layer in described["layers"]
    ]
    assert all(layer["media_type"].endswith("gzip") for layer in from_oci["layers"])
    text = run_ok("inspect", base_image).stdout.decode()
    assert "docker.io/library/base:1" in text and "glibc-2.38-27" in text


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_inspect_and_from_read_a_compressed_docker_archive(
    compress: str, base_closure: Path, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """A docker-archive compressed as a whole (``--compress`` on docker-archive), as
    ``verify`` reads it: ``inspect`` shows it, and ``--from`` builds on it. The base
    holds the whole closure here, so the image gets no layer of its own and fits in
    as many layers as the base has."""
    base = tmp_path / f"base.tar.{compress}"
    run_ok(
        "from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
        "-o", base, "--compress", compress, "--cmd", "sh", "--name", "base:1",
    )  # fmt: skip
    described = json.loads(run_ok("inspect", base, "--json").stdout)
    assert described["repo_tags"] == ["docker.io/library/base:1"]
    assert described["config"]["Cmd"] == ["sh"]
    out = tmp_path / "top.tar"
    base_ids = [layer["diff_id"] for layer in described["layers"]]
    _build_on(str(base), base_closure, fixture_store, out, "--max-layers", str(len(base_ids)))
    config = read_docker_archive(out.read_bytes()).config
    assert config["rootfs"]["diff_ids"] == base_ids
    skopeo_copy_to_oci(out, tmp_path / "oci")
    rootfs = umoci_unpack(tmp_path / "oci", "test", tmp_path / "bundle")
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of regular files with exactly these names, as a hostile tool could write."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _docker_archive_with_layer(target: Path, layer: bytes, compress: bool) -> str:
    """A docker-archive of one layer (gzip-compressed, as some tools store it, when
    ``compress``); returns the layer's diff_id."""
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()  # fmt: skip
    stored = gzip.compress(layer, mtime=0) if compress else layer
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["evil:1"],
                            "Layers": ["layer.tar"]}]).encode()  # fmt: skip
    target.write_bytes(
        _tar([("layer.tar", stored), ("config.json", config), ("manifest.json", manifest)])
    )
    return diff_id


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    ("members", "said"),
    [
        ([("/etc/passwd", b"root")], "unsafe member name /etc/passwd"),
        ([("a", b""), ("../../outside", b"x")], "unsafe member name ../../outside"),
        ([("etc/motd", b"1"), ("etc/motd", b"2")], "holds etc/motd twice"),
    ],
    ids=["absolute", "dotdot", "twice"],
)
def test_a_base_layer_with_unsafe_names_is_refused(
    members: list[tuple[str, bytes]],
    said: str,
    compress: bool,
    top_closure: Path,
    fixture_store: FixtureStore,
    tmp_path: Path,
) -> None:
    base = tmp_path / "evil.tar"
    diff_id = _docker_archive_with_layer(base, _tar(members), compress)
    out = tmp_path / "top.tar"
    result = run_nixlayer(
        "from-closure", top_closure, "--store-root", fixture_store.root, "-o", out,
        "--from", base,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode() == f"nixlayer: error: {base}: layer {diff_id}: {said}\n"
    assert not out.exists()
    assert os.listdir(tmp_path) == ["evil.tar"]
