"""Helpers shared by the end-to-end tests: run nixlayer, and read its output the way
real consumers do (skopeo, umoci) or byte by byte (tarfile).

The checks deliberately avoid nixlayer's own modules: an image is judged by what
independent tools and an independent reading of the store say it should hold.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Mapping, Sequence
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
