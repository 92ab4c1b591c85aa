"""Re-read an image on disk and check that every part agrees with what names it.

Consumers check different things (``docker load`` the diff_ids, skopeo the blob
digests, a registry the manifest sizes), so an image damaged by a copy, a full disk or
a hand edit may pass one of them and fail later in another. ``verify_image`` checks all
of them in one pass over each blob: every blob's sha256 and size against its
descriptor, every layer's uncompressed sha256 against the config's diff_id, the
manifests and index against the config, and every layer tar member by member (each
path once, no absolute or ``..`` names, hard links only to earlier members of the same
layer, ids, modes and times consumers accept, whiteouts they all read alike, no PAX
global header that sets fields, an intact end-of-archive marker), and each config's
typed fields (the platform, the history, the run config) against the types consumers
decode. The layers are then replayed as a consumer merges them: no store path a
layer's history lists may be hidden or changed by a higher layer (a whiteout, a file
or symlink at or above it, any member inside it), and a layer nixlayer wrote holds no
whiteout, and exactly the store paths its history lists. It reads docker-archives
(plain or compressed as a whole, with no member name that climbs out), OCI layout
folders and oci-archives (a blob nothing names is a note: the layout allows it), and
never unpacks anything.

Problems with the image are collected in a ``VerifyReport``; only a path that is not
an image at all raises ``NixlayerError``.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from nixlayer.blobs import (
    BlobRead,
    LayerNames,
    read_blob,
    read_layer,
    reopenable,
    whiteout_target,
)
from nixlayer.errors import NixlayerError, one_line, reason, show_path
from nixlayer.formats import not_an_image, path_and_ref
from nixlayer.formats.docker_archive import MANIFEST
from nixlayer.formats.files import (
    READ_ERRORS,
    ImageFiles,
    compression_of,
    decompressed_copy,
    folder_files,
    tar_files,
)
from nixlayer.formats.oci import INDEX, INDEX_TYPES, LAYOUT, LAYOUT_VERSION, is_layout_file
from nixlayer.image import config_problems, layer_histories
from nixlayer.jsonfile import json_strings, parse_json
from nixlayer.jsonstream import show_json
from nixlayer.layers import layer_store_paths, unexpected_whiteouts, written_by_nixlayer
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


def verify_image(path: str) -> VerifyReport:
    """Check the image at ``path``: an OCI layout folder, an oci-archive or a
    docker-archive (plain, gzip or zstd). Raises ``NixlayerError`` only when ``path``
    is missing or not an image at all, or names one image of a layout (``PATH:REF``):
    verify checks every image of a layout or archive, as they share blobs."""
    location, ref = path_and_ref(path)
    if ref is not None:
        raise NixlayerError(
            f"{show_path(path)}: verify checks every image in {show_path(location)}; "
            f"give it without :{one_line(ref)}"
        )
    if location.is_dir():
        return _verify_layout(path, folder_files(location), "oci")
    if not location.is_file():
        raise NixlayerError(f"{show_path(path)}: {not_an_image(location)}")
    compression = compression_of(partial(location.open, "rb"))
    if compression is None:
        return _verify_archive(path, location, None)
    try:
        plain = decompressed_copy(location, compression)
    except READ_ERRORS as error:
        report = VerifyReport(path, "docker-archive", compression)
        report.problems.append(f"the {compression} stream is corrupt: {reason(error)}")
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
            raise NixlayerError(f"{show_path(source)}: not a docker-archive or OCI image") from None
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
        raise NixlayerError(f"{show_path(source)}: not a docker-archive or OCI image")
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
                    problems.append(f"the archive holds {show_path(name)} twice")
                names.add(name)
                if member.offset_data + member.size > size:
                    problems.append(f"the archive is truncated: it ends inside {show_path(name)}")
                    return problems, True
            end = tar.offset
    except tarfile.TarError as error:
        if names:
            problems.append(f"the archive is damaged after {len(names)} members: {reason(error)}")
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
        self.store_dirs: frozenset[str] = frozenset()  # whose members layer reads keep

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
            opener = self.files.opener(name)
            found = read_layer(opener, compression, f"layer {name}", self.store_dirs)
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

    def watch(self, config: Any) -> list[dict[str, Any]]:
        """The history entries of an image's layers (its diff_ids are a list), and the
        store directories they list paths in added to those layer reads look at."""
        histories = layer_histories(config)
        listed = (path for history in histories for path in layer_store_paths(history))
        self.store_dirs |= {posixpath.dirname(path).lstrip("/") for path in listed}
        return histories

    def merged(
        self, where: str, histories: list[dict[str, Any]], reads: list[BlobRead | None]
    ) -> None:
        """The image's layers replayed as consumers merge them (see ``_merge``), once
        each was read; not when one is missing."""
        names = [read.names for read in reads if read is not None]
        if len(names) == len(reads):
            labels = [f"{where} layer {number}" for number in range(1, len(reads) + 1)]
            self.report.problems.extend(_merge(list(zip(labels, histories, names, strict=True))))

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
        if not json_strings(diff_ids):
            self.problem(f"{where}: rootfs.diff_ids is not a list of digests")
            return None
        for diff_id in diff_ids:
            if not _DIGEST.fullmatch(diff_id):
                self.problem(f"{where}: diff_id {show_json(diff_id)} is not a sha256 digest")
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
    if not json_strings(layers):
        check.problem(f"{where}: Layers is not a list of file names")
        return
    if diff_ids is not None and len(layers) != len(diff_ids):
        check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)} diff_ids")
        return
    histories = check.watch(config) if diff_ids is not None else None
    reads: list[BlobRead | None] = []
    for name, diff_id in zip(layers, diff_ids or [None] * len(layers), strict=True):
        member = os.path.normpath(name)
        compression = _member_compression(check.files, member)
        check.layer_against_diff_id(member, compression, diff_id)
        reads.append(check.layer(member, compression))
    if histories is not None:
        check.merged(where, histories, reads)


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
    if layout is not None and not is_layout_file(layout):
        check.problem(f"{LAYOUT}: its imageLayoutVersion is not {LAYOUT_VERSION}")
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
            check.problem(f"{place}: unexpected mediaType {show_json(media_type)}")


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
        check.problem(f"{where}: digest {show_json(digest)} is not a sha256 digest")
        return None
    if type(size) is not int or size < 0:
        check.problem(f"{where}: size {show_json(size)} is not a size in bytes")
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
    histories = check.watch(config) if diff_ids is not None else None
    reads: list[BlobRead | None] = []
    for number, descriptor in enumerate(layers, 1):
        place = f"{where} layer {number}"
        media_type = descriptor.get("mediaType", "") if isinstance(descriptor, dict) else ""
        if not isinstance(media_type, str):
            check.problem(f"{place}: mediaType {show_json(media_type)} is not a string")
            reads.append(None)
            continue
        compression = _compression_of(media_type)
        name = _check_descriptor(check, descriptor, place, compression, layer=True)
        if name is not None and diff_ids is not None:
            check.layer_against_diff_id(name, compression, diff_ids[number - 1])
        elif name is not None:
            check.report.layers += 1
        reads.append(check.layer(name, compression) if name is not None else None)
    if histories is not None:
        check.merged(where, histories, reads)


def _check_platform(check: _Checker, config: Any, platform: Any, where: str) -> None:
    """The index's platform for a manifest must be the config's."""
    if not isinstance(config, dict) or not isinstance(platform, dict):
        return
    for key in ("architecture", "os", "variant"):
        if key in platform and platform[key] != config.get(key):
            check.problem(
                f"{where}: the index says {key} {show_json(platform[key])}, "
                f"the config {show_json(config.get(key))}"
            )


def _check_all_blobs(check: _Checker) -> None:
    """Every file under blobs/sha256 must hash to its name, referenced or not; other
    names (a temporary file left by a killed writer) are noted, and so are blobs no
    index or manifest names: the layout allows them (a writer killed before its
    index.json, an image removed), but they take room for nothing."""
    for name in sorted(check.files.files):
        if not name.startswith(BLOBS) or name in check.read_names:
            continue
        hex_digest = name.removeprefix(BLOBS)
        if not _HEX64.fullmatch(hex_digest):
            check.report.notes.append(
                f"{show_path(name)}: not a blob name (a leftover temporary file?)"
            )
            continue
        check.report.notes.append(f"{name}: a blob no manifest or index names (unused)")
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
        if not json_strings(layers):
            check.problem(f"{where}: Layers is not a list of file names")
        elif diff_ids is not None and len(diff_ids) != len(layers):
            check.problem(f"{where}: {len(layers)} layers, but the config has {len(diff_ids)}")
        elif diff_ids is not None:
            for name, diff_id in zip(map(os.path.normpath, layers), diff_ids, strict=True):
                compression = _member_compression(check.files, name)
                check.layer_against_diff_id(name, compression, diff_id, count=False)


# --- the merged tree ------------------------------------------------------------------


def _merge(layers: Sequence[tuple[str, dict[str, Any], LayerNames]]) -> list[str]:
    """What a consumer that merges the layers in order (applying whiteouts, opaque
    markers, and a file or symlink replacing a directory, as containerd, podman and
    umoci do) loses of the store paths the layers' history lists, or changes in them.

    A store path is present from the layer that lists it up, until a higher layer
    takes it away. A layer nixlayer wrote holds no whiteout, and no store path it
    does not list; another tool's may hold whiteouts (that is how it deletes what a
    lower layer holds), but none that reaches into the store, nor a file or symlink
    over it. Each cause is one problem, naming one path it hides.
    """
    listed = [{p.lstrip("/") for p in layer_store_paths(history)} for _, history, _ in layers]
    store_dirs = {posixpath.dirname(path) for paths in listed for path in paths}
    problems: list[str] = []
    present: set[str] = set()
    damage: dict[tuple[str, str], set[str]] = {}  # (layer, what it does) -> store paths
    for (label, history, names), paths in zip(layers, listed, strict=True):
        problems += unexpected_whiteouts(history, names, label)
        if written_by_nixlayer(history):
            problems += _unlisted(label, names, paths, store_dirs)
        for cause in _causes(names):
            gone, changed = cause.effect(present, store_dirs, names.store_members)
            present -= gone
            damage.setdefault((label, f"{cause.what} hides"), set()).update(gone)
            damage.setdefault((label, f"{cause.what} changes"), set()).update(changed)
        for path, member in names.inside.items():
            if path in present:
                damage.setdefault((label, f"the member {show_path(member)} changes"), set()).add(
                    path
                )
        present |= paths
        for hit in damage.values():
            hit -= paths  # listed again above: a consumer sees this layer's copy
    for (label, what), hit in damage.items():
        if hit:
            more = f" and {len(hit) - 1} more" if len(hit) > 1 else ""
            problems.append(f"{label}: {what} the store path /{min(hit)}{more}")
    return problems


def _unlisted(label: str, names: LayerNames, paths: set[str], store_dirs: set[str]) -> list[str]:
    """A layer nixlayer wrote holds exactly the store paths its history lists: one it
    lists but lacks is missing from the image, one it holds unlisted is unaccounted."""
    held = {name for name in names.store_members if posixpath.dirname(name) in store_dirs}
    held.update(names.inside)  # a member inside a path makes it, if nothing else does
    return [
        f"{label}: holds the store path /{name}, which its history does not list"
        for name in sorted(held - paths)
    ] + [
        f"{label}: its history lists the store path /{name}, which it does not hold"
        for name in sorted(paths - held)
    ]


@dataclass(frozen=True)
class _Cause:
    """Something in a layer that takes away what lower layers hold at and below
    ``name``: a whiteout (``delete``), an opaque marker (``empty``: only below, and
    not what its own layer holds), or a file or symlink (``replace``)."""

    what: str
    name: str
    kind: str

    def effect(
        self, present: set[str], store_dirs: set[str], held: dict[str, bool]
    ) -> tuple[set[str], set[str]]:
        """The present store paths this hides, and those it changes (it acts inside)."""
        name = self.name
        if name and not any(_related(name, store_dir) for store_dir in store_dirs):
            return set(), set()  # elsewhere: the usual case, decided without a scan
        under = {p for p in present if not name or p.startswith(name + "/")}
        if self.kind != "empty" and name in present:
            under.add(name)
        if self.kind != "replace":
            under = {p for p in under if not held.get(p)}
        inside = {
            p for p in present if name.startswith(p + "/") or (self.kind == "empty" and name == p)
        }
        return under, inside


def _related(name: str, store_dir: str) -> bool:
    """Whether ``name`` is the store directory, above it or inside it."""
    return name == store_dir or store_dir.startswith(name + "/") or name.startswith(store_dir + "/")


def _causes(names: LayerNames) -> list[_Cause]:
    """Each whiteout's target, each opaque marker's folder, and each file or symlink
    at or above a store path, in the layer."""
    causes = []
    for whiteout in names.whiteouts:
        target = whiteout_target(whiteout)
        if target is None:
            folder = posixpath.dirname(whiteout)
            causes.append(_Cause(f"the opaque marker {show_path(whiteout)}", folder, "empty"))
        else:
            causes.append(_Cause(f"the whiteout {show_path(whiteout)}", target, "delete"))
    causes += [
        _Cause(f"the non-directory {show_path(name)}", name, "replace")
        for name, directory in names.store_members.items()
        if not directory
    ]
    return causes
