"""A real registry as the consumer: Debian's docker-registry (distribution 2.8), run
on 127.0.0.1 by the tests with a fresh storage folder for this module.

skopeo pushes nixlayer's OCI layouts (gzip, zstd and plain layers) with
``--preserve-digests`` and pulls them back: the registry must hold, and hand back, the
very manifest and blobs nixlayer wrote. Then an image is rebuilt with only the app
changed, into the same layout, and pushed again: the registry's log (every request)
and its blob store show that only the changed layer, the new config and the new
manifest travelled the second time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from support.archives import OciImage, read_oci_layout
from support.builds import ImageBuilds
from support.daemons import DaemonFailed, free_port, http_status, running_daemon
from support.run import run_ok, write_json
from support.stores import FixtureStore, app_update, copy_fixture_store
from support.tools import Tools, tool_stdout

REPOSITORY = "nixlayer/app"
ATTEMPTS = 3  # ports tried, should another process take the free one first
LOG_WAIT = 10.0  # seconds the registry may take to log a request it answered


@dataclass(frozen=True)
class Registry:
    """A running registry: where it listens, stores and logs."""

    address: str  # 127.0.0.1:PORT
    storage: Path
    log: Path

    def ref(self, tag: str) -> str:
        return f"docker://{self.address}/{REPOSITORY}:{tag}"

    def log_size(self) -> int:
        return self.log.stat().st_size

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """The HTTP requests it answered after byte ``since`` of its log (JSON lines)."""
        with self.log.open("rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        entries = [_json_line(line) for line in lines]
        return [entry for entry in entries if "http.request.method" in entry]

    def requests_through(self, since: int, last_path: str) -> list[dict[str, Any]]:
        """The requests after byte ``since``, once the one for ``last_path`` is logged:
        the registry logs a request after answering it, so the client may be done
        before the last line is written."""
        deadline = time.monotonic() + LOG_WAIT
        while True:
            requests = self.requests(since)
            paths = [urlsplit(r["http.request.uri"]).path for r in requests]
            if last_path in paths or time.monotonic() > deadline:
                return requests
            time.sleep(0.05)

    def stored_blobs(self) -> set[str]:
        """Digests of every blob in its storage (layers, configs and manifests alike)."""
        blobs = self.storage / "docker/registry/v2/blobs/sha256"
        return {f"sha256:{data.parent.name}" for data in blobs.glob("*/*/data")}


def _json_line(line: str) -> dict[str, Any]:
    """A log line's fields; nothing for another line, or one still being written."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _config(storage: Path, port: int) -> dict[str, Any]:
    """JSON, which is YAML too: no auth, no TLS, only 127.0.0.1, every request logged."""
    return {
        "version": "0.1",
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }


def _answering(port: int) -> Callable[[], bool]:
    """Readiness: the registry API's base answers 200 (no auth is configured)."""
    return lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 200


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on a free port, stopped by its PID when the module is done."""
    program = shutil.which("docker-registry")
    if program is None:
        pytest.skip("docker-registry not on PATH: run scripts/install-test-deps.sh")
    folder = tmp_path_factory.mktemp("registry")
    problems = []
    for attempt in range(ATTEMPTS):
        port = free_port()
        config = write_json(folder / f"config-{attempt}.yml", _config(folder / "storage", port))
        log = folder / f"registry-{attempt}.log"
        try:
            with running_daemon([program, "serve", config], log, _answering(port)):
                yield Registry(f"127.0.0.1:{port}", folder / "storage", log)
                return
        except DaemonFailed as error:  # most likely the port was taken meanwhile
            problems.append(str(error))
    pytest.fail("docker-registry did not start:\n" + "\n".join(problems))


@dataclass(frozen=True)
class Layout:
    """One OCI layout holding the image (v1) and its rebuild with a new app (v2)."""

    folder: Path
    v1: OciImage
    v2: OciImage


@pytest.fixture(scope="module")
def layout(fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """v1, then v2 written into the same folder, as a user rebuilding would."""
    work = tmp_path_factory.mktemp("registry-images")
    store = copy_fixture_store(fixture_store, work / "store")
    folder = work / "layout"
    common = ("--store-root", store.root, "-o", folder, "--format", "oci", "--no-cache", "-q")
    run_ok("from-closure", store.closure_file, *common, "--name", f"{REPOSITORY}:v1")
    run_ok("from-closure", app_update(store, work), *common, "--name", f"{REPOSITORY}:v2")
    return Layout(
        folder,
        read_oci_layout(folder, f"{REPOSITORY}:v1"),
        read_oci_layout(folder, f"{REPOSITORY}:v2"),
    )


def push(tools: Tools, source: str, registry: Registry, tag: str) -> None:
    """``skopeo copy`` to the registry, every blob as it is (no recompression)."""
    tool_stdout([tools.skopeo, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                 "--preserve-digests", source, registry.ref(tag)])  # fmt: skip


@pytest.fixture(scope="module")
def pushed_v1(tools: Tools, layout: Layout, registry: Registry) -> None:
    """v1 in the registry, where the second push starts from."""
    push(tools, f"oci:{layout.folder}:{REPOSITORY}:v1", registry, "v1")


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_push_keeps_every_digest_and_pulls_back_the_same(
    compress: str, image_builds: ImageBuilds, tools: Tools, registry: Registry, tmp_path: Path
) -> None:
    """Whatever the layers' compression: the registry takes zstd and plain layers in
    an OCI manifest too. The pull keeps digests as well; left alone, skopeo would
    gzip plain layers on their way into the OCI layout."""
    image = image_builds.get("oci", compress, f"{REPOSITORY}:{compress}")
    ours = image.oci()
    push(tools, image.reference(), registry, compress)
    remote = json.loads(
        tool_stdout([tools.skopeo, "inspect", "--tls-verify=false", registry.ref(compress)])
    )
    assert remote["Digest"] == ours.digest
    assert remote["Layers"] == ours.layer_digests
    assert ours.blobs <= registry.stored_blobs()

    pulled = tmp_path / "pulled"
    tool_stdout([tools.skopeo, "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                 "--preserve-digests", registry.ref(compress), f"oci:{pulled}:back"])  # fmt: skip
    again = read_oci_layout(pulled, "back")
    assert again.digest == ours.digest
    assert again.manifest == ours.manifest
    assert again.config_bytes == ours.config_bytes
    for blob in ours.blobs:  # byte for byte, not only by name
        name = f"blobs/sha256/{blob.removeprefix('sha256:')}"
        assert (pulled / name).read_bytes() == (image.path / name).read_bytes(), blob


def _uploads(requests: list[dict[str, Any]]) -> tuple[set[str], list[str]]:
    """The blobs whose upload was completed (``PUT …/blobs/uploads/…?digest=``) and
    the manifests written (``PUT …/manifests/REF``), from the registry's log."""
    blobs, manifests = set(), []
    for request in requests:
        if request["http.request.method"] != "PUT":
            continue
        url = urlsplit(request["http.request.uri"])
        if "/blobs/uploads/" in url.path:
            blobs.update(unquote(d) for d in parse_qs(url.query).get("digest", []))
        elif "/manifests/" in url.path:
            manifests.append(url.path.rpartition("/manifests/")[2])
    return blobs, manifests


def test_second_push_uploads_only_the_changed_layer(
    pushed_v1: None, tools: Tools, layout: Layout, registry: Registry
) -> None:
    changed = set(layout.v2.layer_digests) - set(layout.v1.layer_digests)
    assert len(changed) == 1, f"the app update changed {len(changed)} layers, not 1"
    assert len(layout.v2.layer_digests) == len(layout.v1.layer_digests)
    before, log_at = registry.stored_blobs(), registry.log_size()

    push(tools, f"oci:{layout.folder}:{REPOSITORY}:v2", registry, "v2")

    requests = registry.requests_through(log_at, f"/v2/{REPOSITORY}/manifests/v2")
    blobs, manifests = _uploads(requests)
    assert blobs == changed | {layout.v2.config_digest}
    assert manifests == ["v2"]
    assert registry.stored_blobs() - before == changed | {layout.v2.config_digest, layout.v2.digest}
