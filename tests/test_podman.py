"""podman as the consumer: it loads nixlayer's docker-archive under the name given, and
runs it.  The image runs a real program, a static busybox linked into /bin by
``--contents`` (busybox picks its applet from argv[0], so /bin/sh is a shell).

podman is set up by scripts/install-test-deps.sh for a machine without systemd,
overlayfs or a network (vfs storage, runc, no network namespace).  The images are
loaded into the machine's podman storage and removed afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.archives import docker_reference
from support.run import run_ok, write_json
from support.stores import (
    FixtureStore,
    ReferenceImages,
    build_reference_images,
    load_fixture_generator,
)
from support.tools import podman

BUSYBOX = Path("/bin/busybox")
BUSYBOX_NAME = "busybox-static"
APPLETS = ("sh", "id")  # links to busybox in the store path; /bin/sh is the entrypoint
TEST_IMAGE = "nixlayer-podman-test:latest"


@pytest.fixture
def loaded() -> Iterator[list[str]]:
    """Names to remove from podman's storage after the test, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rmi", "--force", "--ignore", name)


def load(image: Path, name: str, loaded: list[str]) -> str:
    """``podman load`` the image; returns the name podman says it loaded it under.

    nixlayer writes the name spelt in full (``docker.io/library/NAME:TAG`` for a name
    without a registry), and podman shows it as written.
    """
    loaded.append(docker_reference(name))
    result = podman("load", "-i", image)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    match = re.fullmatch(r"Loaded image(?:\(s\))?: (.+)", lines[0])
    assert match, result.stdout
    return match.group(1)


@pytest.fixture(scope="module")
def busybox_store(tmp_path_factory: pytest.TempPathFactory) -> FixtureStore:
    """A store path holding a copy of the static busybox and its applet links, with
    its closure made by the fixture generator's helpers."""
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing: run scripts/install-test-deps.sh (busybox-static)")
    generator = load_fixture_generator()
    base = tmp_path_factory.mktemp("busybox")
    paths = {BUSYBOX_NAME: generator.store_path(BUSYBOX_NAME, "nixlayer-podman-test")}
    generator.make_store_dir(base / "store")
    builder = generator.Builder(base / "store", BUSYBOX_NAME, paths)
    builder.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in APPLETS:
        builder.symlink(f"bin/{applet}", "busybox")
    entries = generator.closure_entries(base / "store", list(paths.values()))
    return FixtureStore(base / "store", write_json(base / "closure.json", entries), entries)


def test_busybox_image_loads_and_runs_as_user_1000(
    podman_ready: None, busybox_store: FixtureStore, loaded: list[str], tmp_path: Path
) -> None:
    image = tmp_path / "image.tar"
    run_ok(
        "from-closure",
        busybox_store.closure_file,
        *("--store-root", busybox_store.root, "-o", image),
        *("--contents", busybox_store.paths[0]),
        *("--entrypoint", '["/bin/sh","-c"]', "--cmd", '["echo hello from nixlayer; id -u"]'),
        *("--user", "1000", "--name", TEST_IMAGE),
    )
    assert load(image, TEST_IMAGE, loaded) == docker_reference(TEST_IMAGE)
    run = podman("run", "--rm", docker_reference(TEST_IMAGE))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from nixlayer\n1000\n"


def test_python_app_loads_under_its_name_with_its_config(
    podman_ready: None,
    tmp_path_factory: pytest.TempPathFactory,
    loaded: list[str],
) -> None:
    """Its programs are stand-ins, so it is not run; podman must see its name and
    run settings."""
    reference: ReferenceImages = build_reference_images(
        tmp_path_factory.getbasetemp() / "reference-images"
    )
    name = "simple-python-api:latest"
    assert load(reference.images["simple-python-api"], name, loaded) == docker_reference(name)
    inspect = podman(
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}} {{json .Config.Env}} {{.Config.WorkingDir}}",
        docker_reference(name),
    )
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.strip() == (
        '["uvicorn","main:app"] ["UVICORN_HOST=0.0.0.0","UVICORN_PORT=5000"] /app'
    )
