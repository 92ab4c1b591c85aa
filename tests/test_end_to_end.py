"""End to end: the fixture store's closure through the installed CLI to an image that
skopeo accepts and umoci unpacks into exactly the store, byte for byte."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.archives import (
    DockerArchive,
    layer_file,
    layer_members,
    read_docker_archive,
    sha256_hex,
)
from support.run import FIXTURES, run_nixlayer, run_ok, write_json
from support.stores import FixtureStore, load_fixture_generator
from support.tools import Tools, unpack_image
from support.trees import compare_tree, store_entry_names

ZLIB_LIB = "lib/libz.so.1"  # hard-linked to lib/libz.so.1.3.1, same store path
ZLIB_LIB_TWIN = "lib/libz.so.1.3.1"
LICENSE = "share/licenses/zlib/LICENSE"  # one inode in zlib and openssl


def build_image(
    store: FixtureStore, out: Path, *options: str, cwd: Path | None = None, **kwargs: Any
) -> bytes:
    """``nixlayer from-closure`` on the fixture store; returns the archive's bytes.

    ``out`` may be relative to ``cwd``; ``kwargs`` go to ``run_nixlayer`` (env, umask).
    """
    args = ("from-closure", store.closure_file, "--store-root", store.root, "-o", out)
    run_ok(*args, *options, cwd=cwd, **kwargs)
    return (cwd / out if cwd else out).read_bytes()


def make_plan(store: FixtureStore, *options: str) -> dict[str, Any]:
    result = run_ok("plan", store.closure_file, "--store-root", store.root, "-o", "-", *options)
    return json.loads(result.stdout)


def layer_store_paths(layer: bytes) -> list[str]:
    """The store paths a layer tar holds, from its ``nix/store/<base>`` entries."""
    names = [m.name for m in layer_members(layer)]
    return sorted("/" + n for n in names if n.count("/") == 2 and n.startswith("nix/store/"))


def member_named(layer: bytes, name: str) -> tarfile.TarInfo:
    (found,) = [m for m in layer_members(layer) if m.name == name]
    return found


def layer_holding(archive: DockerArchive, store_path: str) -> bytes:
    (found,) = [layer for layer in archive.layers if store_path in layer_store_paths(layer)]
    return found


@pytest.fixture(scope="module")
def default_image(fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The image with every option at its default, built once for the module."""
    return build_image(fixture_store, tmp_path_factory.mktemp("default") / "image.tar")


@pytest.fixture(scope="module")
def default_archive(default_image: bytes) -> DockerArchive:
    return read_docker_archive(default_image)


def test_committed_closure_matches_generator(fixture_store: FixtureStore) -> None:
    """fixtures/store-closure.json is what the generator makes now (rerun it if not)."""
    committed = json.loads((FIXTURES / "store-closure.json").read_text(encoding="utf-8"))
    assert committed == fixture_store.entries


