"""Re-read an image on disk and check that every part agrees with what names it.

Consumers check different things (``docker load`` the diff_ids, skopeo the blob
digests, a registry the manifest sizes), so an image damaged by a copy, a full disk or
a hand edit may pass one of them and fail later in another. ``verify_image`` checks all
of them in one pass over each blob: every blob's sha256 and size against its
descriptor, every layer's uncompressed sha256 against the config's diff_id, the
manifests and index against the config, and every layer tar member by member (each
path once, no absolute or ``..`` names, hard links only to earlier members of the same
layer, an intact end-of-archive marker). It reads docker-archives (plain or compressed
as a whole), OCI layout folders and oci-archives, and never unpacks anything.

Problems with the image are collected in a ``VerifyReport``; only a path that is not
an image at all raises ``NixlayerError``.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from nixlayer.blobs import BlobRead, read_blob, read_layer, reopenable
from nixlayer.errors import NixlayerError
from nixlayer.formats.docker_archive import MANIFEST
from nixlayer.formats.files import (
    READ_ERRORS,
    ImageFiles,
    compression_of,
    decompressed_copy,
    folder_files,
    tar_files,
)
from nixlayer.formats.oci import INDEX, INDEX_TYPES, LAYOUT
from nixlayer.image import config_problems
from nixlayer.jsonfile import parse_json
from nixlayer.runconfig import check_run_config
from nixlayer.tarwriter import END_OF_ARCHIVE

BLOBS = "blobs/sha256/"
_CHUNK = 1 << 20
_MAX_DEPTH = 4  # nested indexes followed; deeper ones are reported, not followed
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass
class VerifyReport:
    """What ``verify_image`` found: ``problems`` make the image wrong; ``notes`` are
    harmless oddities (a leftover temporary file, an unreferenced blob)."""

    source: str
    image_format: str  # docker-archive, oci or oci-archive
    compression: str | None = None  # a docker-archive compressed as a whole
    images: int = 0
    layers: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.image_format,
            "compression": self.compression,
            "images": self.images,
            "layers": self.layers,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def format_report(report: VerifyReport) -> str:
    """A few lines for people: a summary line, then one line per problem and note."""
    kind = report.image_format + (f" ({report.compression})" if report.compression else "")
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    lines = [
        f"{report.source}: {kind}, {report.images} image(s), {report.layers} layer(s): {verdict}"
    ]
    lines += [f"  problem: {problem}" for problem in report.problems]
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def verify_image(path: str) -> VerifyReport:
    """Check the image at ``path``: an OCI layout folder, an oci-archive or a
    docker-archive (plain, gzip or zstd). Raises ``NixlayerError`` only when ``path``
    is missing or not an image at all."""
    location = Path(path)
    if location.is_dir():
        return _verify_layout(path, folder_files(location), "oci")
    if not location.is_file():
        raise NixlayerError(f"{path}: no such image file or folder")
    compression = compression_of(partial(location.open, "rb"))
    if compression is None:
        return _verify_archive(path, location, None)
    try:
        plain = decompressed_copy(location, compression)
    except READ_ERRORS as error:
        report = VerifyReport(path, "docker-archive", compression)
        reason = str(error) or type(error).__name__
        report.problems.append(f"the {compression} stream is corrupt: {reason}")
        return report
    with plain:
        return _verify_archive(path, reopenable(plain), compression)


def _verify_archive(source: str, path: Path, compression: str | None) -> VerifyReport:
    """A tar image: the archive's own structure first, then its content."""
    problems, readable = _check_archive(path)
    try:
        files = tar_files(path, source)
    except NixlayerError as error:
        if not readable:
            raise NixlayerError(f"{source}: not a docker-archive or OCI image") from None
        report = VerifyReport(source, "docker-archive", compression, problems=problems)
        report.problems.append(str(error))
        return report
    if files.has(INDEX) and files.has(LAYOUT):
        report = _verify_layout(source, files, "oci-archive")
    elif files.has(MANIFEST):
        report = _verify_docker(files, compression)
    elif problems:  # a damaged archive whose damage hides its manifest
        report = VerifyReport(source, "docker-archive", compression)
        report.problems.append(f"neither {MANIFEST} nor {INDEX} can be read")
    else:
        raise NixlayerError(f"{source}: not a docker-archive or OCI image")
    report.problems[:0] = problems
    return report


# --- the outer archive --------------------------------------------------------------


