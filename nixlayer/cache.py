"""The layer cache: what a layer's blob is, without reading, tarring or compressing it.

Store paths never change once built, so a store layer's bytes are a pure function
of its sorted paths and the writer's settings. The cache maps a key over all of
those to the layer's digests and sizes; a build that writes into an OCI layout
that already holds the blob then skips the layer entirely. An entry is only a
hint: one that is corrupt, truncated, of another shape or whose checksum does not
match is ignored, and a blob is reused only if it is present and hashes to the
recorded digest.

Hashing every reused blob would make a rebuild read the whole image again, so the
cache also remembers each blob it saw hash to its name by what the kernel says of the
file (device, inode, size, modification and change times). A blob that still matches
is the same file, unwritten since: any write, rename over it or metadata change moves
its change time, which no user can set back. One that does not match is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError
from nixlayer.jsonfile import load_json, open_regular, read_bounded
from nixlayer.output import pending_file
from nixlayer.tarwriter import TAR_FORMAT

CACHE_FORMAT = 2  # 2: entries carry a checksum
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENTRY_LIMIT = 4096  # an entry is some 250 bytes


@dataclass(frozen=True)
class CachedLayer:
    """What a layer turned out to be: its uncompressed diff_id, and its blob's digest,
    size and media type."""

    diff_id: str
    digest: str
    blob_size: int
    media_type: str


def layer_key(identity: dict[str, Any], compression: Compression) -> str:
    """A key that changes with everything a layer's bytes depend on: what the layer
    is (``identity``: its store paths and mtime, or a base layer's diff_id), the
    tar writer's format and the compression."""
    material = {
        "cache_format": CACHE_FORMAT,
        "tar_format": TAR_FORMAT,
        "layer": identity,
        "compression": [compression.algorithm, compression.level],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def default_cache_dir(environ: dict[str, str]) -> Path | None:
    """``$XDG_CACHE_HOME/nixlayer`` or ``~/.cache/nixlayer``; None inside a Nix build,
    where there is no writable home and nothing may be kept between builds (not
    ``NIX_BUILD_TOP``: ``nix-shell`` sets it too, and its users want their cache)."""
    if environ.get("HOME") in (None, "/homeless-shelter"):  # Nix's builders set it so
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ["HOME"], ".cache")
    return Path(base, "nixlayer")


class LayerCache:
    """Entries as small JSON files, written atomically; a missing folder means no cache."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _file(self, key: str) -> Path | None:
        return self.folder / "layers" / key[:2] / f"{key}.json" if self.folder else None

    def get(self, key: str) -> CachedLayer | None:
        path = self._file(key)
        if path is None:
            return None
        try:
            return _parse(load_json(path, str(path), _ENTRY_LIMIT), key)
        except (NixlayerError, TypeError):
            return None

    def put(self, key: str, layer: CachedLayer) -> None:
        entry = {**asdict(layer), "check": _checksum(key, layer)}
        self._write(self._file(key), json.dumps(entry).encode())

    def _write(self, path: Path | None, data: bytes) -> None:
        """Best effort: a cache that cannot be written is no reason to fail a build."""
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with pending_file(path.parent) as pending:  # no leftover even after kill -9
                pending.file.write(data)
                pending.publish(path)
        except (OSError, NixlayerError):
            return

    def _seen_file(self, blob: Path, digest: str) -> Path | None:
        if self.folder is None:
            return None
        key = hashlib.sha256(f"{os.path.abspath(blob)}\0{digest}".encode()).hexdigest()
        return self.folder / "blobs" / key[:2] / key

    def saw(self, blob: Path, digest: str, found: os.stat_result) -> bool:
        """Whether ``blob``, as ``found`` by ``fstat``, is the very file this cache saw
        hash to ``digest`` (see ``seen``)."""
        path = self._seen_file(blob, digest)
        if path is None:
            return False
        try:
            with open_regular(path, str(path)) as file:
                return read_bounded(file, str(path), _ENTRY_LIMIT) == _fingerprint(found)
        except NixlayerError:
            return False

    def seen(self, blob: Path, digest: str) -> None:
        """Remember that ``blob`` hashes to ``digest``: it was just written, or hashed."""
        with contextlib.suppress(OSError):
            self._write(self._seen_file(blob, digest), _fingerprint(os.stat(blob)))


def _fingerprint(found: os.stat_result) -> bytes:
    """What changes whenever a file's bytes may have: its identity, size and times."""
    fields = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
    return " ".join(map(str, fields)).encode()


def _parse(data: Any, key: str) -> CachedLayer | None:
    if not isinstance(data, dict) or set(data) != {*CachedLayer.__dataclass_fields__, "check"}:
        return None
    check = data.pop("check")
    layer = CachedLayer(**data)
    digests_ok = all(_DIGEST.fullmatch(str(d)) for d in (layer.diff_id, layer.digest))
    size_ok = type(layer.blob_size) is int and layer.blob_size >= 0
    shape_ok = digests_ok and size_ok and isinstance(layer.media_type, str)
    return layer if shape_ok and check == _checksum(key, layer) else None


def _checksum(key: str, layer: CachedLayer) -> str:
    """Of the entry and the key it is filed under. A damaged diff_id is still a
    digest (one hex digit for another), and the blob it comes with may be intact:
    reused, it would put a diff_id in the config that the layer does not have."""
    return hashlib.sha256(json.dumps([key, asdict(layer)], sort_keys=True).encode()).hexdigest()
