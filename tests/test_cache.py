"""The layer cache's memory of blobs it saw hash to their names: a rebuild trusts a
blob that is still the very file it saw, and hashes anything else again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from support.handmade import small_store as _small_store
from support.run import run_ok
from test_hostile_output import _args, _blob, _image_blobs

from nixlayer.cache import LayerCache, default_cache_dir
from nixlayer.formats.oci import LayoutFolder
from nixlayer.report import format_report
from nixlayer.verify import verify_image


def _layout_with_blob(folder: Path, data: bytes) -> tuple[LayoutFolder, str, Path]:
    layout = LayoutFolder(folder, LayerCache(folder / "cache"))
    (folder / "blobs" / "sha256").mkdir(parents=True)
    digest = layout.put(data)
    return layout, digest, layout.blob(digest)


def test_a_blob_seen_unchanged_is_trusted_without_reading_it(tmp_path: Path) -> None:
    """What the cache remembers is the file, not its bytes: a blob whose bytes were
    changed and then remembered again (as if it were the file the cache saw) is
    trusted as it is, which shows that it was not read. Any later write is noticed."""
    data = os.urandom(4096)
    layout, digest, path = _layout_with_blob(tmp_path, data)
    path.write_bytes(bytes(len(data)))
    layout.cache.seen(path, digest)
    assert layout.has(digest, len(data))
    path.write_bytes(bytes(len(data)))
    assert not layout.has(digest, len(data))


def test_a_write_that_keeps_size_and_mtime_is_noticed(tmp_path: Path) -> None:
    """``touch -r`` can set a modification time back; nothing but the clock sets the
    change time, so the blob is hashed again and found damaged."""
    data = os.urandom(4096)
    layout, digest, path = _layout_with_blob(tmp_path, data)
    before = path.stat()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert not layout.has(digest, len(data))


def test_without_a_cache_every_blob_is_hashed(tmp_path: Path) -> None:
    layout = LayoutFolder(tmp_path, LayerCache(None))
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    data = b"config"
    digest = layout.put(data)
    assert digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
    layout.blob(digest).write_bytes(b"CONFIG")
    assert not layout.has(digest, len(data))


def test_a_rebuild_replaces_a_blob_damaged_with_its_mtime_kept(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 64 << 10)
    out = tmp_path / "image"
    build = _args(store, "--format", "oci", "-o", out, "--cache-dir", tmp_path / "c", cached=True)
    run_ok(*build)
    path = _blob(out, _image_blobs(out)["layers"][0]["digest"])
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    run_ok(*build)
    report = verify_image(str(out))
    assert report.ok, format_report(report)


def test_nix_shell_keeps_the_cache_a_nix_build_has_none() -> None:
    """``nix-shell`` sets NIX_BUILD_TOP and keeps the user's home; a builder's home is
    /homeless-shelter."""
    shell = {"NIX_BUILD_TOP": "/tmp/nix-shell.x", "HOME": "/home/u"}
    assert default_cache_dir(shell) == Path("/home/u/.cache/nixlayer")
    assert default_cache_dir({**shell, "HOME": "/homeless-shelter"}) is None