def _check_archive(path: Path) -> tuple[list[str], bool]:
    """What reading the archive by name cannot see: a name used twice, a member cut off
    by the end of the file, damage after which tarfile silently stops, and a missing
    end-of-archive marker. Returns the problems and whether any member was readable."""
    problems: list[str] = []
    names: set[str] = set()
    size = path.stat().st_size
    end = 0
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                name = os.path.normpath(member.name)
                if name in names:
                    problems.append(f"the archive holds {name} twice")
                names.add(name)
                if member.offset_data + member.size > size:
                    problems.append(f"the archive is truncated: it ends inside {name}")
                    return problems, True
            end = tar.offset
    except tarfile.TarError as error:
        if names:
            problems.append(f"the archive is damaged after {len(names)} members: {error}")
        return problems, bool(names)
    with path.open("rb") as file:
        file.seek(end)
        problems += _tail_problems(file, size - end, "the archive")
    return problems, bool(names)


def _tail_problems(file: IO[bytes], length: int, what: str) -> list[str]:
    """After the last header tarfile read there must be only zeros, at least the two
    blocks of the end-of-archive marker: anything else is damage or truncation."""
    remaining = length
    while remaining > 0:
        chunk = file.read(min(_CHUNK, remaining))
        if not chunk:
            break
        if chunk.count(0) != len(chunk):
            return [f"{what} has data after a header it cannot read (damaged)"]
        remaining -= len(chunk)
    if length < len(END_OF_ARCHIVE):
        return [f"{what} has no end-of-archive marker (truncated?)"]
    return []


def _compression_of(media_type: str) -> str | None:
    for suffix in ("gzip", "zstd"):
        if media_type.endswith(("+" + suffix, "." + suffix)):
            return suffix
    return None


# --- checks shared by both layouts ---------------------------------------------------


class _Checker:
    """The image's files, the report being filled, and each blob read at most once."""

    def __init__(self, files: ImageFiles, report: VerifyReport) -> None:
        self.files = files
        self.report = report
        self._blobs: dict[tuple[str, str | None, bool], BlobRead | None] = {}
        self.read_names: set[str] = set()

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    def json(self, name: str, what: str) -> Any:
        """A JSON file, or None after reporting why it cannot be read."""
        if not self.files.has(name):
            self.problem(f"{what} {name} is missing")
            return None
        try:
            return parse_json(self.files.read(name), f"{what} {name}")
        except NixlayerError as error:
            self.problem(str(error))
        return None

    def blob(self, name: str) -> BlobRead | None:
        return self._cached((name, None, False), lambda: read_blob(self.files.opener(name)))

    def layer(self, name: str, compression: str | None) -> BlobRead | None:
        def read() -> BlobRead:
            found = read_layer(self.files.opener(name), compression, f"layer {name}")
            self.report.problems.extend(found.problems)
            return found

        return self._cached((name, compression, True), read)

    def _cached(
        self, key: tuple[str, str | None, bool], read: Callable[[], BlobRead]
    ) -> BlobRead | None:
        """None if the blob is missing, or cannot be opened (a named pipe, a device:
        that problem is reported here)."""
        if key not in self._blobs:
            self._blobs[key] = None
            self.read_names.add(key[0])
            try:
                self._blobs[key] = read() if self.files.has(key[0]) else None
            except NixlayerError as error:
                self.problem(str(error))
        return self._blobs[key]

    def config_types(self, config: Any, where: str) -> None:
        """Every typed field of an image config with the type consumers decode it as."""
        if not isinstance(config, dict):
            self.problem(f"{where}: not a JSON object")
            return
        for problem in config_problems(config):
            self.problem(f"{where}: {problem}")
        if config.get("config") is not None:
            try:
                check_run_config(config["config"], f"{where}: config")
            except NixlayerError as error:
                self.problem(str(error))

    def diff_ids(self, config: Any, where: str) -> list[str] | None:
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            self.problem(f"{where}: rootfs.diff_ids is not a list of digests")
            return None
        for diff_id in diff_ids:
            if not _DIGEST.fullmatch(diff_id):
                self.problem(f"{where}: diff_id {diff_id!r} is not a sha256 digest")
        return diff_ids

    def layer_against_diff_id(
        self, name: str, compression: str | None, diff_id: str | None, count: bool = True
    ) -> None:
        """Read a layer (once) and compare its uncompressed sha256 with its diff_id."""
        found = self.layer(name, compression)
        self.report.layers += count
        if found is None:
            if not self.files.has(name):  # else it could not be opened: reported
                self.problem(f"layer {name} is missing")
        elif None not in (found.diff_id, diff_id) and found.diff_id != diff_id:
            self.problem(
                f"layer {name}: its tar's sha256 is {found.diff_id}, the diff_id {diff_id}"
            )


