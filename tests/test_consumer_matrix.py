"""Every format nixlayer writes, in every compression, through the consumers that read
it (issue 4): skopeo copies each image to each other transport and inspects it, podman
loads it, and each consumer is asked which name it shows the image under.

skopeo checks every blob against its digest as it copies; where it converts layers
(to a docker-archive, whose layers are plain tars) the result is read back here and
each layer hashed against the config's diff_ids, so a compressed blob that does not
decompress to its diff_id fails too.

Consumer limits met on Debian bookworm, and the path taken instead (each one checked
with the tools' own files, so they are limits of the consumers, not of nixlayer):

- skopeo 1.9.3 and podman 4.3.1 reject a docker-archive gzipped as a whole with
  ``loading tar component manifest.json: archive/tar: invalid tar header``, even
  ``gzip -n`` of a docker-archive skopeo itself wrote (zstd, xz and bzip2 are read).
  That image is checked to be exactly the plain docker-archive, gzipped, and the
  plain one goes through every consumer.
- skopeo 1.9.3 will not put zstd layers into a docker-archive (``zstd compression is
  not supported for docker images``), not even with ``--dest-compress-format gzip``:
  zstd layers go to a gzip OCI layout first, a copy that verifies every blob too.
- umoci 0.4.7 cannot unpack zstd; tests/test_oci.py unpacks through gzip.
- podman 4.3 ``load -i`` takes an OCI layout folder, but names the image after the
  folder and ignores the annotations (see ``test_podman_names_an_oci_layout_after_its_folder``).

What "agree on the name" means: the user gave ``NAME:TAG``, and every consumer shows
the image under one name, that reference spelt in full (``docker_reference``):
``app:v1`` is ``docker.io/library/app:v1``, ``team/app:v1`` is
``docker.io/team/app:v1``, a name with a registry stays as it is. Where each one
finds it:

- the docker ``manifest.json`` (docker-archive, and the one an oci-archive carries):
  ``RepoTags`` spelt in full, as consumers take it verbatim. docker takes both
  spellings (its own ``docker save`` writes the short one) and shows ``app:v1``.
- the OCI index: ``org.opencontainers.image.ref.name`` is ``NAME:TAG`` as given (the
  ref skopeo and umoci select with ``oci:DIR:NAME:TAG``), ``io.containerd.image.name``
  is spelt in full, as Docker 25's ``docker save`` writes it.
- skopeo finds the image by ``NAME:TAG`` in every transport; its docker-archive
  transport reports the name and tags spelt in full.
- podman loads a docker-archive and an oci-archive under the name spelt in full
  (given no registry, it would otherwise put ``localhost/`` in front).
- containerd (tests/test_containerd.py) imports both archives under it too.

Each consumer's exact string is asserted, for a name without and with a registry.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.archives import (
    CONTAINERD_NAME,
    REF_NAME,
    decompress,
    docker_reference,
    read_docker_archive,
    sha256_hex,
)
from support.builds import ImageBuilds
from support.run import run_ok
from support.tools import Tools, podman, tool_stdout

NAME = "nixlayer-matrix:v1"  # no registry: the usual ``--name app:v1``
QUALIFIED = "registry.example/nixlayer/matrix:v1"  # with a registry
NAMES = (NAME, QUALIFIED)

# (format, compression) of every image skopeo reads; a gzipped docker-archive is
# unreadable to it (see the module docstring) and checked on its own.
READABLE = [
    ("docker-archive", "none"),
    ("docker-archive", "zstd"),
    ("oci", "none"),
    ("oci", "gzip"),
    ("oci", "zstd"),
    ("oci-archive", "none"),
    ("oci-archive", "gzip"),
    ("oci-archive", "zstd"),
]
# (format, compression, transport): an oci-archive is also read as a docker-archive,
# through the manifest.json it carries for ``docker load``.
SOURCES = [(f, c, f) for f, c in READABLE] + [
    ("oci-archive", c, "docker-archive") for c in ("none", "gzip", "zstd")
]
DESTINATIONS = ("docker-archive", "oci", "oci-archive")


def _id(*parts: str) -> str:
    return "-".join(parts)


def skopeo(tools: Tools, *args: str) -> str:
    return tool_stdout([tools.skopeo, "--insecure-policy", *args])


def skopeo_json(tools: Tools, *args: str) -> Any:
    return json.loads(skopeo(tools, *args))


@pytest.mark.parametrize(
    ("image_format", "compress"), [pytest.param(*s, id=_id(*s)) for s in READABLE]
)
def test_skopeo_inspect_reads_what_nixlayer_wrote(
    image_format: str, compress: str, image_builds: ImageBuilds, tools: Tools
) -> None:
    image = image_builds.get(image_format, compress, NAME)
    config = image.config_bytes()
    inspected = skopeo_json(tools, "inspect", image.reference())
    assert inspected["Layers"] == image.layer_digests()
    if image_format != "docker-archive":  # a docker-archive has no manifest blob
        assert inspected["Digest"] == image.oci().digest
    parsed = json.loads(config)
    assert (inspected["Architecture"], inspected["Os"]) == (parsed["architecture"], parsed["os"])
    raw_config = skopeo(tools, "inspect", "--config", "--raw", image.reference())
    assert sha256_hex(raw_config.encode()) == sha256_hex(config)


def _copy_through_gzip(tools: Tools, source: str, folder: Path) -> str:
    """zstd layers re-compressed into a gzip OCI layout, every blob verified on the way:
    skopeo 1.9.3 refuses zstd layers on the way into a docker-archive."""
    layout = f"oci:{folder / 'gzip-layout'}:{NAME}"
    skopeo(tools, "copy", "-q", "--dest-compress-format", "gzip", source, layout)
    return layout


def _check_docker_archive_layers(copy: Path, config: bytes) -> None:
    """Each layer skopeo wrote into the docker-archive hashes to its diff_id: the
    blobs decompress to what the config promises."""
    archive = read_docker_archive(copy.read_bytes())
    assert archive.config_bytes == config
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert [f"sha256:{sha256_hex(layer)}" for layer in archive.layers] == diff_ids


def _source_id(image_format: str, compress: str, transport: str) -> str:
    return _id(image_format, compress) + ("" if transport == image_format else f"-as-{transport}")


@pytest.mark.parametrize("destination", DESTINATIONS)
@pytest.mark.parametrize(
    ("image_format", "compress", "transport"),
    [pytest.param(*source, id=_source_id(*source)) for source in SOURCES],
)
def test_skopeo_copies_to_every_transport(
    image_format: str,
    compress: str,
    transport: str,
    destination: str,
    image_builds: ImageBuilds,
    tools: Tools,
    tmp_path: Path,
) -> None:
    image = image_builds.get(image_format, compress, NAME)
    config = image.config_bytes()
    source = image.reference(transport)
    zstd_layers = compress == "zstd" and transport in ("oci", "oci-archive")
    if zstd_layers and destination == "docker-archive":
        source = _copy_through_gzip(tools, source, tmp_path)
    copy = tmp_path / ("layout" if destination == "oci" else "copy.tar")
    target = f"{destination}:{copy}:{NAME}"
    # OCI to OCI needs no conversion; left alone, skopeo would still gzip plain layers.
    oci_to_oci = "docker-archive" not in (transport, destination)
    keep = ["--preserve-digests"] if oci_to_oci else []
    skopeo(tools, "copy", "-q", *keep, source, target)

    copied = skopeo_json(tools, "inspect", "--raw", target)
    copied_config = skopeo(tools, "inspect", "--config", "--raw", target).encode()
    assert json.loads(copied_config) == json.loads(config)
    assert len(copied["layers"]) == len(json.loads(config)["rootfs"]["diff_ids"])
    if destination == "docker-archive":
        _check_docker_archive_layers(copy, config)
    elif oci_to_oci:  # every byte of every blob kept
        assert skopeo_json(tools, "inspect", target)["Digest"] == image.oci().digest
        assert [layer["digest"] for layer in copied["layers"]] == image.layer_digests()
    # docker-archive to OCI: skopeo compresses the layers with its own gzip and
    # re-serialises the config (same JSON, other bytes), so only content is compared.


def test_gzipped_docker_archive_is_the_plain_one_gzipped(image_builds: ImageBuilds) -> None:
    """skopeo and podman cannot read it (module docstring); ``docker load`` reads the
    stream gunzipped, which must be the plain docker-archive every consumer accepts."""
    packed = image_builds.get("docker-archive", "gzip", NAME).path.read_bytes()
    plain = image_builds.get("docker-archive", "none", NAME).path.read_bytes()
    assert packed[:2] == b"\x1f\x8b"
    assert decompress(packed) == plain


# tests/test_end_to_end.py streams the default docker-archive, tests/test_oci.py the
# default (gzip) oci-archive; these are the other compressions.
@pytest.mark.parametrize(
    ("image_format", "compress"),
    [
        ("docker-archive", "gzip"),
        ("docker-archive", "zstd"),
        ("oci-archive", "none"),
        ("oci-archive", "zstd"),
    ],
)
def test_stdout_is_the_file(image_format: str, compress: str, image_builds: ImageBuilds) -> None:
    image = image_builds.get(image_format, compress, NAME)
    streamed = run_ok(*image.options, "-o", "-").stdout
    assert sha256_hex(streamed) == sha256_hex(image.path.read_bytes())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_files_carry_the_name(image_format: str, name: str, image_builds: ImageBuilds) -> None:
    """The name in the files themselves, where each consumer family looks for it."""
    compress = "none" if image_format == "docker-archive" else "gzip"
    image = image_builds.get(image_format, compress, name)
    if image_format != "oci":
        assert [entry["RepoTags"] for entry in image.docker_manifest()] == [
            [docker_reference(name)]
        ]
    if image_format != "docker-archive":
        annotations = image.oci().descriptor["annotations"]
        assert annotations == {REF_NAME: name, CONTAINERD_NAME: docker_reference(name)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("image_format", "transport"),
    [
        ("docker-archive", "docker-archive"),
        ("oci", "oci"),
        ("oci-archive", "oci-archive"),
        ("oci-archive", "docker-archive"),
    ],
)
def test_skopeo_finds_the_image_by_its_name(
    image_format: str, transport: str, name: str, image_builds: ImageBuilds, tools: Tools
) -> None:
    """skopeo picks an image out of a file by the name given, whether the file holds
    it as given (ref.name) or spelt in full (RepoTags), and another tag of the same
    repository is not found."""
    compress = "none" if image_format == "docker-archive" else "gzip"
    image = image_builds.get(image_format, compress, name)
    anonymous = skopeo_json(tools, "inspect", image.reference(transport, named=False))
    named = skopeo_json(tools, "inspect", image.reference(transport))
    assert named["Digest"] == anonymous["Digest"]
    if transport == "docker-archive":
        # The only transport that reports names: the repository spelt in full, and
        # list-tags gives the tags as the file holds them, spelt in full too.
        assert named["Name"] == docker_reference(name).rpartition(":")[0]
        tags = skopeo_json(tools, "list-tags", image.reference(transport, named=False))
        assert tags["Tags"] == [docker_reference(name)]
    other_tag = f"{image.reference(transport)}-other"
    missing = subprocess.run(
        [tools.skopeo, "inspect", other_tag], capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0, f"skopeo found {other_tag}"


PodmanLoad = Callable[[Path], str]


@pytest.fixture
def podman_load(podman_ready: None) -> Iterator[PodmanLoad]:
    """``podman load -i``, returning the name it printed; whatever a test loaded is
    removed from podman's storage afterwards, pass or fail."""
    loaded: list[str] = []

    def load(path: Path) -> str:
        result = podman("load", "-i", path)
        assert result.returncode == 0, result.stderr
        names = re.findall(r"^Loaded image(?:\(s\))?: (.+)$", result.stdout, re.MULTILINE)
        loaded.extend(names)
        assert len(names) == 1, result.stdout
        return names[0]

    yield load
    for name in loaded:
        podman("rmi", "--force", "--ignore", name)


