"""What the OCI formats share: how an image is laid out as blobs and manifests, read,
written and verified once for both of them (``oci_layout``, a folder, and
``oci_archive``, the same as one tar).

Blobs are addressed by digest under ``blobs/sha256/``; ``index.json`` names the
image manifests, whose layers carry their own media types and compressed digests.

Writing is split in two: ``write_oci`` makes the blobs and the manifest (how an image
is laid out), and hands them to a ``BlobStore`` (where they go). ``LayoutFolder`` is
the store of a layout folder; a registry would be another store (``has`` a HEAD of
the blob, ``new_blob`` an upload, ``put_manifest`` a PUT of the manifest by tag), in a
module of its own beside ``oci_layout``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from nixlayer.cache import CachedLayer, LayerCache, layer_key
from nixlayer.compression import Compression, layer_media_type, media_type_compression
from nixlayer.errors import NixlayerError, in_a_file, missing_folder, show_path, what_is
from nixlayer.formats.files import ImageFiles, json_object, read_config
from nixlayer.formats.writing import Writing, sha256_digest, written_image
from nixlayer.image import (
    ImageSpec,
    SourceImage,
    WrittenImage,
    canonical_json,
    config_json,
    content_tag,
    layer_histories,
    qualified_name,
)
from nixlayer.jsonfile import json_strings, load_json
from nixlayer.jsonstream import show_json
from nixlayer.layers import BlobLayer, Layer, LayerSized
from nixlayer.output import PendingFile, pending_file
from nixlayer.store import FILE_FLAGS
from nixlayer.tarwriter import WRITER_THREAD

if TYPE_CHECKING:
    from nixlayer.blobs import BlobRead
    from nixlayer.verify import Checker

Progress = Callable[[int], None]

INDEX = "index.json"
LAYOUT = "oci-layout"
BLOBS = "blobs/sha256/"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (INDEX_TYPE, "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = (MANIFEST_TYPE, "application/vnd.docker.distribution.manifest.v2+json")
LAYOUT_VERSION = "1.0.0"
LAYOUT_CONTENT = canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
WORKERS = 2

_LAYOUT_FILE_MAX = 1024  # the file is 30 bytes; nothing past this is read
_CHUNK = 1 << 20
_MAX_DEPTH = 4  # nested indexes verify follows; deeper ones are reported, not followed
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def blob_name(digest: Any, source: str = "the image") -> str:
    """The blob a digest names; ``source`` is the image whose metadata gave it, and
    ``digest`` what it gave, of any JSON type (shown as JSON if it is no digest)."""
    algorithm, _, hex_digest = digest.partition(":") if isinstance(digest, str) else ("",) * 3
    if algorithm != "sha256" or len(hex_digest) != 64 or not hex_digest.isalnum():
        raise NixlayerError(f"{source}: unsupported digest {show_json(digest)}")
    return f"{BLOBS}{hex_digest}"


def is_layout_file(value: Any) -> bool:
    """Whether ``value`` (the parsed ``oci-layout`` file) is what a layout holds: of
    the one version there is, which umoci insists on (another is "not supported")."""
    return isinstance(value, dict) and value.get("imageLayoutVersion") == LAYOUT_VERSION


def manifests(index: Any, where: str) -> list[dict[str, Any]]:
    """The manifest descriptors an ``index.json`` lists."""
    listed = json_object(index, where).get("manifests", [])
    if not isinstance(listed, list):
        raise NixlayerError(f"{where}: its manifests are not a list")
    return [json_object(m, f"{where}: a manifest") for m in listed]


# --- reading ----------------------------------------------------------------------------


def _descriptor(files: ImageFiles, ref: str | None) -> dict[str, Any]:
    """The manifest descriptor of ``index.json`` that ``ref`` names, or the only one."""
    listed = manifests(files.read_json(INDEX), f"{files.source}: {INDEX}")
    if not listed:
        raise NixlayerError(f"{files.source}: {INDEX} lists no manifests")
    if ref is None and len(listed) == 1:
        return listed[0]
    names = [
        json_object(m.get("annotations", {}), f"{files.source}: a manifest's annotations")
        for m in listed
    ]
    known = ", ".join(sorted(_shown_ref(a.get(REF_NAME)) for a in names))
    if ref is None:
        raise NixlayerError(f"{files.source}: choose an image with PATH:REF (it holds: {known})")
    for key in (REF_NAME, CONTAINERD_NAME):  # skopeo's name first, then containerd's
        for descriptor, names_of in zip(listed, names, strict=True):
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
    """The image of a layout's (or oci-archive's) ``index.json`` that ``ref`` names, or
    its only one."""
    descriptor = _descriptor(files, ref)
    if _media_type(descriptor, f"{files.source}: {INDEX}") in INDEX_TYPES:
        raise NixlayerError(f"{files.source}: a multi-platform index is not supported here")
    where = f"{files.source}: the manifest"
    manifest, manifest_digest = files.read_json_and_digest(
        blob_name(descriptor.get("digest"), files.source)
    )
    manifest = json_object(manifest, where)
    config_digest = json_object(manifest.get("config"), f"{where}'s config").get("digest")
    config, read_digest, diff_ids = read_config(files, blob_name(config_digest, files.source))
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
    return SourceImage(
        source=files.source,
        config=config,
        layers=blobs,
        config_digest=read_digest,
        manifest_digest=manifest_digest,
        repo_tags=tags,
    )


# --- writing: how the blobs are made ---------------------------------------------------


class NewBlob(Protocol):
    """A blob being written to a ``BlobStore``: its bytes go to ``file``, once, and
    ``publish`` says they are complete and hash to ``digest``. Dropped unless
    published."""

    @property
    def file(self) -> BinaryIO: ...

    def publish(self, digest: str) -> None: ...


class BlobStore(Protocol):
    """Where an OCI image's blobs and manifest go. ``write_oci`` asks whether a blob is
    there (``has``: then it is not made again), writes the others (``new_blob``, and
    ``put`` for the small config), and names the manifest last (``put_manifest``), so
    that no name ever leads to a half-written image."""

    def has(self, digest: str, size: int) -> bool: ...

    def new_blob(self) -> contextlib.AbstractContextManager[NewBlob]: ...

    def put(self, data: bytes) -> str:
        """A small blob, written unless it is there already; its digest."""
        ...

    def put_manifest(self, manifest: bytes, descriptor: dict[str, Any]) -> None:
        """The manifest, and its name: ``descriptor`` is what an index lists of it (its
        digest, size, platform, and its name in ``annotations[REF_NAME]``)."""
        ...


class _Stopped(Exception):
    """A layer abandoned because the write as a whole failed or was interrupted."""


def _make_layer_blob(
    layer: Layer,
    store: BlobStore,
    mtime: int,
    compression: Compression,
    on_bytes: Progress,
    on_size: LayerSized,
) -> CachedLayer:
    """Stream the layer once: hashed uncompressed (diff_id), compressed, hashed again
    (digest) and written into a new blob, published under its digest at the end. What
    goes wrong reading the layer is the layer's file's (``in_a_file``), not the
    destination's."""
    with in_a_file():
        prepared = layer.prepare(mtime)
    on_size(layer.size_hint, prepared.size)
    compressor = compression.compressor() if compression else None
    blob_digest = hashlib.sha256()
    blob_size = 0
    with store.new_blob() as blob:

        def write(data: bytes | memoryview) -> None:
            nonlocal blob_size
            out = compressor.compress(data) if compressor else data
            if compressor:
                blob_digest.update(out)
            blob.file.write(out)
            blob_size += len(out)

        one_thread = WRITER_THREAD.set(False)  # layers are made in parallel already
        try:
            with in_a_file():
                diff_id = f"sha256:{prepared.stream(write, on_bytes)}"
        finally:
            WRITER_THREAD.reset(one_thread)
        if compressor:
            write_tail = compressor.flush()
            blob_digest.update(write_tail)
            blob.file.write(write_tail)
            blob_size += len(write_tail)
        digest = f"sha256:{blob_digest.hexdigest()}" if compressor else diff_id
        blob.publish(digest)
    return CachedLayer(diff_id, digest, blob_size, compression.media_type)


