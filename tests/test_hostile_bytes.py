"""Bytes that must depend on the closure and the settings alone: hard-linked twins in
the store, files that change between the layout and the read, and times at the edges
of what a tar header and an RFC 3339 string hold (issue 14, sections 3 and 4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from consumers import FixtureStore, copy_fixture_store, run_ok

# --- hard-linked twins ----------------------------------------------------------------


def _image_bytes(store: FixtureStore, out: Path, image_format: str, *options: str) -> dict:
    """Every file of the image (one, or a layout folder's) by its path under ``out``."""
    run_ok(
        "from-closure", store.closure_file, "--store-root", store.root, "-o", out,
        "--format", image_format, "--no-cache", "-q", *options,
    )  # fmt: skip
    if out.is_file():
        return {".": out.read_bytes()}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("image_format", ["docker-archive", "oci"])
def test_hard_linked_twins_give_the_same_image_as_separate_files(
    fixture_store: FixtureStore, tmp_path: Path, image_format: str
) -> None:
    """The fixture store holds twins, as `nix-store --optimise` leaves them: two names
    of one inode in zlib, and one inode in zlib and in openssl. A copy (copytree keeps
    no hard link) holds separate files, as a store never optimised does. The image is
    the same to the bit, with the twins in one layer and in two."""
    plain = copy_fixture_store(fixture_store, tmp_path / "plain")
    zlib = fixture_store.path("zlib-1.3.1")
    twins = [(store.disk(zlib) / "lib/libz.so.1", store.disk(zlib) / "lib/libz.so.1.3.1")
             for store in (fixture_store, plain)]  # fmt: skip
    assert [os.path.samestat(os.stat(a), os.stat(b)) for a, b in twins] == [True, False]
    for options in ((), ("--max-layers", "1")):
        optimised, separate = (
            _image_bytes(store, tmp_path / f"{label}-{len(options)}", image_format, *options)
            for label, store in (("optimised", fixture_store), ("separate", plain))
        )
        assert optimised == separate, f"different images with {options or 'default layers'}"
