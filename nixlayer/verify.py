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

This module holds what every image is checked for (a ``Checker``); what each format's own
files must be (its manifests, index, descriptors) its module checks (``verify`` of
``formats.ImageFormat``), told which by ``formats.detect``. Problems with the image
are collected in a ``VerifyReport``; only a path that is not an image at all raises
``NixlayerError``.
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
    READ_ERRORS,
    BlobRead,
    LayerNames,
    read_blob,
    read_layer,
    reopenable,
    whiteout_target,
)
from nixlayer.errors import NixlayerError, one_line, reason, show_path
from nixlayer.formats import FORMATS, ImageFormat, detect, not_an_image, path_and_ref
from nixlayer.formats.docker_archive import MANIFEST
from nixlayer.formats.files import (
    ImageFiles,
    compression_of,
    decompressed_copy,
    folder_files,
    tar_files,
)
from nixlayer.formats.oci import INDEX
from nixlayer.image import config_problems, layer_histories
from nixlayer.jsonfile import json_strings, parse_json
from nixlayer.jsonstream import show_json
from nixlayer.layers import layer_store_paths, unexpected_whiteouts, written_by_nixlayer
from nixlayer.runconfig import check_run_config
from nixlayer.tarwriter import END_OF_ARCHIVE

_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


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
    if location.is_dir():  # checked as a layout whatever it holds: what it lacks is a problem
        files = folder_files(location)
        return _verified(path, files, detect(files, folder=True) or FORMATS["oci"], None)
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


def _verified(
    source: str, files: ImageFiles, found: ImageFormat, compression: str | None
) -> VerifyReport:
    """The report of the format's own checks (``ImageFormat.verify``)."""
    report = VerifyReport(source, found.NAME, compression)
    found.verify(files, Checker(files, report))
    return report


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
    found = detect(files, folder=False)
    if found is not None:
        report = _verified(source, files, found, compression)
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


# --- what every format's checks use ----------------------------------------------------


class Checker:
    """What a format's ``verify`` checks with: the image's files, the report being
    filled, each blob read at most once, and the checks every format makes of a
    config and of its layers (read, against their diff_ids, and merged)."""

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