def _kept_blob(layer: BlobLayer, store: BlobStore, on_bytes: Progress) -> tuple[CachedLayer, bool]:
    """A base image's compressed layer, copied as it is stored, and whether it was there
    already: the new image keeps the base's digests, so that a registry or a machine
    that has the base has these layers too. (Compressed anew, they would differ.) A
    Docker media type becomes the OCI one for the same bytes."""
    media_type = layer_media_type(layer.compression)
    if layer.digest is not None and store.has(layer.digest, layer.blob_size):
        return CachedLayer(layer.diff_id, layer.digest, layer.blob_size, media_type), True
    with store.new_blob() as blob:
        with in_a_file():
            digest = layer.copy_stored(blob.file, on_bytes)
        blob.publish(digest)
    return CachedLayer(layer.diff_id, digest, layer.blob_size, media_type), False


def _layer_blob(
    layer: Layer,
    store: BlobStore,
    mtime: int,
    writing: Writing,
    on_bytes: Progress,
) -> tuple[CachedLayer, bool]:
    """The layer's blob in the store, and whether it was there already. A base's
    blob kept as stored counts its ``blob_size``, its size hint: no ``on_size``."""
    if isinstance(layer, BlobLayer) and layer.compression is not None:
        return _kept_blob(layer, store, on_bytes)
    identity = layer.identity(mtime)
    key = layer_key(identity, writing.compression) if identity is not None else None
    cached = writing.cache.get(key) if key else None
    if cached and store.has(cached.digest, cached.blob_size):
        return cached, True
    made = _make_layer_blob(layer, store, mtime, writing.compression, on_bytes, writing.on_size)
    if key:
        writing.cache.put(key, made)
    return made, False


