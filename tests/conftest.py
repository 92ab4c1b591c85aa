"""Session fixtures: the generated fixture store, the images built from it that the
consumer tests share, and the external tools the tests use."""

from __future__ import annotations

import shutil

import pytest
from support.builds import ImageBuilds
from support.run import write_json
from support.stores import FixtureStore, load_fixture_generator
from support.tools import Tools, podman


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> FixtureStore:
    """A fresh copy of the fixture store, generated once per session.

    Generated rather than copied from fixtures/store so that the tests never depend
    on a stale tree, and in a temporary folder so tests may touch it freely.
    """
    generator = load_fixture_generator()
    base = tmp_path_factory.mktemp("fixture")
    entries = generator.make_fixture_store(base / "store")
    closure_file = write_json(base / "store-closure.json", entries)
    return FixtureStore(base / "store", closure_file, entries)


@pytest.fixture(scope="session")
def tools() -> Tools:
    """skopeo and umoci, or a skip naming the one missing and how to install it."""
    found = {name: shutil.which(name) for name in ("skopeo", "umoci")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: run scripts/install-test-deps.sh")
    return Tools(skopeo=str(found["skopeo"]), umoci=str(found["umoci"]))


@pytest.fixture(scope="session")
def podman_ready() -> None:
    """Skip when podman is missing or cannot work on this machine, in its own words."""
    if shutil.which("podman") is None:
        pytest.skip("podman not on PATH: run scripts/install-test-deps.sh")
    info = podman("info")
    if info.returncode != 0:
        pytest.skip(f"podman info failed: {info.stderr.strip()}")


@pytest.fixture(scope="session")
def image_builds(
    fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory
) -> ImageBuilds:
    """The fixture store's images by format, compression and name, each built on first
    use: several modules hand the same images to different consumers (skopeo, podman,
    containerd), and building each once keeps the suite fast."""
    return ImageBuilds(fixture_store, tmp_path_factory.mktemp("images"))
