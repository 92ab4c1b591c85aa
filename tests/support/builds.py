"""nixlayer's images of the fixture store in each format, compression and name, built
once per session and read back from their own files."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.archives import (
    DockerArchive,
    OciImage,
    decompress,
    read_docker_archive,
    read_oci_archive,
    read_oci_layout,
    sha256_hex,
)
from support.run import run_ok
from support.stores import FixtureStore


@dataclass(frozen=True)
class BuiltImage:
    """An image nixlayer wrote in one format and compression, under ``name``."""

    image_format: str
    compress: str
    name: str  # NAME:TAG
    path: Path
    options: tuple[str, ...]  # the from-closure options it was built with, but -o

    def reference(self, transport: str | None = None, named: bool = True) -> str:
        """How skopeo and podman address it: ``TRANSPORT:PATH[:NAME:TAG]``; an
        oci-archive may also be read as a docker-archive (its ``manifest.json``)."""
        transport = transport or self.image_format
        return f"{transport}:{self.path}" + (f":{self.name}" if named else "")

    def oci(self) -> OciImage:
        """The OCI image it holds, from index.json (OCI formats only)."""
        if self.image_format == "oci":
            return read_oci_layout(self.path, self.name)
        return read_oci_archive(self.path, self.name)

    def config_bytes(self) -> bytes:
        """The config blob it holds, read from its own files."""
        if self.image_format == "docker-archive":
            return self.docker_archive().config_bytes
        return self.oci().config_bytes

    def layer_digests(self) -> list[str]:
        """The layer blobs' digests, as its manifest lists them."""
        if self.image_format == "docker-archive":
            return [f"sha256:{sha256_hex(layer)}" for layer in self.docker_archive().layers]
        return self.oci().layer_digests

    def docker_archive(self) -> DockerArchive:
        """A docker-archive's content, decompressed when the whole stream was."""
        assert self.image_format == "docker-archive", self
        return read_docker_archive(decompress(self.path.read_bytes()))

    def docker_manifest(self) -> list[dict[str, Any]]:
        """The docker ``manifest.json`` of a docker-archive, or the one an oci-archive
        carries beside ``index.json`` for ``docker load``."""
        if self.image_format == "docker-archive":
            return self.docker_archive().manifest
        with tarfile.open(self.path, mode="r:") as tar:
            extracted = tar.extractfile("manifest.json")
            assert extracted is not None, f"{self.path} has no manifest.json file"
            return json.loads(extracted.read())


class ImageBuilds:
    """nixlayer's images of the fixture store in every format, compression and name
    the consumer tests ask for, each built once per session on first use."""

    def __init__(self, store: FixtureStore, folder: Path) -> None:
        self._store = store
        self._folder = folder
        self._built: dict[tuple[str, str, str], BuiltImage] = {}

    def get(self, image_format: str, compress: str, name: str) -> BuiltImage:
        key = (image_format, compress, name)
        if key not in self._built:
            self._built[key] = self._build(*key)
        return self._built[key]

    def _build(self, image_format: str, compress: str, name: str) -> BuiltImage:
        options = (
            "from-closure", str(self._store.closure_file), "--store-root", str(self._store.root),
            "--format", image_format, "--compress", compress, "--name", name, "--no-cache", "-q",
        )  # fmt: skip
        stem = f"{image_format}-{compress}-{len(self._built)}"
        path = self._folder / (stem if image_format == "oci" else f"{stem}.tar")
        run_ok(*options, "-o", path)
        return BuiltImage(image_format, compress, name, path, options)