def _largest_first(layers: tuple[Layer, ...]) -> list[int]:
    """The order to start making the layers in on ``WORKERS`` threads: the largest first,
    as a large layer started last would run alone at the end, a core idle."""
    return sorted(range(len(layers)), key=lambda i: layers[i].size_hint, reverse=True)


def _platform(spec: ImageSpec) -> dict[str, str]:
    platform = {"architecture": spec.settings.architecture, "os": "linux"}
    if spec.settings.variant:
        platform["variant"] = spec.settings.variant
    return platform


def write_oci(
    spec: ImageSpec, store: BlobStore, writing: Writing, image_format: str, destination: str
) -> WrittenImage:
    """The image as OCI blobs and a manifest, into ``store``; ``image_format`` and
    ``destination`` only say, in what is returned, what the caller wrote where.

    Layers are independent, so they are made in parallel (hashing and compression
    release the GIL); each is compressed on its own, so the bytes do not depend on
    how many run at once.
    """
    mtime = spec.settings.mtime
    stop = threading.Event()

    def progress(count: int) -> None:
        """Called between buffers: where a layer stops once another has failed."""
        if stop.is_set():
            raise _Stopped
        writing.on_bytes(count)

    def one(layer: Layer) -> tuple[CachedLayer, bool]:
        result = _layer_blob(layer, store, mtime, writing, progress)
        if result[1]:  # in place already: none of its bytes are counted
            writing.on_size(layer.size_hint, 0)
        writing.on_layer()
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
    layers = [layer for layer, _ in results]
    config = config_json(spec, [layer.diff_id.removeprefix("sha256:") for layer in layers])
    config_digest = store.put(config)
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
    manifest_digest = sha256_digest(manifest)
    descriptor = {
        "mediaType": MANIFEST_TYPE,
        "digest": manifest_digest,
        "size": len(manifest),
        "annotations": {REF_NAME: ref, CONTAINERD_NAME: qualified_name(ref)},
        "platform": _platform(spec),
    }
    store.put_manifest(manifest, descriptor)
    return written_image(spec, image_format, destination, config, manifest_digest, results)


# --- where they go: a layout folder -------------------------------------------------------


