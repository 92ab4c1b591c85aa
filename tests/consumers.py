"""Helpers shared by the end-to-end tests: run nixlayer, and read its output the way
real consumers do (skopeo, umoci, podman, a registry, containerd) or byte by byte
(tarfile).

The checks deliberately avoid nixlayer's own modules: an image is judged by what
independent tools and an independent reading of the store say it should hold.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
STORE_DIR = "/nix/store"
MAX_REPORTED = 30  # differences listed in one failure message


def nixlayer_command() -> list[str]:
    """The installed console script, preferring the one of the running interpreter,
    so that a stale ``nixlayer`` elsewhere on PATH is never the one tested."""
    beside_python = Path(sysconfig.get_path("scripts")) / "nixlayer"
    if beside_python.is_file():
        return [str(beside_python)]
    found = shutil.which("nixlayer")
    if found:
        return [found]
    return [sys.executable, "-c", "from nixlayer.cli import main; main()"]


def run_nixlayer(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would, capturing stdout and stderr as bytes."""
    return subprocess.run(
        [*nixlayer_command(), *map(str, args)],
        cwd=cwd,
        env=None if env is None else dict(env),
        umask=umask,
        capture_output=True,
        check=False,
        timeout=300,
    )


def run_ok(*args: str | os.PathLike[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``run_nixlayer`` that fails the test with the CLI's stderr when it does not exit 0."""
    result = run_nixlayer(*args, **kwargs)
    assert result.returncode == 0, (
        f"nixlayer {' '.join(map(str, args))} exited {result.returncode}:\n"
        + result.stderr.decode(errors="replace")
    )
    return result


def podman(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """podman with its output captured, for the tests that load and run images."""
    return subprocess.run(
        ["podman", *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )


def _run_tool(argv: Sequence[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}{result.stdout}"


def skopeo_copy_to_oci(
    archive: Path, dest: Path, tag: str = "test", skopeo: str = "skopeo"
) -> None:
    """Convert with skopeo, which checks every layer against its diff_id on the way."""
    _run_tool(
        [skopeo, "--insecure-policy", "copy", f"docker-archive:{archive}", f"oci:{dest}:{tag}"]
    )


def umoci_unpack(oci_dir: Path, tag: str, bundle: Path, umoci: str = "umoci") -> Path:
    """Unpack with umoci, applying layers in order as a runtime would; returns the rootfs."""
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    _run_tool([umoci, "unpack", *rootless, "--image", f"{oci_dir}:{tag}", str(bundle)])
    return bundle / "rootfs"


def unpack_image(
    archive: Path, workdir: Path, skopeo: str = "skopeo", umoci: str = "umoci"
) -> Path:
    """docker-archive → OCI layout → runtime bundle, in ``workdir``; returns the rootfs."""
    skopeo_copy_to_oci(archive, workdir / "oci", skopeo=skopeo)
    return umoci_unpack(workdir / "oci", "test", workdir / "bundle", umoci=umoci)


def canonical_mode(st: os.stat_result) -> int:
    """The permission bits Nix gives a store entry, whatever the disk says: it keeps
    only "directory", "symlink" and a regular file's owner-executable bit."""
    if stat.S_ISDIR(st.st_mode):
        return 0o555
    if stat.S_ISLNK(st.st_mode):
        return 0o777
    return 0o555 if st.st_mode & stat.S_IXUSR else 0o444


@dataclass(frozen=True)
class FixtureStore:
    """A generated store tree (``root/nix/store/…``) and its path-info closure file."""

    root: Path
    closure_file: Path
    entries: list[dict[str, Any]]

    @property
    def paths(self) -> list[str]:
        return [entry["path"] for entry in self.entries]

    def path(self, name: str) -> str:
        """The full store path whose name (after the hash) is ``name``."""
        (found,) = [p for p in self.paths if p[len(STORE_DIR) + 34 :] == name]
        return found

    def disk(self, store_path: str) -> Path:
        return self.root / store_path.lstrip("/")


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the external programs the image checks drive."""

    skopeo: str
    umoci: str


@dataclass(frozen=True)
class Node:
    """What a consumer can observe about one entry of an unpacked tree."""

    kind: str
    mode: int
    payload: str  # a symlink's target or a file's sha256
    owner: tuple[int, int] | None


def _kind(st: os.stat_result) -> str:
    for kind, test in (("dir", stat.S_ISDIR), ("symlink", stat.S_ISLNK), ("file", stat.S_ISREG)):
        if test(st.st_mode):
            return kind
    return f"special {stat.filemode(st.st_mode)}"


def _node(path: bytes, mode: int, owner: tuple[int, int] | None) -> Node:
    st = os.lstat(path)
    kind = _kind(st)
    payload = ""
    if kind == "symlink":
        payload = os.fsdecode(os.readlink(path))
    elif kind == "file":
        with open(path, "rb") as f:
            payload = hashlib.sha256(f.read()).hexdigest()
    return Node(kind, mode, payload, owner)


def _walk(top: bytes) -> Iterable[tuple[bytes, os.stat_result]]:
    """``top`` and everything under it, symlinks not followed."""
    st = os.lstat(top)
    yield top, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(top)):
            yield from _walk(os.path.join(top, name))


def _walk_store_paths(
    store_root: Path, store_paths: Iterable[str]
) -> Iterable[tuple[str, bytes, os.stat_result]]:
    """Each entry of the store paths: its name relative to the store root, disk path, lstat."""
    root = os.fsencode(store_root)
    for store_path in store_paths:
        for path, st in _walk(os.path.join(root, os.fsencode(store_path.lstrip("/")))):
            yield os.fsdecode(os.path.relpath(path, root)), path, st


def store_entry_names(store_root: Path, store_paths: Iterable[str]) -> set[str]:
    """Names (``nix/store/<base>/…``) of every entry of the store paths, on disk."""
    return {name for name, _, _ in _walk_store_paths(store_root, store_paths)}


def expected_tree(store_root: Path, store_paths: Iterable[str]) -> dict[str, Node]:
    """The store paths as an image must reproduce them: canonical modes, owner root."""
    return {
        name: _node(path, canonical_mode(st), (0, 0))
        for name, path, st in _walk_store_paths(store_root, store_paths)
    }


def actual_tree(rootfs: Path) -> dict[str, Node]:
    """Everything in an unpacked rootfs under nix/store, modes and owners as found.

    Owners are only meaningful when unpacked as root (rootless umoci maps them).
    """
    root = os.fsencode(rootfs)
    tree = {}
    for path, st in _walk(os.path.join(root, os.fsencode(STORE_DIR.lstrip("/")))):
        name = os.fsdecode(os.path.relpath(path, root))
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else (0, 0)
        tree[name] = _node(path, stat.S_IMODE(st.st_mode), owner)
    return tree


def compare_tree(rootfs: Path, store_root: Path, store_paths: Iterable[str]) -> list[str]:
    """Differences between an unpacked image and the store paths it should hold.

    Every path, type, mode, symlink target, content and owner must match and nothing
    else may be there: the rootfs holds only ``nix/store`` (both 0755) and the store
    holds only the given paths. An empty list means the image is faithful.
    """
    problems = []
    top = sorted(os.listdir(rootfs))
    if top != ["nix"]:
        problems.append(f"rootfs holds {top}")
    return (problems + compare_store(rootfs, store_root, store_paths))[:MAX_REPORTED]


def compare_store(rootfs: Path, store_root: Path, store_paths: Iterable[str]) -> list[str]:
    """Differences between an unpacked image's ``nix/store`` and the store paths it
    should hold, whatever else the rootfs holds (an image with a customisation layer).

    ``nix`` must hold only ``store``, both 0755, and the store only the given paths,
    each entry with the same type, mode, symlink target, content and owner.
    """
    problems = []
    if sorted(os.listdir(rootfs / "nix")) != ["store"]:
        problems.append(f"nix/ holds {sorted(os.listdir(rootfs / 'nix'))}")
    for folder in ("nix", "nix/store"):
        mode = stat.S_IMODE(os.lstat(rootfs / folder).st_mode)
        if mode != 0o755:
            problems.append(f"{folder}: mode {mode:o}, expected 755")
    expected = expected_tree(store_root, store_paths)
    actual = actual_tree(rootfs)
    actual.pop(STORE_DIR.lstrip("/"), None)
    for name in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(name), actual.get(name)
        if want != got:
            problems.append(f"{name}: expected {want}, image has {got}")
    return problems[:MAX_REPORTED]


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


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module; scripts/ is not a package.

    Registered in ``sys.modules`` as it runs, as an import would: dataclasses look their
    module up there, and one script importing another then shares this copy.
    """
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_fixture_generator() -> ModuleType:
    """``scripts/make_fixture_store.py`` as a module."""
    return load_script("make_fixture_store")


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return path


def skopeo_inspect_config(archive: Path, skopeo: str = "skopeo") -> dict[str, Any]:
    """The image config as skopeo reads it from a docker-archive."""
    argv = [skopeo, "inspect", "--config", f"docker-archive:{archive}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return json.loads(result.stdout)


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


def closure_nar_size(entries: Iterable[Mapping[str, Any]]) -> int:
    return sum(entry["narSize"] for entry in entries)


def store_file_bytes(store_root: Path, store_paths: Iterable[str]) -> int:
    """The bytes of every regular file of the store paths, on disk."""
    return sum(
        st.st_size
        for _, _, st in _walk_store_paths(store_root, store_paths)
        if stat.S_ISREG(st.st_mode)
    )


def layer_file_bytes(archive: DockerArchive) -> int:
    """The bytes of every regular file the layers store (a hard link stores none)."""
    return sum(
        member.size for layer in archive.layers for member in layer_members(layer) if member.isreg()
    )


@dataclass(frozen=True)
class ReferenceImages:
    """The reference images that ``scripts/build_reference_images.sh`` built, with
    the stores and closures it generated beside them."""

    folder: Path
    images: dict[str, Path]  # by file stem: postgrest, simple-python-api, …

    def closure(self, stem: str) -> list[dict[str, Any]]:
        """A closure the script generated: postgrest, python-app, python-app-debug."""
        return json.loads((self.folder / f"{stem}-closure.json").read_text(encoding="utf-8"))

    def store_root(self, store: str) -> Path:
        """A generated store tree: postgrest or python-app."""
        return self.folder / "store" / store


def nixlayer_environment() -> dict[str, str]:
    """The environment in which a script's ``nixlayer`` is the one ``run_nixlayer`` runs,
    and its ``python`` the interpreter of the tests."""
    directories = [str(Path(sys.executable).parent)]
    command = nixlayer_command()
    if len(command) == 1:
        directories.insert(0, str(Path(command[0]).parent))
    path = os.pathsep.join([*directories, os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PYTHON": sys.executable}


@functools.cache
def build_reference_images(folder: Path) -> ReferenceImages:
    """Run ``scripts/build_reference_images.sh`` into ``folder`` once per session,
    whichever test module asks first; the images are only read afterwards."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_reference_images.sh"), str(folder)],
        env=nixlayer_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"build_reference_images.sh failed:\n{result.stderr}"
    images = [Path(line) for line in result.stdout.splitlines()]
    return ReferenceImages(folder, {image.name.removesuffix(".tar"): image for image in images})


def resolve_in(rootfs: Path, path: str, max_links: int = 40) -> Path:
    """Where ``path`` leads inside an unpacked image, following symlinks as the
    container sees them: absolute targets start at the image root, not the host's."""
    pending = list(PurePosixPath(path).parts[1:])
    inside = PurePosixPath("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            inside = inside.parent
            continue
        candidate = inside / part
        disk = rootfs / str(candidate).lstrip("/")
        if not disk.is_symlink():
            inside = candidate
            continue
        links += 1
        assert links <= max_links, f"{path}: more than {max_links} symlinks in {rootfs}"
        target = PurePosixPath(os.readlink(disk))
        if target.is_absolute():
            inside, pending = PurePosixPath("/"), [*target.parts[1:], *pending]
        else:
            pending = [*target.parts, *pending]
    return rootfs / str(inside).lstrip("/")


def tool_stdout(argv: Sequence[str | os.PathLike[str]], timeout: int = 300) -> str:
    """An external tool's stdout; a failure quoting what it said when it does not exit 0."""
    words = list(map(str, argv))
    result = subprocess.run(words, capture_output=True, text=True, check=False, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(words)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
    )
    return result.stdout


def copy_fixture_store(store: FixtureStore, folder: Path) -> FixtureStore:
    """A copy of the store tree in ``folder`` that a test may change (add a store path,
    delete one) without touching the session's fixture store."""
    shutil.copytree(store.root, folder, symlinks=True)
    return FixtureStore(folder, store.closure_file, store.entries)


def app_update(store: FixtureStore, folder: Path) -> Path:
    """A closure where only the app changed: a new app store path, same references.

    The new path is written into ``store`` (use a copy); the closure goes to
    ``folder``. Every other store path, and so every other layer, stays the same: what
    a rebuild may reuse and a registry need not receive again.
    """
    old_app = store.path("app-1.0")
    new_app = old_app.replace("app-1.0", "app-1.1")
    shutil.copytree(store.disk(old_app), store.disk(new_app), symlinks=True)
    (store.disk(new_app) / "CHANGED").write_text("new build")
    entries = []
    for entry in store.entries:
        entry = dict(entry)
        if entry["path"] == old_app:
            entry["path"] = new_app
            entry["references"] = [new_app if r == old_app else r for r in entry["references"]]
            entry.pop("narSize")
        entries.append(entry)
    closure = folder / "closure-1.1.json"
    closure.write_text(json.dumps(entries))
    return closure


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago; a daemon that
    loses the race exits, and its fixture starts it again on another port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET of ``url``, None when nothing answers; never via a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


class DaemonFailed(Exception):
    """A daemon exited or never became ready; the message ends with its log."""


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, timeout: float
) -> None:
    """Until ``ready()`` holds while the daemon still runs: a daemon that lost its port
    to another program exits, even if that program answers in its place."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise DaemonFailed(f"{process.args[0]} exited {process.returncode}:\n{_log_tail(log)}")
        if ready() and process.poll() is None:
            return
        if time.monotonic() > deadline:
            raise DaemonFailed(f"{process.args[0]} not ready after {timeout}s:\n{_log_tail(log)}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to this one PID, SIGKILL if it lingers; never a name or a group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@contextlib.contextmanager
def running_daemon(
    argv: Sequence[str | os.PathLike[str]],
    log: Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a daemon for the length of the ``with``, its output in ``log``.

    It is stopped by its PID on the way out whatever happened, a failing test or a
    daemon that never became ready (``DaemonFailed``) included. Its own session keeps
    a Ctrl-C meant for pytest from reaching it before the cleanup does.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(map(str, argv)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(process, ready, log, timeout)
        yield process
    finally:
        stop_process(process)


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder``, deepest first (the order to unmount them)."""
    prefix = os.path.realpath(folder)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            # the mount point is the fifth field, with spaces and the like octal-escaped
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + os.sep):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_daemon_state(folder: Path) -> None:
    """Unmount what a daemon left mounted under ``folder``, then remove the folder.

    The folder is kept when something stays mounted: removing it then would delete
    whatever the mount shows.
    """
    for point in mounts_under(folder):
        subprocess.run(["umount", "--lazy", str(point)], check=False, timeout=60)
    left = mounts_under(folder)
    assert not left, f"still mounted, so {folder} is kept: {left}"
    shutil.rmtree(folder)


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


# Nix: a small closure built by a real Nix, and nix-build of the repository's Nix files.

# Plain derivations with /bin/sh as builder (no nixpkgs needed).  Outputs mention
# each other so that Nix records references: app → left, right, config;
# left → base; right → base (a diamond); base → base (a self-reference).  The
# last command of every builder is `exit 0`: Nix 2.8 may kill a builder whose last
# command is an external program.
CLOSURE_NIX = r"""
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; set -e\n${script}\nexit 0" ];
  };
  base = mk "nixlayer-test-base-1.0" ''
    mkdir -p $out/lib $out/bin
    echo "base library; loads plugins from $out/lib" > $out/lib/libbase.so
    ln -s libbase.so $out/lib/libbase.so.1
    printf '#!/bin/sh\necho base\n' > $out/bin/base
    chmod 755 $out/bin/base
  '';
  left = mk "nixlayer-test-left-1.0" ''
    mkdir -p $out/lib
    echo "left; needs ${base}/lib/libbase.so" > $out/lib/libleft.so
  '';
  right = mk "nixlayer-test-right-1.0" ''
    mkdir -p $out/lib
    echo "right" > $out/lib/libright.so
    ln -s ${base}/lib/libbase.so $out/lib/libbase.so
  '';
  config = mk "nixlayer-test-config.json" ''
    echo '{"greeting": "hello"}' > $out
  '';
  app = mk "nixlayer-test-app-1.0" ''
    mkdir -p $out/bin $out/share/doc
    echo '#!/bin/sh' > $out/bin/app
    echo "exec ${left}/lib/libleft.so ${right}/lib/libright.so ${config}" >> $out/bin/app
    chmod 555 $out/bin/app
    ln -s ${right} $out/share/right
    mkdir $out/share/empty
    echo "café" > $out/share/doc/README-é
  '';
  graph = derivation {
    name = "nixlayer-test-references-graph";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    exportReferencesGraph = [ "closure" app ];
    args = [ "-c" "export PATH=/usr/bin:/bin; cp closure $out; exit 0" ];
  };
  # Nix 2.8 writes .attrs.json/.attrs.sh in the build directory; newer Nix names
  # them in $NIX_ATTRS_JSON_FILE/$NIX_ATTRS_SH_FILE.  $out is only in .attrs.sh.
  attrs = derivation {
    name = "nixlayer-test-structured-attrs";
    system = builtins.currentSystem;
    builder = "/bin/bash";
    __structuredAttrs = true;
    exportReferencesGraph.closure = [ app ];
    args = [ "-c" ''
      export PATH=/usr/bin:/bin
      source "''${NIX_ATTRS_SH_FILE:-.attrs.sh}"
      cp "''${NIX_ATTRS_JSON_FILE:-.attrs.json}" "''${outputs[out]}"
      exit 0
    '' ];
  };
in { inherit app graph attrs; }
"""


@dataclass(frozen=True)
class NixClosure:
    """The built app and the three descriptions of its closure, as files; ``expression``
    is the Nix file of CLOSURE_NIX, for other expressions to import."""

    app: str
    paths: list[str]
    path_info: Path
    attrs: Path
    references_graph: Path
    expression: Path


def nix_missing() -> str | None:
    """Why the Nix tests cannot run here, or None when they can."""
    missing = [name for name in ("nix-build", "nix-instantiate", "nix") if not shutil.which(name)]
    if not missing:
        return None
    return f"{', '.join(missing)} not on PATH: run scripts/install-test-deps.sh"


def run_nix(*argv: str | os.PathLike[str], timeout: int = 300) -> str:
    """A Nix command's stdout; fails the test with what Nix said when it does not exit 0."""
    argv = tuple(map(str, argv))
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return result.stdout


def nix_build(
    expression: Path, attributes: Sequence[str], out_link: Path, *options: str
) -> list[Path]:
    """``nix-build`` some attributes of a Nix file: their output paths, in order.

    The out-links (``out_link``, ``out_link-2``…) keep the outputs from garbage
    collection while the tests read them.
    """
    selected = [argument for attribute in attributes for argument in ("-A", attribute)]
    built = run_nix("nix-build", expression, *selected, "-o", out_link, *options)
    return [Path(line) for line in built.split()]


def build_closure(workdir: Path) -> NixClosure:
    """Build (or find in the store: the derivations are fixed) the test closure."""
    expression = workdir / "closure.nix"
    expression.write_text(CLOSURE_NIX, encoding="utf-8")
    app, graph, attrs = nix_build(expression, ["app", "graph", "attrs"], workdir / "result")
    path_info = workdir / "path-info.json"
    path_info.write_text(
        run_nix("nix", "path-info", "--json", "--recursive", "--closure-size", app),
        encoding="utf-8",
    )
    paths = sorted(entry["path"] for entry in json.loads(path_info.read_text(encoding="utf-8")))
    return NixClosure(str(app), paths, path_info, attrs, graph, expression)