# --- docker-archive -----------------------------------------------------------------


def _verify_docker(files: ImageFiles, compression: str | None) -> VerifyReport:
    report = VerifyReport(files.source, "docker-archive", compression)
    check = _Checker(files, report)
    manifest = check.json(MANIFEST, "the manifest")
    if manifest is None:
        return report
    if not isinstance(manifest, list) or not manifest:
        check.problem(f"{MANIFEST} does not list any image")
        return report
    for number, entry in enumerate(manifest, 1):
        _check_docker_entry(check, entry, f"{MANIFEST} entry {number}")
    return report


def _check_docker_entry(check: _Checker, entry: Any, where: str) -> None:
    check.report.images += 1
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        check.problem(f"{where}: no Config file named")
        return
    config_name = os.path.normpath(entry["Config"])
    config = _config_by_name(check, config_name, where)
    if config is not None:
        check.config_types(config, config_name)
    diff_ids = check.diff_ids(config, config_name) if config is not None else None
    layers = entry.get("Layers")
    if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
        check.problem(f"{where}: Layers is not a list of file names")
        return
    if diff_ids is not None and len(layers) != len(diff_ids):
        check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)} diff_ids")
        return
    for name, diff_id in zip(layers, diff_ids or [None] * len(layers), strict=True):
        member = os.path.normpath(name)
        check.layer_against_diff_id(member, _member_compression(check.files, member), diff_id)


def _config_by_name(check: _Checker, name: str, where: str) -> Any:
    """The config file, whose name carries its sha256 (``<hex>.json`` as docker saves
    it, or ``blobs/sha256/<hex>`` as Docker 25 does)."""
    config = check.json(name, f"{where}: the config")
    named = re.search(r"([0-9a-f]{64})(?:\.json)?$", name)
    found = check.blob(name)
    if named and found and found.digest != f"sha256:{named.group(1)}":
        check.problem(f"config {name}: its sha256 is {found.digest}, not the one its name says")
    return config


def _member_compression(files: ImageFiles, name: str) -> str | None:
    """docker-archives normally hold plain tars, but some tools store them compressed."""
    return compression_of(files.opener(name)) if files.has(name) else None


# --- OCI layout ---------------------------------------------------------------------


def _verify_layout(source: str, files: ImageFiles, image_format: str) -> VerifyReport:
    report = VerifyReport(source, image_format)
    check = _Checker(files, report)
    layout = check.json(LAYOUT, "the layout file")
    if layout is not None and not (
        isinstance(layout, dict) and isinstance(layout.get("imageLayoutVersion"), str)
    ):
        check.problem(f"{LAYOUT} has no imageLayoutVersion")
    index = check.json(INDEX, "the index")
    if index is not None:
        _check_index(check, index, INDEX, 0)
    if image_format == "oci-archive" and files.has(MANIFEST):
        _check_docker_beside_oci(check)
    _check_all_blobs(check)
    return report


def _check_index(check: _Checker, index: Any, where: str, depth: int) -> None:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        check.problem(f"{where}: no manifests list")
        return
    if index.get("schemaVersion") != 2:
        check.problem(f"{where}: schemaVersion is not 2")
    for number, descriptor in enumerate(manifests, 1):
        place = f"{where} manifest {number}"
        data = _descriptor_blob(check, descriptor, place)
        if data is None:
            continue
        media_type = descriptor.get("mediaType")
        if media_type in INDEX_TYPES and depth < _MAX_DEPTH:
            _check_index(check, data, place, depth + 1)
        elif media_type in _MANIFEST_TYPES or media_type is None:
            _check_manifest(check, data, place, descriptor.get("platform"))
        else:
            check.problem(f"{place}: unexpected mediaType {media_type!r}")


def _descriptor_blob(check: _Checker, descriptor: Any, where: str) -> Any:
    """A small blob (manifest, index, config) checked against its descriptor, parsed."""
    name = _check_descriptor(check, descriptor, where)
    if name is None or check.blob(name) is None:
        return None
    return check.json(name, f"{where}:")


