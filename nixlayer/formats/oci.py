"""The OCI image layout (a folder, or the same as one tar): reading it.

Blobs are addressed by digest under ``blobs/sha256/``; ``index.json`` names the
image manifests, whose layers carry their own media types and compressed digests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from nixlayer.cache import CachedLayer, LayerCache, layer_key
from nixlayer.compression import Compression
from nixlayer.errors import NixlayerError, missing_folder, show_path, what_is
from nixlayer.formats.docker_archive import MANIFEST
from nixlayer.formats.files import ImageFiles, json_object, read_config
from nixlayer.image import (
    ImageSpec,
    SourceImage,
    canonical_json,
    config_json,
    content_tag,
    layer_histories,
    qualified_name,
)
from nixlayer.jsonfile import json_strings, load_json
from nixlayer.jsonstream import show_json
from nixlayer.layers import BlobLayer, Layer, LayerSized
from nixlayer.output import PendingFile, pending_file, removed_if_killed, scratch_folder
from nixlayer.store import FILE_FLAGS, walk_tree
from nixlayer.tarwriter import WRITER_THREAD, lay_out, write_layer

Progress = Callable[[int], None]

INDEX = "index.json"
LAYOUT = "oci-layout"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def blob_name(digest: Any, source: str = "the image") -> str:
    """The blob a digest names; ``source`` is the image whose metadata gave it, and
    ``digest`` what it gave, of any JSON type (shown as JSON if it is no digest)."""
    algorithm, _, hex_digest = digest.partition(":") if isinstance(digest, str) else ("",) * 3
    if algorithm != "sha256" or len(hex_digest) != 64 or not hex_digest.isalnum():
        raise NixlayerError(f"{source}: unsupported digest {show_json(digest)}")
    return f"blobs/sha256/{hex_digest}"


def _descriptor(files: ImageFiles, ref: str | None) -> dict[str, Any]:
    """The manifest descriptor of ``index.json`` that ``ref`` names, or the only one."""
    manifests = _manifests(files.read_json(INDEX), f"{files.source}: {INDEX}")
    if not manifests:
        raise NixlayerError(f"{files.source}: {INDEX} lists no manifests")
    if ref is None and len(manifests) == 1:
        return manifests[0]
    names = [
        json_object(m.get("annotations", {}), f"{files.source}: a manifest's annotations")
        for m in manifests
    ]
    known = ", ".join(sorted(_shown_ref(a.get(REF_NAME)) for a in names))
    if ref is None:
        raise NixlayerError(f"{files.source}: choose an image with PATH:REF (it holds: {known})")
    for key in (REF_NAME, CONTAINERD_NAME):  # skopeo's name first, then containerd's
        for descriptor, names_of in zip(manifests, names, strict=True):
            if names_of.get(key) == ref:
                return descriptor
    raise NixlayerError(f"{files.source}: no image named {ref} (it holds: {known})")


def _shown_ref(name: Any) -> str:
    return name if isinstance(name, str) else show_json(name)


def _media_type(descriptor: dict[str, Any], where: str) -> str:
    """A descriptor's mediaType, which consumers decode as a string ("" if absent)."""
    media_type = descriptor.get("mediaType", "")
    if not isinstance(media_type, str):
        raise NixlayerError(f"{where}: mediaType {show_json(media_type)} is not a string")
    return media_type


def read_oci(files: ImageFiles, ref: str | None = None) -> SourceImage:
    descriptor = _descriptor(files, ref)
    if _media_type(descriptor, f"{files.source}: {INDEX}") in INDEX_TYPES:
        raise NixlayerError(f"{files.source}: a multi-platform index is not supported here")
    where = f"{files.source}: the manifest"
    digest = descriptor.get("digest")
    manifest = json_object(files.read_json(blob_name(digest, files.source)), where)
    config_digest = json_object(manifest.get("config"), f"{where}'s config").get("digest")
    config, diff_ids = read_config(files, blob_name(config_digest, files.source))
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not json_strings(diff_ids) or len(layers) != len(diff_ids):
        raise NixlayerError(f"{files.source}: the manifest's layers do not match the config's")
    layers = [json_object(layer, f"{where}'s layer") for layer in layers]
    blobs = tuple(
        BlobLayer(
            diff_id=diff_id,
            digest=layer.get("digest"),  # a string: blob_name checks it below
            media_type=_media_type(layer, f"{where}'s layer {number}"),
            open=files.opener(blob_name(layer.get("digest"), files.source)),
            blob_size=files.size(blob_name(layer.get("digest"), files.source)),
            history=history,
            source=files.source,
        )
        for number, layer, diff_id, history in zip(
            range(1, len(layers) + 1), layers, diff_ids, layer_histories(config), strict=True
        )
    )
    annotations = json_object(descriptor.get("annotations", {}), f"{where}'s annotations")
    ref_name = annotations.get(CONTAINERD_NAME)
    tags = (ref_name,) if isinstance(ref_name, str) and ref_name else ()
    return SourceImage(files.source, config, blobs, tags)


MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
LAYOUT_VERSION = "1.0.0"
LAYOUT_CONTENT = canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
WORKERS = 2


class _Stopped(Exception):
    """A layer abandoned because the write as a whole failed or was interrupted."""


@dataclass(frozen=True)
class WrittenLayout:
    """What was written: the image's name, its blobs, and which layers were reused."""

    ref: str
    config_digest: str
    layers: tuple[CachedLayer, ...]
    reused: tuple[bool, ...]


def is_layout_file(value: Any) -> bool:
    """Whether ``value`` (the parsed ``oci-layout`` file) is what a layout holds: of
    the one version there is, which umoci insists on (another is "not supported")."""
    return isinstance(value, dict) and value.get("imageLayoutVersion") == LAYOUT_VERSION


_LAYOUT_FILE_MAX = 1024  # the file is 30 bytes; nothing past this is read
_CHUNK = 1 << 20


@dataclass
class _Layout:
    """A layout folder being written: its blobs are trusted by their content, never by
    their name alone, and those this run adds are listed, to go again if it fails."""

    folder: Path
    cache: LayerCache
    added: list[Path] = field(default_factory=list)
    index: bytes | None = None  # the index.json this run put in place, once it tries

    def blob(self, digest: str) -> Path:
        return self.folder / blob_name(digest)

    def new_blob(self) -> contextlib.AbstractContextManager[PendingFile]:
        return pending_file(self.folder / "blobs" / "sha256")

    def has(self, digest: str, size: int) -> bool:
        """Whether the blob is there intact: a regular file of ``size`` bytes that the
        cache saw hash to ``digest`` and that has not changed since, or that hashes to
        it now. One damaged on disk is made again, or the build would end with an image
        its own ``verify`` rejects. (``blobs.read_blob`` is five times slower than this
        loop: it follows a tar's zero blocks.)"""
        path = self.blob(digest)
        try:
            fd = os.open(path, FILE_FLAGS)
        except OSError:
            return False
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size != size:
            os.close(fd)
            return False
        hashed = hashlib.sha256()
        with open(fd, "rb") as file:
            if self.cache.saw(path, digest, found):
                return True
            try:
                while chunk := file.read(_CHUNK):
                    hashed.update(chunk)
            except OSError:
                return False
        intact = f"sha256:{hashed.hexdigest()}" == digest
        if intact:
            self.cache.seen(path, digest)
        return intact

    def publish(self, pending: PendingFile, digest: str) -> None:
        """Under a name not taken yet the blob is this run's (``added``); a name that
        is taken holds a damaged blob (``has`` said so), replaced."""
        path = self.blob(digest)
        try:
            pending.publish(path, clobber=False)
        except FileExistsError:
            if os.path.isdir(path) and not os.path.islink(path):
                raise NixlayerError(
                    f"-o {show_path(self.folder)}: {blob_name(digest)} is a folder, not a blob"
                ) from None
            pending.publish(path)
        else:
            self.added.append(path)
        self.cache.seen(path, digest)

    def put(self, data: bytes) -> str:
        """A small blob (config, manifest), written unless the folder has it already."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has(digest, len(data)):
            with self.new_blob() as pending:
                pending.file.write(data)
                self.publish(pending, digest)
        return digest

    def committed(self) -> bool:
        """Whether this run's index.json is in place, which an interrupt can follow."""
        try:
            return self.index is not None and (self.folder / INDEX).read_bytes() == self.index
        except OSError:
            return False