class _FolderBlob:
    """A ``NewBlob`` of a layout folder: a file written in its blobs folder. (A plain
    class: a dataclass costs a millisecond to define, on every start.)"""

    def __init__(self, layout: LayoutFolder, pending: PendingFile) -> None:
        self.layout = layout
        self.pending = pending

    @property
    def file(self) -> BinaryIO:
        return self.pending.file

    def publish(self, digest: str) -> None:
        self.layout.publish(self.pending, digest)


@dataclass
class LayoutFolder:
    """A layout folder being written, a ``BlobStore``: its blobs are trusted by their
    content, never by their name alone, and those this run adds are listed, to go
    again if it fails. Errors name the folder; the caller says which option gave it."""

    folder: Path
    cache: LayerCache
    added: list[Path] = field(default_factory=list)
    index: bytes | None = None  # the index.json this run put in place, once it tries

    def blob(self, digest: str) -> Path:
        return self.folder / blob_name(digest)

    @contextlib.contextmanager
    def new_blob(self) -> Iterator[NewBlob]:
        with pending_file(self.folder / "blobs" / "sha256") as pending:
            yield _FolderBlob(self, pending)

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
                    f"{show_path(self.folder)}: {blob_name(digest)} is a folder, not a blob"
                ) from None
            pending.publish(path)
        else:
            self.added.append(path)
        self.cache.seen(path, digest)

    def put(self, data: bytes) -> str:
        """A small blob (config, manifest), written unless the folder has it already."""
        digest = sha256_digest(data)
        if not self.has(digest, len(data)):
            with self.new_blob() as blob:
                blob.file.write(data)
                blob.publish(digest)
        return digest

    def put_manifest(self, manifest: bytes, descriptor: dict[str, Any]) -> None:
        """The manifest's blob, then ``index.json`` with it, replacing an image of the
        same name: written last and renamed into place, so the layout is always either
        the old one or the new one. The images it keeps must be whole
        (``_check_kept``)."""
        self.put(manifest)
        ref = descriptor["annotations"][REF_NAME]
        existing = existing_manifests(self.folder)
        for number, other in enumerate(existing, 1):
            if _ref(other) != ref:
                where = f"{show_path(self.folder)}: {INDEX}: manifest {number}"
                _check_kept(self.folder, other, where)
        kept = [m for m in existing if _ref(m) != ref]
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [*kept, descriptor]}
        self.index = canonical_json(index)
        with pending_file(self.folder) as pending:
            pending.file.write(self.index)
            pending.publish(self.folder / INDEX)

    def committed(self) -> bool:
        """Whether this run's index.json is in place, which an interrupt can follow."""
        try:
            return self.index is not None and (self.folder / INDEX).read_bytes() == self.index
        except OSError:
            return False


def created_by_us(folder: Path) -> list[Path]:
    """What a failed first write into ``folder`` must remove so that nothing of it
    stays: the highest of its folders that does not exist yet, or what an empty
    ``folder`` will hold. Of an existing layout only the blobs this run added go (see
    ``LayoutFolder``); what ``started_layout`` refuses to write into is never touched."""
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    if missing:
        return [missing[-1]]
    with contextlib.suppress(OSError):  # unreadable: started_layout says so
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            return [folder / LAYOUT, folder / "blobs"]
    return []