def _check_descriptor(
    check: _Checker,
    descriptor: Any,
    where: str,
    compression: str | None = None,
    layer: bool = False,
) -> str | None:
    """The blob name a descriptor points to, once its digest and size have been
    checked against the blob as stored; None if there is nothing to read."""
    if not isinstance(descriptor, dict):
        check.problem(f"{where}: not a descriptor object")
        return None
    digest, size = descriptor.get("digest"), descriptor.get("size")
    matched = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if matched is None:
        check.problem(f"{where}: digest {digest!r} is not a sha256 digest")
        return None
    if type(size) is not int or size < 0:
        check.problem(f"{where}: size {size!r} is not a size in bytes")
    name = BLOBS + matched.group(1)
    found = check.layer(name, compression) if layer else check.blob(name)
    if found is None:
        if "urls" not in descriptor and not check.files.has(name):
            check.problem(f"{where}: blob {digest} is missing")
        return None
    if found.digest != digest:
        check.problem(f"{where}: blob {digest} has sha256 {found.digest}")
    if type(size) is int and found.size != size:
        check.problem(f"{where}: blob {digest} is {found.size} bytes, the descriptor says {size}")
    return name


def _check_manifest(check: _Checker, manifest: Any, where: str, platform: Any) -> None:
    check.report.images += 1
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        check.problem(f"{where}: not an image manifest (schemaVersion 2)")
        return
    config = _descriptor_blob(check, manifest.get("config"), f"{where} config")
    if config is not None:
        check.config_types(config, f"{where} config")
    diff_ids = check.diff_ids(config, f"{where} config") if config is not None else None
    _check_platform(check, config, platform, where)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        check.problem(f"{where}: layers is not a list")
        return
    if diff_ids is not None and len(layers) != len(diff_ids):
        check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)} diff_ids")
        diff_ids = None
    for number, descriptor in enumerate(layers, 1):
        place = f"{where} layer {number}"
        media_type = descriptor.get("mediaType", "") if isinstance(descriptor, dict) else ""
        compression = _compression_of(str(media_type))
        name = _check_descriptor(check, descriptor, place, compression, layer=True)
        if name is not None and diff_ids is not None:
            check.layer_against_diff_id(name, compression, diff_ids[number - 1])
        elif name is not None:
            check.report.layers += 1


def _check_platform(check: _Checker, config: Any, platform: Any, where: str) -> None:
    """The index's platform for a manifest must be the config's."""
    if not isinstance(config, dict) or not isinstance(platform, dict):
        return
    for key in ("architecture", "os", "variant"):
        if key in platform and platform[key] != config.get(key):
            check.problem(
                f"{where}: the index says {key} {platform[key]!r}, the config {config.get(key)!r}"
            )


def _check_all_blobs(check: _Checker) -> None:
    """Every file under blobs/sha256 must hash to its name, referenced or not; other
    names (a temporary file left by a killed writer) are noted."""
    for name in sorted(check.files.files):
        if not name.startswith(BLOBS) or name in check.read_names:
            continue
        hex_digest = name.removeprefix(BLOBS)
        if not _HEX64.fullmatch(hex_digest):
            check.report.notes.append(f"{name}: not a blob name (a leftover temporary file?)")
            continue
        found = check.blob(name)
        if found is not None and found.digest != f"sha256:{hex_digest}":
            check.problem(f"{name}: its sha256 is {found.digest}")


def _check_docker_beside_oci(check: _Checker) -> None:
    """The docker ``manifest.json`` an oci-archive carries for ``docker load`` must
    name files of the archive: a config, and layers that match its diff_ids."""
    manifest = check.json(MANIFEST, "the docker manifest")
    if not isinstance(manifest, list):
        if manifest is not None:
            check.problem(f"{MANIFEST} is not a list")
        return
    for number, entry in enumerate(manifest, 1):
        where = f"{MANIFEST} entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            check.problem(f"{where}: no Config file named")
            continue
        config = check.json(os.path.normpath(entry["Config"]), f"{where}: the config")
        diff_ids = check.diff_ids(config, where) if config is not None else None
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            check.problem(f"{where}: Layers is not a list of file names")
        elif diff_ids is not None and len(diff_ids) != len(layers):
            check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)}")
        elif diff_ids is not None:
            for name, diff_id in zip(map(os.path.normpath, layers), diff_ids, strict=True):
                compression = _member_compression(check.files, name)
                check.layer_against_diff_id(name, compression, diff_id, count=False)
