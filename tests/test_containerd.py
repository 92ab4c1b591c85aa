"""containerd as the consumer: ``ctr images import`` of nixlayer's oci-archive and
docker-archive into a containerd the tests start themselves, with its root, state and
sockets in a temporary folder, removed afterwards.

The import unpacks each image into the ``native`` snapshotter (plain copies; a bind
mount under the root only while a layer is applied), and containerd checks every
unpacked layer against the config's diff_ids as it goes; the snapshot chain it ends
with must be the one the diff_ids make.

ctr reads plain tars only: a docker-archive compressed as a whole fails with
``ctr: archive/tar: invalid tar header`` (``docker load`` decompresses it first), so
only the plain one is imported; tests/test_consumer_matrix.py checks that the
compressed ones are exactly the plain one compressed.

The name containerd shows is taken from ``io.containerd.image.name`` for an OCI
archive (verbatim) and from ``RepoTags`` for a docker-archive. nixlayer writes both
spelt in full, as docker does (``app:v1`` is ``docker.io/library/app:v1``), so both
archives import under one name; see ``test_containerd_shows_one_name_for_both_archives``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.archives import docker_reference, sha256_hex
from support.builds import BuiltImage, ImageBuilds
from support.daemons import DaemonFailed, remove_daemon_state, running_daemon
from support.tools import tool_stdout

NAME = "nixlayer-containerd:v1"  # no registry: the usual ``--name app:v1``
QUALIFIED = "registry.example/nixlayer/containerd:v1"
SNAPSHOTTER = "native"
UNUSED_PLUGINS = (  # not needed to import, and some probe the kernel or the host
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
)


def _config(folder: Path) -> str:
    """Everything under ``folder``; the ``opt`` plugin would otherwise create
    /opt/containerd on the host. JSON strings are valid TOML strings."""

    def under(name: str) -> str:
        return json.dumps(str(folder / name))

    disabled = ", ".join(json.dumps(plugin) for plugin in UNUSED_PLUGINS)
    return "\n".join(
        [
            "version = 2",
            f"root = {under('root')}",
            f"state = {under('state')}",
            f"disabled_plugins = [{disabled}]",
            "[grpc]",
            f"  address = {under('containerd.sock')}",
            "[ttrpc]",
            f"  address = {under('containerd.sock.ttrpc')}",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {under('opt')}",
            "",
        ]
    )


@dataclass(frozen=True)
class Containerd:
    """A running containerd, driven by ``ctr`` through its socket."""

    ctr: str
    socket: Path

    def run(self, namespace: str, *args: str | os.PathLike[str]) -> str:
        return tool_stdout([self.ctr, "--address", self.socket, "--namespace", namespace, *args])

    def answers(self) -> bool:
        """Readiness: the socket exists and the daemon reports its version."""
        if not self.socket.exists():
            return False
        argv = [self.ctr, "--address", str(self.socket), "version"]
        return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    """containerd for this module, or a skip saying why it cannot run here.

    Its folder comes from mkdtemp, short enough for a socket path (108 bytes at most);
    whatever happens, the daemon is stopped by its PID, anything it mounted there is
    unmounted, and the folder is removed.
    """
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    programs = {name: shutil.which(name) for name in ("containerd", "ctr")}
    missing = [name for name, path in programs.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: run scripts/install-test-deps.sh")
    folder = Path(tempfile.mkdtemp(prefix="nixlayer-containerd-"))
    try:
        (folder / "config.toml").write_text(_config(folder), encoding="utf-8")
        daemon = Containerd(str(programs["ctr"]), folder / "containerd.sock")
        argv = [str(programs["containerd"]), "--config", folder / "config.toml"]
        try:
            with running_daemon(argv, folder / "containerd.log", daemon.answers):
                yield daemon
        except DaemonFailed as error:
            pytest.skip(f"containerd cannot start here: {error}")
    finally:
        remove_daemon_state(folder)


_namespaces = itertools.count()


@pytest.fixture
def ctr(containerd: Containerd) -> Callable[..., str]:
    """``ctr`` in a namespace of the test's own, so that no import sees another's."""
    namespace = f"nixlayer-test-{next(_namespaces)}"
    return lambda *args: containerd.run(namespace, *args)


def import_image(ctr: Callable[..., str], image: BuiltImage) -> tuple[str, str]:
    """``ctr images import``, unpacking; the name and manifest digest it reports."""
    output = ctr("images", "import", "--snapshotter", SNAPSHOTTER, image.path)
    found = re.findall(r"^unpacking (\S+) \((sha256:[0-9a-f]{64})\)\.\.\.done$", output, re.M)
    assert len(found) == 1, output
    return found[0]


def listed_images(ctr: Callable[..., str]) -> dict[str, str]:
    """``ctr images ls``: each name with its manifest digest."""
    rows = ctr("images", "ls").splitlines()
    assert rows and rows[0].split()[:3] == ["REF", "TYPE", "DIGEST"], rows
    return {row.split()[0]: row.split()[2] for row in rows[1:]}


def chain_id(diff_ids: list[str]) -> str:
    """The top snapshot's name after unpacking: the OCI ChainID of the layers."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = f"sha256:{hashlib.sha256(f'{chain} {diff_id}'.encode()).hexdigest()}"
    return chain


def config_of(ctr: Callable[..., str], manifest_digest: str) -> bytes:
    """The config blob of an imported image, from containerd's content store."""
    manifest = json.loads(ctr("content", "get", manifest_digest))
    return ctr("content", "get", manifest["config"]["digest"]).encode()


@pytest.mark.parametrize(
    ("image_format", "compress", "name"),
    [
        ("oci-archive", "none", NAME),
        ("oci-archive", "gzip", NAME),
        ("oci-archive", "zstd", NAME),
        ("oci-archive", "gzip", QUALIFIED),
        ("docker-archive", "none", NAME),
        ("docker-archive", "none", QUALIFIED),
    ],
)
def test_ctr_imports_and_unpacks_under_the_name(
    image_format: str,
    compress: str,
    name: str,
    image_builds: ImageBuilds,
    ctr: Callable[..., str],
) -> None:
    image = image_builds.get(image_format, compress, name)
    imported_as, digest = import_image(ctr, image)
    expected = docker_reference(name)
    assert imported_as == expected
    assert listed_images(ctr) == {expected: digest}
    if image_format == "oci-archive":  # stored as written, not converted
        assert digest == image.oci().digest
    config = config_of(ctr, digest)
    assert sha256_hex(config) == sha256_hex(image.config_bytes())
    snapshots = ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls")
    assert chain_id(json.loads(config)["rootfs"]["diff_ids"]) in snapshots.split()


def test_containerd_shows_one_name_for_both_archives(
    image_builds: ImageBuilds, ctr: Callable[..., str]
) -> None:
    """The same image, imported from both archives, is one name in containerd, the one
    clients that spell names in full (nerdctl, the CRI plugin) look ``app:v1`` up as:
    ``docker.io/library/app:v1``. Had the oci-archive's ``io.containerd.image.name``
    been ``app:v1`` as given, containerd would hold it under that name, which those
    clients do not find."""
    for image_format in ("oci-archive", "docker-archive"):
        import_image(ctr, image_builds.get(image_format, "none", NAME))
    assert set(listed_images(ctr)) == {docker_reference(NAME)}
