"""The images people actually ship, built by ``scripts/build_reference_images.sh`` with
nothing but nixlayer's CLI, and judged by skopeo, umoci and the layer tars:

- postgrest: a static server from scratch; only its closure, a config file and
  ``/bin/postgrest``; no shell; no byte stored twice.
- simple-python-api: a FastAPI app on a buildEnv-like Python environment linked into
  ``/bin``, its sources in ``/app``; and a debug variant with bash and coreutils.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.archives import (
    DockerArchive,
    docker_reference,
    layer_file,
    layer_file_bytes,
    layer_members,
    read_docker_archive,
    stored_twice,
)
from support.run import FIXTURES, load_script, run_nixlayer, run_ok, write_json
from support.stores import ReferenceImages, build_reference_images, closure_nar_size
from support.tools import Tools, skopeo_inspect_config, unpack_image
from support.trees import compare_store, resolve_in, store_file_bytes

REFERENCE = FIXTURES / "reference"
GENERATOR = load_script("make_reference_stores")
PATHS: dict[str, str] = GENERATOR.PATHS
POSTGREST = PATHS["postgrest-12.0.2"]
PYTHON = PATHS["python3-3.11.9"]
PYTHON_ENV = PATHS["python3-3.11.9-env"]
UVICORN = PATHS["python3.11-uvicorn-0.29.0"]
STARLETTE = PATHS["python3.11-starlette-0.37.2"]
FASTAPI = PATHS["python3.11-fastapi-0.110.1"]
BASH = PATHS["bash-5.2p26"]
COREUTILS = PATHS["coreutils-9.4"]

PYTHON_APP_CONFIG = {
    "Cmd": ["uvicorn", "main:app"],
    "Env": ["UVICORN_HOST=0.0.0.0", "UVICORN_PORT=5000"],
    "ExposedPorts": {"5000/tcp": {}},
    "WorkingDir": "/app",
    "Volumes": {"/app": {}},
}
ENV_PROGRAMS = ["python3", "python3.11", "uvicorn"]
TAR_BLOCK = 512


@dataclass(frozen=True)
class Reference:
    """What one reference image must be: its closure and store, name and config."""

    closure: str  # the closure file's stem
    store: str
    repo_tag: str  # NAME:TAG as given to --name
    config: dict[str, Any]
    host_files: tuple[Path, ...]  # what --add copies in


IMAGES = {
    "postgrest": Reference(
        "postgrest",
        "postgrest",
        "postgrest:latest",
        {"Cmd": ["/bin/postgrest"], "ExposedPorts": {"3000/tcp": {}}, "User": "1000"},
        (REFERENCE / "postgrest.conf",),
    ),
    "simple-python-api": Reference(
        "python-app",
        "python-app",
        "simple-python-api:latest",
        PYTHON_APP_CONFIG,
        tuple(sorted((REFERENCE / "app").iterdir())),
    ),
    "simple-python-api-debug": Reference(
        "python-app-debug",
        "python-app",
        "simple-python-api-debug:latest",
        PYTHON_APP_CONFIG,
        tuple(sorted((REFERENCE / "app").iterdir())),
    ),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ReferenceImages:
    return build_reference_images(tmp_path_factory.getbasetemp() / "reference-images")


@pytest.fixture(scope="module")
def archives(reference: ReferenceImages) -> dict[str, DockerArchive]:
    return {stem: read_docker_archive(path.read_bytes()) for stem, path in reference.images.items()}


@pytest.fixture(scope="module")
def rootfs(
    reference: ReferenceImages, tools: Tools, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each image unpacked by umoci, as a runtime would lay it out."""
    unpacked = {}
    for stem, image in reference.images.items():
        workdir = tmp_path_factory.mktemp(stem)
        unpacked[stem] = unpack_image(image, workdir, tools.skopeo, tools.umoci)
    return unpacked


def test_the_script_builds_every_reference_image(reference: ReferenceImages) -> None:
    assert sorted(reference.images) == sorted(IMAGES)
    assert all(image.is_file() for image in reference.images.values())


def test_committed_closures_match_generator(reference: ReferenceImages) -> None:
    """fixtures/reference/*-closure.json are what the generator makes now (rerun
    scripts/make_reference_stores.py if not)."""
    for stem in {ref.closure for ref in IMAGES.values()}:
        committed = (REFERENCE / f"{stem}-closure.json").read_text(encoding="utf-8")
        assert committed == GENERATOR.closure_json(reference.closure(stem)), stem