def _make_layer_blob(
    layer: Layer,
    layout: _Layout,
    mtime: int,
    compression: Compression,
    on_bytes: Progress,
    on_size: LayerSized,
) -> CachedLayer:
    """Stream the layer once: hashed uncompressed (diff_id), compressed, hashed again
    (digest) and written under a temporary name, renamed to its digest at the end."""
    prepared = layer.prepare(mtime)
    on_size(layer.size_hint, prepared.size)
    compressor = compression.compressor() if compression else None
    blob_digest = hashlib.sha256()
    blob_size = 0
    with layout.new_blob() as pending:

        def write(data: bytes | memoryview) -> None:
            nonlocal blob_size
            out = compressor.compress(data) if compressor else data
            if compressor:
                blob_digest.update(out)
            pending.file.write(out)
            blob_size += len(out)

        one_thread = WRITER_THREAD.set(False)  # layers are made in parallel already
        try:
            diff_id = f"sha256:{prepared.stream(write, on_bytes)}"
        finally:
            WRITER_THREAD.reset(one_thread)
        if compressor:
            write_tail = compressor.flush()
            blob_digest.update(write_tail)
            pending.file.write(write_tail)
            blob_size += len(write_tail)
        digest = f"sha256:{blob_digest.hexdigest()}" if compressor else diff_id
        layout.publish(pending, digest)
    return CachedLayer(diff_id, digest, blob_size, compression.media_type)


def _kept_blob(layer: BlobLayer, layout: _Layout, on_bytes: Progress) -> tuple[CachedLayer, bool]:
    """A base image's compressed layer, copied as it is stored, and whether it was there
    already: the new image keeps the base's digests, so that a registry or a machine
    that has the base has these layers too. (Compressed anew, they would differ.) A
    Docker media type becomes the OCI one for the same bytes."""
    media_type = Compression(str(layer.compression)).media_type
    if layer.digest is not None and layout.has(layer.digest, layer.blob_size):
        return CachedLayer(layer.diff_id, layer.digest, layer.blob_size, media_type), True
    with layout.new_blob() as pending:
        digest = layer.copy_stored(pending.file, on_bytes)
        layout.publish(pending, digest)
    return CachedLayer(layer.diff_id, digest, layer.blob_size, media_type), False


def _layer_blob(
    layer: Layer,
    layout: _Layout,
    mtime: int,
    compression: Compression,
    cache: LayerCache,
    on_bytes: Progress,
    on_size: LayerSized,
) -> tuple[CachedLayer, bool]:
    """The layer's blob in the folder, and whether it was there already. A base's
    blob kept as stored counts its ``blob_size``, its size hint: no ``on_size``."""
    if isinstance(layer, BlobLayer) and layer.compression is not None:
        return _kept_blob(layer, layout, on_bytes)
    identity = layer.identity(mtime)
    key = layer_key(identity, compression) if identity is not None else None
    cached = cache.get(key) if key else None
    if cached and layout.has(cached.digest, cached.blob_size):
        return cached, True
    made = _make_layer_blob(layer, layout, mtime, compression, on_bytes, on_size)
    if key:
        cache.put(key, made)
    return made, False


def _created_by_us(folder: Path) -> list[Path]:
    """What a failed first write into ``folder`` must remove so that nothing of it
    stays: the highest of its folders that does not exist yet, or what an empty
    ``folder`` will hold. Of an existing layout only the blobs this run added go (see
    ``_Layout``); what ``_started_layout`` refuses to write into is never touched."""
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    if missing:
        return [missing[-1]]
    with contextlib.suppress(OSError):  # unreadable: _started_layout says so
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            return [folder / LAYOUT, folder / "blobs"]
    return []


