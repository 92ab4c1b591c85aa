"""OCI output: layouts and archives that skopeo and umoci accept, compressed
deterministically, and rebuilt at the cost of what changed."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from support.run import run_nixlayer, run_ok
from support.stores import FixtureStore, app_update, copy_fixture_store
from support.tools import Tools, _run_tool, umoci_unpack
from support.trees import compare_tree

from nixlayer.compression import CompressedStream, Compression


def _build(store: FixtureStore, closure: Path, out: Path, *options: str) -> str:
    result = run_ok("from-closure", closure, "--store-root", store.root, "-o", out, *options)
    return result.stderr.decode()


def _oci(store: FixtureStore, out: Path, *options: str) -> str:
    return _build(store, store.closure_file, out, "--format", "oci", *options)


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_oci_layout_passes_skopeo_and_umoci(
    compress: str, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    _oci(fixture_store, layout, "--compress", compress, "--name", "app:v1", "--no-cache")
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == "app:v1"
    manifest = json.loads((layout / "blobs/sha256" / descriptor["digest"][7:]).read_bytes())
    suffix = "" if compress == "none" else f"+{compress}"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        f"application/vnd.oci.image.layer.v1.tar{suffix}"
    }
    # skopeo checks every digest on the way; umoci cannot read zstd, so go through gzip.
    _run_tool(
        [tools.skopeo, "--insecure-policy", "copy", "--dest-compress-format", "gzip",
         f"oci:{layout}:app:v1", f"oci:{tmp_path / 'copy'}:t"]
    )  # fmt: skip
    rootfs = umoci_unpack(tmp_path / "copy", "t", tmp_path / "bundle")
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []


def test_oci_archive_is_reproducible_and_streams(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    _build(fixture_store, fixture_store.closure_file, first, "--format", "oci-archive")
    _build(fixture_store, fixture_store.closure_file, second, "--format", "oci-archive")
    streamed = run_ok(
        "from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
        "--format", "oci-archive", "-o", "-",
    ).stdout  # fmt: skip
    assert first.read_bytes() == second.read_bytes() == streamed
    _run_tool([tools.skopeo, "--insecure-policy", "copy", f"oci-archive:{first}",
               f"oci:{tmp_path / 'copy'}:t"])  # fmt: skip
    _run_tool([tools.skopeo, "--insecure-policy", "copy", f"docker-archive:{first}",
               f"oci:{tmp_path / 'copy'}:d"])  # fmt: skip


def test_whole_docker_archive_compression(fixture_store: FixtureStore, tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain.tar", tmp_path / "packed.tar.zst"
    _build(fixture_store, fixture_store.closure_file, plain)
    _build(fixture_store, fixture_store.closure_file, packed, "--compress", "zstd")
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(packed.open("rb")) as reader:
        assert reader.read() == plain.read_bytes()


def test_compression_is_deterministic_and_standard() -> None:
    import gzip

    data = b"".join(hashlib.sha256(bytes([i])).digest() * 300 for i in range(256))
    for level in (1, 6, 9):
        outputs = []
        for _ in range(2):
            compressor = Compression("gzip", level).compressor()
            outputs.append(compressor.compress(data) + compressor.flush())
        assert outputs[0] == outputs[1]
        assert outputs[0][:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes(
            ({9: 2, 1: 4}.get(level, 0), 255)
        )
        assert gzip.decompress(outputs[0]) == data

    sink = io.BytesIO()
    stream = CompressedStream(sink, Compression("gzip"))
    stream.write(data)
    stream.finish()
    assert gzip.decompress(sink.getvalue()) == data


def test_rebuild_after_an_app_change_reads_only_the_app(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    store = copy_fixture_store(fixture_store, tmp_path / "store")
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    first = _oci(store, layout, "--cache-dir", str(cache))
    assert "0 reused" in first
    updated = app_update(store, tmp_path)
    # Every unchanged store path leaves the disk: reading one would fail the build.
    for path in store.paths:
        if not path.endswith("app-1.0"):
            on_disk = store.disk(path)
            on_disk.unlink() if on_disk.is_symlink() or on_disk.is_file() else shutil.rmtree(
                on_disk
            )
    second = _build(store, updated, layout, "--format", "oci", "--cache-dir", str(cache))
    assert f"{len(store.paths)} layers, {len(store.paths) - 1} reused" in second


def test_a_corrupt_cache_entry_is_ignored(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _oci(fixture_store, tmp_path / "first", "--cache-dir", str(cache))
    entries = sorted(cache.rglob("*.json"))
    assert entries
    entries[0].write_text('{"diff_id": "sha256:')  # truncated
    entries[1].write_text(json.dumps({"diff_id": "nonsense", "size": -1}))
    layout = tmp_path / "layout"
    _oci(fixture_store, layout, "--cache-dir", str(cache), "--name", "app:v1")
    _run_tool([tools.skopeo, "--insecure-policy", "copy", f"oci:{layout}:app:v1",
               f"oci:{tmp_path / 'copy'}:t"])  # fmt: skip


def test_oci_output_refuses_other_folders_and_stdout(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    for out in (other, "-"):
        result = run_nixlayer(
            "from-closure", fixture_store.closure_file, "--store-root", fixture_store.root,
            "--format", "oci", "-o", out,
        )  # fmt: skip
        assert result.returncode == 2 and result.stderr.startswith(b"nixlayer: error: -o")
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]