@pytest.mark.parametrize("stem", IMAGES)
def test_config_is_exactly_what_was_asked(
    stem: str, reference: ReferenceImages, archives: dict[str, DockerArchive], tools: Tools
) -> None:
    config = skopeo_inspect_config(reference.images[stem], tools.skopeo)
    assert config["config"] == IMAGES[stem].config
    assert config["os"] == "linux"
    assert archives[stem].manifest[0]["RepoTags"] == [docker_reference(IMAGES[stem].repo_tag)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _assert_host_copy(rootfs: Path, host: Path, dest: str) -> None:
    """A host file copied by --add: same bytes, 0644 (none of ours is executable)."""
    copy = rootfs / dest.lstrip("/")
    assert copy.is_file() and not copy.is_symlink(), dest
    assert copy.read_bytes() == host.read_bytes(), dest
    assert _mode(copy) == 0o644, f"{dest}: {_mode(copy):o}"


def _assert_links(rootfs: Path, folder: str, links: dict[str, str]) -> None:
    """``folder`` is a real 0755 directory holding exactly these symlinks."""
    assert _mode(rootfs / folder) == 0o755 and not (rootfs / folder).is_symlink()
    assert sorted(os.listdir(rootfs / folder)) == sorted(links)
    for name, target in links.items():
        assert os.readlink(rootfs / folder / name) == target, name


def _names_anywhere(rootfs: Path) -> set[str]:
    return {name for _, dirs, files in os.walk(rootfs) for name in dirs + files}


def test_postgrest_root(rootfs: dict[str, Path], reference: ReferenceImages) -> None:
    """Only bin/, etc/ and the store: the link, the config file, and no shell."""
    root = rootfs["postgrest"]
    assert sorted(os.listdir(root)) == ["bin", "etc", "nix"]
    _assert_links(root, "bin", {"postgrest": f"{POSTGREST}/bin/postgrest"})
    assert resolve_in(root, "/bin/postgrest") == root / POSTGREST.lstrip("/") / "bin/postgrest"
    assert os.listdir(root / "etc") == ["postgrest.conf"] and _mode(root / "etc") == 0o755
    _assert_host_copy(root, REFERENCE / "postgrest.conf", "/etc/postgrest.conf")
    assert not {"sh", "bash", "busybox"} & _names_anywhere(root)
    closure = [entry["path"] for entry in reference.closure("postgrest")]
    assert compare_store(root, reference.store_root("postgrest"), closure) == []


def _assert_app(root: Path) -> None:
    assert _mode(root / "app") == 0o755
    assert sorted(os.listdir(root / "app")) == ["main.py", "requirements.txt"]
    for name in ("main.py", "requirements.txt"):
        _assert_host_copy(root, REFERENCE / "app" / name, f"/app/{name}")


def test_python_app_root(rootfs: dict[str, Path], reference: ReferenceImages) -> None:
    """bin/ links into the environment, whose links lead on to the interpreter and to
    uvicorn's script; only bin/ is linked (--link-paths), so no lib/ at the root."""
    root = rootfs["simple-python-api"]
    assert sorted(os.listdir(root)) == ["app", "bin", "nix"]
    _assert_links(root, "bin", {name: f"{PYTHON_ENV}/bin/{name}" for name in ENV_PROGRAMS})
    uvicorn = resolve_in(root, "/bin/uvicorn")
    assert uvicorn == root / UVICORN.lstrip("/") / "bin/uvicorn"
    assert uvicorn.read_bytes().startswith(f"#!{PYTHON}/bin/python3.11\n".encode())
    assert resolve_in(root, "/bin/python3") == root / PYTHON.lstrip("/") / "bin/python3.11"
    _assert_app(root)
    closure = [entry["path"] for entry in reference.closure("python-app")]
    assert compare_store(root, reference.store_root("python-app"), closure) == []


def test_python_app_debug_root(rootfs: dict[str, Path], reference: ReferenceImages) -> None:
    """bin/ merges the three contents: the environment's programs, bash and coreutils."""
    root = rootfs["simple-python-api-debug"]
    assert sorted(os.listdir(root)) == ["app", "bin", "nix"]
    links = {name: f"{PYTHON_ENV}/bin/{name}" for name in ENV_PROGRAMS}
    links |= {name: f"{BASH}/bin/{name}" for name in ("bash", "sh")}
    links |= {
        name: f"{COREUTILS}/bin/{name}" for name in (*GENERATOR.COREUTILS_PROGRAMS, "coreutils")
    }
    _assert_links(root, "bin", links)
    assert resolve_in(root, "/bin/sh") == root / BASH.lstrip("/") / "bin/bash"
    assert resolve_in(root, "/bin/ls") == root / COREUTILS.lstrip("/") / "bin/coreutils"
    _assert_app(root)
    closure = [entry["path"] for entry in reference.closure("python-app-debug")]
    assert compare_store(root, reference.store_root("python-app"), closure) == []


@pytest.mark.parametrize("stem", IMAGES)
def test_no_file_is_stored_twice(stem: str, archives: dict[str, DockerArchive]) -> None:
    """Image efficiency 100 %: no file, link or byte in two layers, nothing deleted."""
    archive = archives[stem]
    assert stored_twice(archive) == {}
    for layer in archive.layers:
        names = [member.name for member in layer_members(layer)]
        assert not [name for name in names if os.path.basename(name).startswith(".wh.")]


@pytest.mark.parametrize("stem", IMAGES)
def test_every_byte_is_stored_once(
    stem: str, reference: ReferenceImages, archives: dict[str, DockerArchive]
) -> None:
    """The layers' files hold exactly the bytes of the closure's files and the host
    files added: nothing stored twice, nothing left out."""
    want = IMAGES[stem]
    closure = [entry["path"] for entry in reference.closure(want.closure)]
    store_bytes = store_file_bytes(reference.store_root(want.store), closure)
    host_bytes = sum(path.stat().st_size for path in want.host_files)
    assert layer_file_bytes(archives[stem]) == store_bytes + host_bytes


@pytest.mark.parametrize("stem", IMAGES)
def test_image_size_is_about_the_closure_size(
    stem: str, reference: ReferenceImages, archives: dict[str, DockerArchive]
) -> None:
    """The layers hold the closure's NAR bytes plus at most a tar header and padding a
    member (and each layer's end marker); the archive adds a header and padding a
    layer, the config and the manifest."""
    archive, want = archives[stem], IMAGES[stem]
    nar = closure_nar_size(reference.closure(want.closure))
    host = sum(path.stat().st_size for path in want.host_files)
    layer_bytes = sum(len(layer) for layer in archive.layers)
    members = sum(len(layer_members(layer)) for layer in archive.layers)
    assert nar <= layer_bytes <= nar + host + 2 * TAR_BLOCK * (members + len(archive.layers))
    metadata = len(archive.config_bytes) + len(json.dumps(archive.manifest))
    image_size = reference.images[stem].stat().st_size
    assert (
        layer_bytes
        < image_size
        <= layer_bytes + metadata + 2 * TAR_BLOCK * (len(archive.layers) + 4)
    )


def _layer(*members: tuple[str, bytes | None]) -> bytes:
    """A layer tar of directories (content None) and files."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content or b""))
    return data.getvalue()


def test_stored_twice_catches_a_repeated_file_not_a_shared_directory() -> None:
    """The efficiency check itself can fail."""
    shared = ("nix", None)
    layers = (
        _layer(shared, ("nix/a", b"x"), ("etc", None)),
        _layer(shared, ("nix/a", b"x"), ("etc", b"not a directory")),
        _layer(shared, ("nix/b", b"y")),
    )
    archive = DockerArchive((), [], "", b"", layers)
    assert stored_twice(archive) == {"nix/a": [0, 1], "etc": [1]}


def test_store_layers_then_one_customisation_layer(
    archives: dict[str, DockerArchive], reference: ReferenceImages
) -> None:
    """A layer a store path (the closures are small), then the customisation layer:
    its entries sorted, owned 0:0, stamped like the store layers."""
    archive = archives["postgrest"]
    assert len(archive.layers) == len(reference.closure("postgrest")) + 1
    store_mtime = layer_members(archive.layers[0])[0].mtime
    top = layer_members(archive.layers[-1])
    assert [(m.name, m.type, m.mode, m.linkname) for m in top] == [
        ("bin", tarfile.DIRTYPE, 0o755, ""),
        ("bin/postgrest", tarfile.SYMTYPE, 0o777, f"{POSTGREST}/bin/postgrest"),
        ("etc", tarfile.DIRTYPE, 0o755, ""),
        ("etc/postgrest.conf", tarfile.REGTYPE, 0o644, ""),
    ]
    assert {(m.uid, m.gid, m.mtime) for m in top} == {(0, 0, store_mtime)}


def _build(reference: ReferenceImages, out: Path, closure: str, *flags: str) -> DockerArchive:
    """``nixlayer from-closure`` on a reference closure and its store."""
    store = "postgrest" if closure == "postgrest" else "python-app"
    closure_file = reference.folder / f"{closure}-closure.json"
    root = reference.store_root(store)
    run_ok("from-closure", closure_file, "--store-root", root, "-o", out, *flags, cwd=out.parent)
    return read_docker_archive(out.read_bytes())


def test_no_customisation_means_no_extra_layer(reference: ReferenceImages, tmp_path: Path) -> None:
    """Run settings alone (--cmd, --user…) go to the config, not into a layer."""
    archive = _build(
        reference, tmp_path / "i.tar", "postgrest", "--cmd", "/bin/postgrest", "--user", "1000"
    )
    assert len(archive.layers) == len(reference.closure("postgrest"))
    assert archive.config["config"] == {"Cmd": ["/bin/postgrest"], "User": "1000"}


def _host_tree(tmp: Path) -> Path:
    """Host files with modes on disk that --add must not keep (except the exec bit)."""
    host = tmp / "host"
    (host / "site" / "sub").mkdir(parents=True)
    (host / "site" / "index.html").write_bytes(b"<h1>hi</h1>\n")
    (host / "site" / "sub" / "x.css").write_bytes(b"h1 {}\n")
    (host / "run.sh").write_bytes(b"#!/bin/postgrest\n")
    (host / "secret").write_bytes(b"password\n")
    for path, mode in ((host / "run.sh", 0o700), (host / "secret", 0o600), (host / "site", 0o700)):
        path.chmod(mode)
    return host


def test_add_mkdir_and_symlink(reference: ReferenceImages, tmp_path: Path) -> None:
    host = _host_tree(tmp_path)
    archive = _build(
        reference,
        tmp_path / "i.tar",
        "postgrest",
        *("--contents", POSTGREST, "--link-paths", "/bin"),
        *("--add", f"{host / 'run.sh'}:/usr/local/bin/run.sh"),
        *("--add", f"{host / 'secret'}:/etc/secret:0400"),
        *("--add", f"{host / 'site'}:/srv/www"),
        *("--mkdir", "/var/lib/postgrest:0700:1000:1000", "--mkdir", "/tmp:1777"),
        *("--symlink", "/usr/bin/postgrest:/bin/postgrest"),
    )
    top = layer_members(archive.layers[-1])
    directory, link, file = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.REGTYPE
    assert [(m.name, m.type, m.mode, m.uid, m.gid, m.linkname) for m in top] == [
        ("bin", directory, 0o755, 0, 0, ""),
        ("bin/postgrest", link, 0o777, 0, 0, f"{POSTGREST}/bin/postgrest"),
        ("etc", directory, 0o755, 0, 0, ""),
        ("etc/secret", file, 0o400, 0, 0, ""),
        ("srv", directory, 0o755, 0, 0, ""),
        ("srv/www", directory, 0o755, 0, 0, ""),
        ("srv/www/index.html", file, 0o644, 0, 0, ""),
        ("srv/www/sub", directory, 0o755, 0, 0, ""),
        ("srv/www/sub/x.css", file, 0o644, 0, 0, ""),
        ("tmp", directory, 0o1777, 0, 0, ""),
        ("usr", directory, 0o755, 0, 0, ""),
        ("usr/bin", directory, 0o755, 0, 0, ""),
        ("usr/bin/postgrest", link, 0o777, 0, 0, "/bin/postgrest"),
        ("usr/local", directory, 0o755, 0, 0, ""),
        ("usr/local/bin", directory, 0o755, 0, 0, ""),
        ("usr/local/bin/run.sh", file, 0o755, 0, 0, ""),
        ("var", directory, 0o755, 0, 0, ""),
        ("var/lib", directory, 0o755, 0, 0, ""),
        ("var/lib/postgrest", directory, 0o700, 1000, 1000, ""),
    ]
    (secret,) = [m for m in top if m.name == "etc/secret"]
    assert layer_file(archive.layers[-1], secret) == b"password\n"


def test_from_base_puts_our_layers_on_top(
    reference: ReferenceImages, archives: dict[str, DockerArchive], tmp_path: Path
) -> None:
    base = archives["postgrest"]
    archive = _build(
        reference,
        tmp_path / "i.tar",
        "python-app",
        *("--from", str(reference.images["postgrest"]), "--cmd", '["uvicorn"]'),
    )
    diff_ids = archive.config["rootfs"]["diff_ids"]
    assert diff_ids[: len(base.layers)] == base.config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(base.layers) + len(reference.closure("python-app"))


# --- bad inputs ----------------------------------------------------------------------

BadCase = Callable[[ReferenceImages, Path], list[str]]
CONF = str(REFERENCE / "postgrest.conf")


def _postgrest(reference: ReferenceImages, *flags: str) -> list[str]:
    closure = str(reference.folder / "postgrest-closure.json")
    return [closure, "--store-root", str(reference.store_root("postgrest")), *flags]


def _flags(*flags: str) -> BadCase:
    """A bad case that is the postgrest build plus these flags."""
    return lambda reference, tmp: _postgrest(reference, *flags)


def _config_file(content: str) -> BadCase:
    def case(reference: ReferenceImages, tmp: Path) -> list[str]:
        (tmp / "config.json").write_text(content, encoding="utf-8")
        return _postgrest(reference, "--config", str(tmp / "config.json"))

    return case


def _contents_clash(reference: ReferenceImages, tmp: Path) -> list[str]:
    """Two packages' nix-support/propagated-build-inputs, different files at one place
    (why nixpkgs has pathsToLink)."""
    closure = str(reference.folder / "python-app-closure.json")
    store = str(reference.store_root("python-app"))
    return [closure, "--store-root", store, "--contents", STARLETTE, "--contents", FASTAPI]


def _from_folder_not_an_image(reference: ReferenceImages, tmp: Path) -> list[str]:
    (tmp / "not-an-image").mkdir()
    write_json(tmp / "not-an-image" / "index.json", {"hello": "world"})
    return _postgrest(reference, "--from", str(tmp / "not-an-image"))


BAD_CASES: dict[str, BadCase] = {
    "add-source-missing": _flags("--add", f"{CONF}.missing:/etc/postgrest.conf"),
    "add-dest-relative": _flags("--add", f"{CONF}:etc/postgrest.conf"),
    "add-dest-dotdot": _flags("--add", f"{CONF}:/etc/../postgrest.conf"),
    "mkdir-relative": _flags("--mkdir", "var/lib/postgrest"),
    "symlink-dest-dotdot": _flags("--symlink", "/usr/../bin/sh:/bin/postgrest"),
    "env-without-equals": _flags("--env", "UVICORN_HOST"),
    "env-empty-key": _flags("--env", "=0.0.0.0"),
    "expose-not-a-port": _flags("--expose", "http"),
    "expose-bad-protocol": _flags("--expose", "3000/icmp"),
    "expose-port-too-big": _flags("--expose", "70000"),
    "config-not-json": _config_file('{"Cmd": ['),
    "config-not-an-object": _config_file('["/bin/postgrest"]'),
    "config-missing": _flags("--config", f"{CONF}.missing.json"),
    "contents-clash": _contents_clash,
    "contents-not-in-closure": _flags("--contents", PYTHON_ENV),
    "arch-unknown": _flags("--arch", "mips99"),
    "from-a-text-file": _flags("--from", CONF),
    "from-a-folder-not-an-image": _from_folder_not_an_image,
}


BAD_CASES.update(
    {
        "add-a-file-as-the-root": _flags("--add", f"{CONF}:/"),
        "add-under-an-added-file": _flags("--add", f"{CONF}:/etc/x", "--add", f"{CONF}:/etc/x/y"),
        "tag-invalid": _flags("--tag", "has space"),
    }
)
BAD_CASE_PARAMS = [pytest.param(case, id=name) for name, case in BAD_CASES.items()]


@pytest.mark.parametrize("case", BAD_CASE_PARAMS)
def test_bad_input_is_one_error_line_and_no_file(
    case: BadCase, reference: ReferenceImages, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run_nixlayer("from-closure", *case(reference, tmp_path), "-o", "image.tar", cwd=out)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("nixlayer: error: "), stderr
    assert os.listdir(out) == [], "an output or temporary file was left behind"


def test_contents_clash_names_both_files(reference: ReferenceImages, tmp_path: Path) -> None:
    result = run_nixlayer("from-closure", *_contents_clash(reference, tmp_path), cwd=tmp_path)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    for named in (STARLETTE, FASTAPI, "/nix-support/propagated-build-inputs"):
        assert named in stderr, stderr


def test_help_shows_the_flags_the_reference_build_uses() -> None:
    result = run_nixlayer("from-closure", "--help")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    for flag in ("--contents", "--link-paths", "--add", "--cmd", "--env", "--expose", "--volume"):
        assert flag in result.stdout.decode(), flag