def _remove(paths: list[Path]) -> None:
    """Best effort, while another error is on its way: it must not hide that one."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _started_layout(folder: Path) -> Iterator[None]:
    """A new layout, or one that is there already, never a folder with other things;
    held by this run alone until the block ends (see ``_locked``)."""
    if folder.exists() and not folder.is_dir():
        raise NixlayerError(
            f"-o {show_path(folder)}: {what_is(folder)}; --format oci writes a folder"
        )
    has_layout_file = (folder / LAYOUT).is_file()
    if folder.is_dir() and any(folder.iterdir()) and not has_layout_file:
        raise NixlayerError(f"-o {show_path(folder)}: a folder that is not an OCI image layout")
    if has_layout_file and not _valid_layout_file(folder / LAYOUT):
        raise NixlayerError(
            f"-o {show_path(folder)}: its {LAYOUT} file is not an OCI layout's of version "
            f"{LAYOUT_VERSION}"
        )
    try:
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    except OSError as error:  # the first of the names that is no folder, if one is
        blocked = error.errno in (errno.ENOTDIR, errno.EEXIST)
        why = missing_folder(error.filename or folder) if blocked else error.strerror
        raise NixlayerError(f"-o {show_path(folder)}: cannot create it: {why}") from None
    with _locked(folder):
        _existing_manifests(folder)  # a layout the image cannot be added to fails now
        if not (folder / LAYOUT).is_file():
            with pending_file(folder) as pending:
                pending.file.write(LAYOUT_CONTENT)
                pending.publish(folder / LAYOUT)
        yield


def _valid_layout_file(path: Path) -> bool:
    """What ``verify`` accepts as the ``oci-layout`` file, read no further than a
    real one could be long."""
    try:
        return is_layout_file(load_json(path, str(path), _LAYOUT_FILE_MAX))
    except NixlayerError:
        return False


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The layout for this run alone: two runs at once would each write index.json
    from the one they read, and one image would be lost; and one run's failure could
    remove a blob the other had just found. Where the file system has no locks, a
    run goes on without."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _platform(spec: ImageSpec) -> dict[str, str]:
    platform = {"architecture": spec.settings.architecture, "os": "linux"}
    if spec.settings.variant:
        platform["variant"] = spec.settings.variant
    return platform


def _existing_manifests(folder: Path) -> list[dict[str, Any]]:
    """What the layout's ``index.json`` lists (nothing when it has none)."""
    path = folder / INDEX
    if not os.path.lexists(path):
        return []
    where = f"-o {show_path(folder)}: {INDEX}"
    return _manifests(load_json(path, where), where)


def _check_kept(folder: Path, descriptor: dict[str, Any], where: str) -> None:
    """An image the layout lists already stays beside ours: if its descriptor names no
    blob of the layout (no sha256 digest, no size, a blob not there or of another
    size), the layout written would be one ``verify`` rejects. A blob a descriptor
    gives ``urls`` for may be elsewhere."""
    size = descriptor.get("size")
    name = blob_name(str(descriptor.get("digest")), where)
    if "urls" in descriptor:
        return
    try:
        found = os.stat(folder / name)
    except OSError:
        found = None
    if found is None or not stat.S_ISREG(found.st_mode) or found.st_size != size:
        raise NixlayerError(
            f"{where}: its blob {name} is not there as its descriptor says "
            f"({show_json(size)} bytes); repair or remove it first"
        )


def _manifests(index: Any, where: str) -> list[dict[str, Any]]:
    manifests = json_object(index, where).get("manifests", [])
    if not isinstance(manifests, list):
        raise NixlayerError(f"{where}: its manifests are not a list")
    return [json_object(m, f"{where}: a manifest") for m in manifests]


def _update_index(layout: _Layout, descriptor: dict[str, Any]) -> None:
    """``index.json`` with our image, replacing one of the same name: written last and
    renamed into place, so the layout is always either the old one or the new one.
    The images it keeps must be whole (``_check_kept``)."""
    ref = descriptor["annotations"][REF_NAME]
    existing = _existing_manifests(layout.folder)
    for number, other in enumerate(existing, 1):
        if _ref(other) != ref:
            where = f"-o {show_path(layout.folder)}: {INDEX}: manifest {number}"
            _check_kept(layout.folder, other, where)
    kept = [m for m in existing if _ref(m) != ref]
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [*kept, descriptor]}
    layout.index = canonical_json(index)
    with pending_file(layout.folder) as pending:
        pending.file.write(layout.index)
        pending.publish(layout.folder / INDEX)


def _ref(descriptor: dict[str, Any]) -> Any:
    annotations = descriptor.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def _largest_first(layers: tuple[Layer, ...]) -> list[int]:
    """The order to start making the layers in on ``WORKERS`` threads: the largest first,
    as a large layer started last would run alone at the end, a core idle."""
    return sorted(range(len(layers)), key=lambda i: layers[i].size_hint, reverse=True)