def test_image_unpacks_to_the_store(
    default_image: bytes, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(default_image)
    rootfs = unpack_image(archive, tmp_path, tools.skopeo, tools.umoci)
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []
    zlib = rootfs / fixture_store.path("zlib-1.3.1").lstrip("/")
    assert not os.path.samestat(os.stat(zlib / ZLIB_LIB), os.stat(zlib / ZLIB_LIB_TWIN))


def test_compare_tree_catches_differences(
    default_image: bytes, fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """compare_tree itself can fail: content, mode, symlink target, a missing and an
    extra entry are each reported."""
    if os.geteuid() != 0:
        pytest.skip("editing the read-only unpacked tree needs root")
    archive = tmp_path / "image.tar"
    archive.write_bytes(default_image)
    rootfs = unpack_image(archive, tmp_path, tools.skopeo, tools.umoci)

    def at(name: str, rel: str) -> Path:
        return rootfs / fixture_store.path(name).lstrip("/") / rel

    at("glibc-2.38-27", "lib/libc.so.6").write_bytes(b"changed")
    at("curl-8.6.0", "bin/curl").chmod(0o755)
    at("zlib-1.3.1", "lib/libz.so").unlink()
    at("zlib-1.3.1", "lib/libz.so").symlink_to("elsewhere")
    at("openssl-3.0.13", "etc/ssl.cnf").unlink()
    at("app-1.0", "share/app/extra").write_bytes(b"")
    tampered = ["libc.so.6", "bin/curl", "libz.so", "ssl.cnf", "share/app/extra"]
    problems = compare_tree(rootfs, fixture_store.root, fixture_store.paths)
    assert len(problems) == len(tampered), problems
    for name in tampered:
        assert any(f"{name}:" in problem for problem in problems), (name, problems)


def _touch_everything(root: Path, when: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)


def test_reproducible_across_location_cwd_umask_tz_and_mtimes(
    default_image: bytes, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    """Nothing of the environment, the store's location on disk or file times
    reaches the bytes: a second copy of the store elsewhere, touched, gives the same."""
    previous_umask = os.umask(0o077)  # the generator must not depend on it either
    try:
        other = load_fixture_generator().make_fixture_store(tmp_path / "elsewhere")
    finally:
        os.umask(previous_umask)
    assert other == fixture_store.entries
    _touch_everything(tmp_path / "elsewhere", 1_234_567_890)
    store = FixtureStore(tmp_path / "elsewhere", fixture_store.closure_file, other)
    env = {**os.environ, "TZ": "Pacific/Chatham", "LC_ALL": "C"}
    (tmp_path / "cwd").mkdir()
    again = build_image(store, Path("relative.tar"), cwd=tmp_path / "cwd", env=env, umask=0o077)
    assert sha256_hex(again) == sha256_hex(default_image)


def test_stdout_streams_the_same_bytes(default_image: bytes, fixture_store: FixtureStore) -> None:
    result = run_ok(
        "from-closure", fixture_store.closure_file, "--store-root", fixture_store.root, "-o", "-"
    )
    assert sha256_hex(result.stdout) == sha256_hex(default_image)


def test_archive_layout_manifest_and_config(
    default_image: bytes, default_archive: DockerArchive
) -> None:
    archive = default_archive
    assert archive.members[-1] == "manifest.json"
    assert archive.members[-2] == archive.config_name
    assert archive.config_name == sha256_hex(archive.config_bytes) + ".json"
    assert list(archive.members[:-2]) == archive.manifest[0]["Layers"]
    config = archive.config
    assert config["os"] == "linux"
    assert config["rootfs"]["type"] == "layers"
    assert config["rootfs"]["diff_ids"] == [
        f"sha256:{sha256_hex(layer)}" for layer in archive.layers
    ]
    assert len(config["history"]) == len(archive.layers)
    assert default_image.endswith(bytes(1024))


def test_plan_covers_every_path_once(
    fixture_store: FixtureStore, default_archive: DockerArchive, tmp_path: Path
) -> None:
    plan = make_plan(fixture_store)
    assert (plan["version"], plan["store_dir"], plan["strategy"]) == (1, "/nix/store", "cochange")
    listed = [path for layer in plan["layers"] for path in layer["paths"]]
    assert sorted(listed) == sorted(fixture_store.paths)
    sizes = {entry["path"]: entry["narSize"] for entry in fixture_store.entries}
    for layer in plan["layers"]:
        assert layer["paths"] == sorted(layer["paths"])
        assert layer["nar_size"] == sum(sizes[p] for p in layer["paths"])
    # The image's layers are the plan's, in the same order.
    assert [layer_store_paths(layer) for layer in default_archive.layers] == [
        layer["paths"] for layer in plan["layers"]
    ]
    run_ok(
        "plan",
        fixture_store.closure_file,
        "--store-root",
        fixture_store.root,
        "-o",
        tmp_path / "p.json",
    )
    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8")) == plan


def test_max_layers_three(fixture_store: FixtureStore, tmp_path: Path) -> None:
    plan = make_plan(fixture_store, "--max-layers", "3")
    assert len(plan["layers"]) == 3
    archive = read_docker_archive(
        build_image(fixture_store, tmp_path / "i.tar", "--max-layers", "3")
    )
    assert [layer_store_paths(layer) for layer in archive.layers] == [
        layer["paths"] for layer in plan["layers"]
    ]
    assert len(archive.config["history"]) == 3


def test_roots_are_recorded_and_the_closure_stays_whole(fixture_store: FixtureStore) -> None:
    """``--root`` says what the image is for (it steers the layering); every path of
    the closure is still placed exactly once."""
    roots = sorted([fixture_store.path("curl-8.6.0"), fixture_store.path("app-config.json")])
    plan = make_plan(fixture_store, "--root", roots[1], "--root", roots[0])
    assert plan["roots"] == roots
    listed = [path for layer in plan["layers"] for path in layer["paths"]]
    assert sorted(listed) == sorted(fixture_store.paths)


def test_name_and_arch(fixture_store: FixtureStore, tmp_path: Path) -> None:
    data = build_image(
        fixture_store, tmp_path / "i.tar", "--name", "example/app:1.0", "--arch", "arm64"
    )
    archive = read_docker_archive(data)
    assert archive.manifest[0]["RepoTags"] == ["docker.io/example/app:1.0"]  # spelt in full
    assert archive.config["architecture"] == "arm64"


def _bytewise(name: str) -> bytes:
    return name.encode("utf-8")


def test_layer_tar_entries(default_archive: DockerArchive, fixture_store: FixtureStore) -> None:
    """nix/ and nix/store/ first (0755), then every entry sorted bytewise, canonical
    modes, owner 0:0, mtime 1, and exactly the entries of the layer's store paths."""
    canonical = {
        tarfile.DIRTYPE: {0o555},
        tarfile.SYMTYPE: {0o777},
        tarfile.REGTYPE: {0o444, 0o555},
    }
    for layer in default_archive.layers:
        members = layer_members(layer)
        assert [(m.name, m.type, m.mode) for m in members[:2]] == [
            ("nix", tarfile.DIRTYPE, 0o755),
            ("nix/store", tarfile.DIRTYPE, 0o755),
        ]
        names = [m.name for m in members[2:]]
        assert names == sorted(names, key=_bytewise)
        assert len(names) == len(set(names))
        assert set(names) == store_entry_names(fixture_store.root, layer_store_paths(layer))
        for m in members:
            assert (m.uid, m.gid, m.mtime) == (0, 0, 1), m.name
        for m in members[2:]:
            assert m.mode in canonical.get(m.type, {m.mode}), f"{m.name}: {m.mode:o}"


def test_hardlink_inside_a_layer_is_two_files(
    default_archive: DockerArchive, fixture_store: FixtureStore
) -> None:
    """Each name holds the bytes in full, as in the NAR: no tar hard link."""
    zlib = fixture_store.path("zlib-1.3.1").lstrip("/")
    layer = layer_holding(default_archive, "/" + zlib)
    content = (fixture_store.root / zlib / ZLIB_LIB).read_bytes()
    for name in (ZLIB_LIB, ZLIB_LIB_TWIN):
        member = member_named(layer, f"{zlib}/{name}")
        assert member.type == tarfile.REGTYPE and layer_file(layer, member) == content


def test_hardlink_across_layers_is_two_files(
    default_archive: DockerArchive, fixture_store: FixtureStore
) -> None:
    content = (fixture_store.disk(fixture_store.path("zlib-1.3.1")) / LICENSE).read_bytes()
    for name in ("zlib-1.3.1", "openssl-3.0.13"):
        store_path = fixture_store.path(name)
        layer = layer_holding(default_archive, store_path)
        member = member_named(layer, f"{store_path.lstrip('/')}/{LICENSE}")
        assert member.type == tarfile.REGTYPE
        assert layer_file(layer, member) == content
    assert layer_holding(default_archive, fixture_store.path("zlib-1.3.1")) != layer_holding(
        default_archive, fixture_store.path("openssl-3.0.13")
    ), "the fixture needs zlib and openssl in different layers by default"


def test_hardlink_across_store_paths_in_one_layer(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """With a single layer the shared inode is still two files, and unpacks as two."""
    (tmp_path / "unpack").mkdir()
    archive_path = tmp_path / "one.tar"
    archive = read_docker_archive(build_image(fixture_store, archive_path, "--max-layers", "1"))
    (layer,) = archive.layers
    names = sorted(
        f"{fixture_store.path(n).lstrip('/')}/{LICENSE}" for n in ("zlib-1.3.1", "openssl-3.0.13")
    )
    first, second = (member_named(layer, name) for name in names)
    assert first.type == second.type == tarfile.REGTYPE
    rootfs = unpack_image(archive_path, tmp_path / "unpack", tools.skopeo, tools.umoci)
    assert compare_tree(rootfs, fixture_store.root, fixture_store.paths) == []
    assert not os.path.samestat(os.stat(rootfs / first.name), os.stat(rootfs / second.name))


# --- bad inputs -------------------------------------------------------------------

BadCase = Callable[[FixtureStore, Path], list[str]]
GHOST = "/nix/store/" + "0" * 32 + "-ghost-1.0"


def _closure_args(store: FixtureStore, closure: Path, root: Path | None = None) -> list[str]:
    return [str(closure), "--store-root", str(root or store.root)]


def _dangling_reference(store: FixtureStore, tmp: Path) -> list[str]:
    entries = [e for e in store.entries if not e["path"].endswith("-glibc-2.38-27")]
    return _closure_args(store, write_json(tmp / "c.json", entries))


def _missing_on_disk(store: FixtureStore, tmp: Path) -> list[str]:
    ghost = {"path": GHOST, "narSize": 120, "references": [], "closureSize": 120}
    return _closure_args(store, write_json(tmp / "c.json", [*store.entries, ghost]))


def _fifo_in_store(store: FixtureStore, tmp: Path) -> list[str]:
    root = tmp / "fifo-store"
    (root / GHOST.lstrip("/")).mkdir(parents=True)
    (root / GHOST.lstrip("/") / "a-file").write_bytes(b"data\n")
    os.mkfifo(root / GHOST.lstrip("/") / "pipe")
    entry = {"path": GHOST, "narSize": 400, "references": [], "closureSize": 400}
    return _closure_args(store, write_json(tmp / "c.json", [entry]), root)


def _outside_store_dir(store: FixtureStore, tmp: Path) -> list[str]:
    outside = {"path": "/tmp/" + "0" * 32 + "-evil", "narSize": 120, "references": []}
    return _closure_args(store, write_json(tmp / "c.json", [*store.entries, outside]))


def _zero_layers(store: FixtureStore, tmp: Path) -> list[str]:
    return [*_closure_args(store, store.closure_file), "--max-layers", "0"]


def _mtime(value: int) -> BadCase:
    def case(store: FixtureStore, tmp: Path) -> list[str]:
        return [*_closure_args(store, store.closure_file), "--mtime", str(value)]

    return case


def _no_closure_file(store: FixtureStore, tmp: Path) -> list[str]:
    return _closure_args(store, tmp / "does-not-exist.json")


def _not_json(store: FixtureStore, tmp: Path) -> list[str]:
    (tmp / "c.json").write_text('[{"path": ', encoding="utf-8")
    return _closure_args(store, tmp / "c.json")


def _root_not_in_closure(store: FixtureStore, tmp: Path) -> list[str]:
    return [*_closure_args(store, store.closure_file), "--root", GHOST]


BAD_CASES: dict[str, BadCase] = {
    "dangling-reference": _dangling_reference,
    "missing-on-disk": _missing_on_disk,
    "fifo-in-store": _fifo_in_store,
    "outside-store-dir": _outside_store_dir,
    "zero-layers": _zero_layers,
    "mtime-negative": _mtime(-1),
    "mtime-past-the-tar-field": _mtime(2**33),
    "no-closure-file": _no_closure_file,
    "not-json": _not_json,
    "root-not-in-closure": _root_not_in_closure,
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_input_is_one_error_line_and_no_file(
    case: BadCase, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = case(fixture_store, tmp_path)
    result = run_nixlayer("from-closure", *args, "-o", out / "image.tar", cwd=out)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("nixlayer: error: "), stderr
    assert "Traceback" not in stderr
    assert os.listdir(out) == [], "an output or temporary file was left behind"


def test_special_file_check_names_the_file(fixture_store: FixtureStore, tmp_path: Path) -> None:
    """The FIFO error points at the FIFO, so the user knows what to remove."""
    args = _fifo_in_store(fixture_store, tmp_path)
    result = run_nixlayer("from-closure", *args, "-o", tmp_path / "image.tar")
    assert result.returncode == 2
    assert "pipe" in result.stderr.decode(errors="replace")