def _podman_image(name: str) -> dict[str, Any]:
    result = podman("image", "inspect", name)
    assert result.returncode == 0, result.stderr
    (image,) = json.loads(result.stdout)
    return image


# A gzipped docker-archive is left out: podman 4.3.1 cannot read it (module docstring).
@pytest.mark.parametrize(
    ("image_format", "compress", "name"),
    [
        ("docker-archive", "none", NAME),
        ("docker-archive", "none", QUALIFIED),
        ("docker-archive", "zstd", NAME),
        ("oci-archive", "none", NAME),
        ("oci-archive", "gzip", NAME),
        ("oci-archive", "gzip", QUALIFIED),
        ("oci-archive", "zstd", NAME),
    ],
)
def test_podman_loads_under_the_name(
    image_format: str, compress: str, name: str, image_builds: ImageBuilds, podman_load: PodmanLoad
) -> None:
    image = image_builds.get(image_format, compress, name)
    shown = podman_load(image.path)
    assert shown == docker_reference(name)
    stored = _podman_image(shown)
    assert stored["RepoTags"] == [docker_reference(name)]
    assert stored["Id"] == sha256_hex(image.config_bytes())  # podman's ID: the config digest
    if image_format == "oci-archive":  # read as OCI (index.json), not as docker-archive
        assert stored["Digest"] == image.oci().digest


def test_podman_names_an_oci_layout_after_its_folder(
    image_builds: ImageBuilds, podman_load: PodmanLoad
) -> None:
    """podman 4.3 loads an OCI layout folder, the image intact, but under a name made
    of the folder's path (``localhost<path>:latest``): for the ``oci`` transport
    it never reads the annotations. ``podman pull oci:<folder>:NAME:TAG`` does the
    same. A path with capitals or a trailing slash is not even a valid name to it."""
    image = image_builds.get("oci", "gzip", NAME)
    if image.path.as_posix() != image.path.as_posix().lower():
        pytest.skip(f"podman cannot name an image after {image.path} (capitals)")
    shown = podman_load(image.path)
    assert shown == f"localhost{image.path}"
    stored = _podman_image(shown)
    assert stored["RepoTags"] == [f"localhost{image.path}:latest"]
    assert stored["Digest"] == image.oci().digest