def write_oci_layout(
    spec: ImageSpec,
    folder: Path,
    compression: Compression,
    cache: LayerCache,
    on_bytes: Progress = lambda n: None,
    on_layer: Callable[[], None] = lambda: None,
    on_size: LayerSized = lambda hint, size: None,
) -> WrittenLayout:
    """Write the image into an OCI layout folder, reusing the blobs it already has.

    Layers are independent, so they are made in parallel (hashing and compression
    release the GIL); each is compressed on its own, so the bytes do not depend on
    how many run at once.

    If it fails (an error, Ctrl-C, SIGTERM), what it added goes again: the blobs it
    added to a layout, or the layout it started (``_created_by_us``), which a watcher
    removes even after ``kill -9``. Neither once its index.json is in place: the image
    is complete then. Nor a layout another run has completed meanwhile.
    """
    created = _created_by_us(folder)
    layout = _Layout(folder, cache)
    with removed_if_killed(created, unless=folder / INDEX):
        try:
            with _started_layout(folder):
                return _write_layout(spec, layout, compression, cache, on_bytes, on_layer, on_size)
        except BaseException:
            if not layout.committed():
                _remove(layout.added if (folder / INDEX).exists() else [*layout.added, *created])
            raise


def _write_layout(
    spec: ImageSpec,
    layout: _Layout,
    compression: Compression,
    cache: LayerCache,
    on_bytes: Progress,
    on_layer: Callable[[], None],
    on_size: LayerSized,
) -> WrittenLayout:
    mtime = spec.settings.mtime

    stop = threading.Event()

    def progress(count: int) -> None:
        """Called between buffers: where a layer stops once another has failed."""
        if stop.is_set():
            raise _Stopped
        on_bytes(count)

    def one(layer: Layer) -> tuple[CachedLayer, bool]:
        result = _layer_blob(layer, layout, mtime, compression, cache, progress, on_size)
        if result[1]:  # in place already: none of its bytes are counted
            on_size(layer.size_hint, 0)
        on_layer()
        return result

    all_layers = spec.all_layers
    order = _largest_first(all_layers)
    with ThreadPoolExecutor(WORKERS) as pool:
        try:
            made = dict(zip(order, pool.map(one, [all_layers[i] for i in order]), strict=True))
        except BaseException:  # an error, Ctrl-C or SIGTERM: stop the others, not wait
            stop.set()
            pool.shutdown(cancel_futures=True)
            raise
    results = [made[i] for i in range(len(all_layers))]
    layers = tuple(layer for layer, _ in results)
    config = config_json(spec, [layer.diff_id.removeprefix("sha256:") for layer in layers])
    config_digest = layout.put(config)
    ref = f"{spec.settings.name}:{spec.settings.tag or content_tag(config)}"
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.blob_size}
                for layer in layers
            ],
        }
    )
    descriptor = {
        "mediaType": MANIFEST_TYPE,
        "digest": layout.put(manifest),
        "size": len(manifest),
        "annotations": {REF_NAME: ref, CONTAINERD_NAME: qualified_name(ref)},
        "platform": _platform(spec),
    }
    _update_index(layout, descriptor)
    return WrittenLayout(ref, config_digest, layers, tuple(reused for _, reused in results))


def docker_manifest(layout: WrittenLayout) -> bytes:
    """The ``manifest.json`` that makes an OCI archive loadable by ``docker load``
    too, as ``docker save`` writes it since Docker 25."""
    entry = {
        "Config": blob_name(layout.config_digest),
        "RepoTags": [qualified_name(layout.ref)],
        "Layers": [blob_name(layer.digest) for layer in layout.layers],
    }
    return canonical_json([entry])


def write_oci_archive(
    spec: ImageSpec,
    out: BinaryIO,
    compression: Compression,
    scratch: Path,
    on_bytes: Progress = lambda n: None,
    on_layer: Callable[[], None] = lambda: None,
    on_size: LayerSized = lambda hint, size: None,
) -> WrittenLayout:
    """The OCI layout as one tar, with a docker ``manifest.json`` beside ``index.json``.

    A tar member's size comes before its bytes, and a compressed layer's size is
    known only once it is compressed: the layout is built in ``scratch`` first.
    """
    with scratch_folder(scratch) as temporary:
        folder = Path(temporary, "layout")
        with _started_layout(folder):  # removed with the scratch folder if it fails
            no_cache = LayerCache(None)
            layout = _write_layout(
                spec, _Layout(folder, no_cache), compression, no_cache, on_bytes, on_layer,
                on_size,
            )  # fmt: skip
        (folder / MANIFEST).write_bytes(docker_manifest(layout))
        entries = [entry for entry in walk_tree(os.fsencode(folder), b"") if entry.name]
        write_layer(lay_out(entries, spec.settings.mtime), out.write)
    return layout
