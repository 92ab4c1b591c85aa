"""Images read byte by byte, independently of nixlayer's readers: docker-archives, OCI
layouts and oci-archives, their layers' members, decompression, and image names as
docker and containerd spell them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DockerArchive:
    """A docker-archive read member by member, as ``docker load`` would see it."""

    members: tuple[str, ...]  # in archive order
    manifest: list[dict[str, Any]]
    config_name: str
    config_bytes: bytes
    layers: tuple[bytes, ...]  # in manifest order

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_bytes)


def read_docker_archive(data: bytes) -> DockerArchive:
    """Parse the outer tar, following manifest.json to the config and layer tars."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as outer:
        members = tuple(m.name for m in outer.getmembers())

        def read(name: str) -> bytes:
            extracted = outer.extractfile(name)
            assert extracted is not None, f"{name} is not a regular file in the archive"
            return extracted.read()

        manifest = json.loads(read("manifest.json"))
        config_name = manifest[0]["Config"]
        layers = tuple(read(name) for name in manifest[0]["Layers"])
        return DockerArchive(members, manifest, config_name, read(config_name), layers)


def layer_members(layer: bytes) -> list[tarfile.TarInfo]:
    """A layer tar's entries in archive order (PAX records already applied)."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        return tar.getmembers()


def layer_file(layer: bytes, member: tarfile.TarInfo) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        extracted = tar.extractfile(member.name)
        assert extracted is not None
        return extracted.read()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_twice(archive: DockerArchive) -> dict[str, list[int]]:
    """Every name that more than one layer stores as a file, symlink or hard link,
    with the indexes of those layers (a name also stored twice in one layer counts).

    Directories may repeat (``nix/``, ``nix/store/`` are in every store layer), as long
    as they are directories everywhere: a name that is a directory in one layer and
    something else in another is also reported.
    """
    layers_of: dict[str, list[int]] = {}
    directory_in: dict[str, set[bool]] = {}
    for index, layer in enumerate(archive.layers):
        for member in layer_members(layer):
            name = member.name.rstrip("/")
            directory_in.setdefault(name, set()).add(member.isdir())
            if not member.isdir():
                layers_of.setdefault(name, []).append(index)
    twice = {name: where for name, where in layers_of.items() if len(where) > 1}
    for name, kinds in directory_in.items():
        if len(kinds) > 1:
            twice.setdefault(name, layers_of[name])
    return twice


def layer_file_bytes(archive: DockerArchive) -> int:
    """The bytes of every regular file the layers store (a hard link stores none)."""
    return sum(
        member.size for layer in archive.layers for member in layer_members(layer) if member.isreg()
    )


REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class OciImage:
    """One image of an OCI layout or oci-archive, as its index, manifest and config
    blobs say: the digests a copy, a registry or a runtime must keep."""

    descriptor: dict[str, Any]  # the index.json entry
    manifest: dict[str, Any]
    config_bytes: bytes

    @property
    def digest(self) -> str:
        return self.descriptor["digest"]

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    @property
    def blobs(self) -> set[str]:
        """Every blob a registry stores for it: manifest, config and layers."""
        return {self.digest, self.config_digest, *self.layer_digests}


def _oci_image(read: Callable[[str], bytes], ref: str) -> OciImage:
    """The image ``index.json`` names ``ref`` (by its ref.name annotation)."""
    index = json.loads(read("index.json"))
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == ref]
    assert len(found) == 1, f"index.json names {ref!r} {len(found)} times: {index}"
    manifest = json.loads(read(f"blobs/sha256/{found[0]['digest'].removeprefix('sha256:')}"))
    config = read(f"blobs/sha256/{manifest['config']['digest'].removeprefix('sha256:')}")
    return OciImage(found[0], manifest, config)


def read_oci_layout(folder: Path, ref: str) -> OciImage:
    return _oci_image(lambda name: (folder / name).read_bytes(), ref)


def read_oci_archive(archive: Path, ref: str) -> OciImage:
    with tarfile.open(archive, mode="r:") as tar:

        def read(name: str) -> bytes:
            extracted = tar.extractfile(name)
            assert extracted is not None, f"{name} is not a regular file in {archive}"
            return extracted.read()

        return _oci_image(read, ref)


def decompress(data: bytes) -> bytes:
    """A gzip or zstd stream decompressed, anything else as it is."""
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    return data


def _has_registry(name: str) -> bool:
    """Whether a reference starts with a registry host: a first component with a dot
    or a port, or ``localhost`` (the rule of docker's and containers' parsers)."""
    first, slash, _ = name.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def docker_reference(name: str) -> str:
    """``name`` spelt in full, as docker and containerd spell it: ``app:v1`` is
    ``docker.io/library/app:v1``, ``team/app:v1`` is ``docker.io/team/app:v1``, a
    name with a registry stays as it is.

    nixlayer writes this form wherever a consumer takes the name verbatim (a
    ``manifest.json``'s RepoTags, an index's ``io.containerd.image.name``), so podman,
    containerd and skopeo's docker-archive transport all show the image under it.
    """
    if _has_registry(name):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