def remove(paths: list[Path]) -> None:
    """Best effort, while another error is on its way: it must not hide that one."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def started_layout(folder: Path) -> Iterator[None]:
    """A new layout, or one that is there already, never a folder with other things;
    held by this run alone until the block ends (see ``_locked``)."""
    if folder.exists() and not folder.is_dir():
        kind = what_is(folder)
        raise NixlayerError(f"{show_path(folder)}: {kind}; the oci format writes a folder")
    has_layout_file = (folder / LAYOUT).is_file()
    if folder.is_dir() and any(folder.iterdir()) and not has_layout_file:
        raise NixlayerError(f"{show_path(folder)}: a folder that is not an OCI image layout")
    if has_layout_file and not _valid_layout_file(folder / LAYOUT):
        raise NixlayerError(
            f"{show_path(folder)}: its {LAYOUT} file is not an OCI layout's of version "
            f"{LAYOUT_VERSION}"
        )
    try:
        (folder / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    except OSError as error:  # the first of the names that is no folder, if one is
        blocked = error.errno in (errno.ENOTDIR, errno.EEXIST)
        why = missing_folder(error.filename or folder) if blocked else error.strerror
        raise NixlayerError(f"{show_path(folder)}: cannot create it: {why}") from None
    with _locked(folder):
        existing_manifests(folder)  # a layout the image cannot be added to fails now
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


def existing_manifests(folder: Path) -> list[dict[str, Any]]:
    """What the layout's ``index.json`` lists (nothing when it has none)."""
    path = folder / INDEX
    if not os.path.lexists(path):
        return []
    where = f"{show_path(folder)}: {INDEX}"
    return manifests(load_json(path, where), where)


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


def _ref(descriptor: dict[str, Any]) -> Any:
    annotations = descriptor.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


# --- verifying -----------------------------------------------------------------------------


def verify_layout(check: Checker) -> None:
    """The layout file, and every image the index names, down to each blob; see
    ``verify_unnamed_blobs`` for the blobs nothing names, which go last."""
    layout = check.json(LAYOUT, "the layout file")
    if layout is not None and not is_layout_file(layout):
        check.problem(f"{LAYOUT}: its imageLayoutVersion is not {LAYOUT_VERSION}")
    index = check.json(INDEX, "the index")
    if index is not None:
        _check_index(check, index, INDEX, 0)


def _check_index(check: Checker, index: Any, where: str, depth: int) -> None:
    listed = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(listed, list):
        check.problem(f"{where}: no manifests list")
        return
    if index.get("schemaVersion") != 2:
        check.problem(f"{where}: schemaVersion is not 2")
    for number, descriptor in enumerate(listed, 1):
        place = f"{where} manifest {number}"
        data = _descriptor_blob(check, descriptor, place)
        if data is None:
            continue
        media_type = descriptor.get("mediaType")
        if media_type in INDEX_TYPES and depth < _MAX_DEPTH:
            _check_index(check, data, place, depth + 1)
        elif media_type in MANIFEST_TYPES or media_type is None:
            _check_manifest(check, data, place, descriptor.get("platform"))
        else:
            check.problem(f"{place}: unexpected mediaType {show_json(media_type)}")


def _descriptor_blob(check: Checker, descriptor: Any, where: str) -> Any:
    """A small blob (manifest, index, config) checked against its descriptor, parsed."""
    name = _check_descriptor(check, descriptor, where)
    if name is None or check.blob(name) is None:
        return None
    return check.json(name, f"{where}:")


def _check_descriptor(
    check: Checker,
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


def _check_manifest(check: Checker, manifest: Any, where: str, platform: Any) -> None:
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
        compression = media_type_compression(media_type)
        name = _check_descriptor(check, descriptor, place, compression, layer=True)
        if name is not None and diff_ids is not None:
            check.layer_against_diff_id(name, compression, diff_ids[number - 1])
        elif name is not None:
            check.report.layers += 1
        reads.append(check.layer(name, compression) if name is not None else None)
    if histories is not None:
        check.merged(where, histories, reads)


def _check_platform(check: Checker, config: Any, platform: Any, where: str) -> None:
    """The index's platform for a manifest must be the config's."""
    if not isinstance(config, dict) or not isinstance(platform, dict):
        return
    for key in ("architecture", "os", "variant"):
        if key in platform and platform[key] != config.get(key):
            check.problem(
                f"{where}: the index says {key} {show_json(platform[key])}, "
                f"the config {show_json(config.get(key))}"
            )


def verify_unnamed_blobs(check: Checker) -> None:
    """Every file under blobs/sha256 must hash to its name, referenced or not; other
    names (a temporary file left by a killed writer) are noted, and so are blobs no
    index or manifest names: the layout allows them (a writer killed before its
    index.json, an image removed), but they take room for nothing. Last: what the
    images name has been read by then."""
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
