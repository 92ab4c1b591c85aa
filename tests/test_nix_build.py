"""nixlayer inside Nix builds, with a real Nix, through the repository's Nix functions.

nix/tests/images.nix evaluates the core of the Nix functions (nix/build-image.nix)
without nixpkgs: builtins.derivation running bash, over the closure of CLOSURE_NIX,
with the nixlayer of this checkout copied into the store. An image built inside Nix
must be, byte for byte, the one nixlayer builds outside with the same settings, and
skopeo and umoci must read it back to the store's contents.

Nix caches each derivation by its inputs, nixlayer's code among them: a second run
builds nothing, and a change to nixlayer builds the images again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.archives import sha256_hex
from support.nix import NixClosure, build_closure, nix_missing, run_nix
from support.run import REPO, run_ok
from support.tools import Tools, skopeo_inspect_config, umoci_unpack, unpack_image
from support.trees import compare_store, compare_tree

pytestmark = pytest.mark.skipif(nix_missing() is not None, reason=nix_missing() or "")

NIX = REPO / "nix"
IMAGES_NIX = NIX / "tests" / "images.nix"
WIRING_NIX = NIX / "tests" / "wiring.nix"
NIX_FILES = [REPO / "default.nix", REPO / "flake.nix", *sorted(NIX.rglob("*.nix"))]
# What the module builds up front: each attribute of images.nix, in one nix-build.
BUILT = (
    "image",
    "image.plan",
    "stream",
    "gzip",
    "textGraph",
    "custom",
    "custom.plan",
    "custom.attrsFile",
)
NAME = "nixlayer-test:v1"


def images_arguments(closure: NixClosure) -> tuple[str, ...]:
    """What images.nix is called with: the closure, and this Python to run nixlayer."""
    return ("--arg", "closure", str(closure.expression), "--argstr", "python", sys.executable)


def instantiate(closure: NixClosure, attributes: list[str], *options: str) -> list[str]:
    """The derivations of some attributes of images.nix, in order."""
    selected = [argument for attribute in attributes for argument in ("-A", attribute)]
    arguments = images_arguments(closure)
    return run_nix("nix-instantiate", IMAGES_NIX, *arguments, *options, *selected).split()


def realise(drvs: list[str], out_link: Path) -> list[Path]:
    """Build derivations (or find them built): their outputs, kept alive by out-links."""
    return [Path(line) for line in run_nix("nix-build", *drvs, "-o", out_link).split()]


@dataclass(frozen=True)
class NixImages:
    """The test closure, and the derivations of images.nix's attributes (see BUILT)
    with their outputs. The derivations are instantiated once, so that builds, checks
    and logs refer to them even if nixlayer's code changes while the tests run."""

    closure: NixClosure
    workdir: Path
    drvs: dict[str, str]
    outputs: dict[str, Path]

    def evaluate(self, attribute: str) -> Any:
        """An attribute of images.nix, evaluated (no build) as JSON."""
        command = ("nix-instantiate", "--eval", "--strict", "--json", IMAGES_NIX)
        return json.loads(run_nix(*command, *images_arguments(self.closure), "-A", attribute))


def build_log(drv: str) -> str:
    """The build log Nix kept of a derivation."""
    return run_nix("nix-store", "--read-log", drv)


@pytest.fixture(scope="module")
def nix_images(tmp_path_factory: pytest.TempPathFactory) -> NixImages:
    workdir = tmp_path_factory.mktemp("nix-build")
    closure = build_closure(workdir)
    drvs = instantiate(closure, list(BUILT))
    outputs = realise(drvs, workdir / "result")
    return NixImages(
        closure,
        workdir,
        dict(zip(BUILT, drvs, strict=True)),
        dict(zip(BUILT, outputs, strict=True)),
    )


def clean_environment() -> dict[str, str]:
    """This process's environment, without what would change nixlayer's defaults."""
    return {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "NIX_BUILD_TOP")}


def build_outside(*args: str | os.PathLike[str]) -> None:
    """``nixlayer from-closure`` as a user runs it outside Nix, the cache left alone."""
    run_ok("from-closure", *args, "--no-cache", "--quiet", env=clean_environment())


def app_flags(closure: NixClosure) -> list[str]:
    """The flags for what images.nix passes as the config object."""
    return [
        "--name",
        NAME,
        "--cmd",
        json.dumps([f"{closure.app}/bin/app"]),
        "--env",
        "GREETING=hello",
    ]


@pytest.fixture(scope="module")
def outside_image(nix_images: NixImages) -> Path:
    """The image built outside Nix, from `nix path-info` output and flags: what the
    `image` of images.nix must be."""
    out = nix_images.workdir / "outside.tar"
    build_outside(nix_images.closure.path_info, *app_flags(nix_images.closure), "-o", out)
    return out


def plan_outside(closure: NixClosure, *args: str) -> dict[str, Any]:
    return json.loads(run_ok("plan", closure.path_info, *args, "-o", "-", "-q").stdout)


def read_plan(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under a folder by its relative name, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def evaluate_wiring() -> dict[str, Any]:
    """nix/tests/wiring.nix: default.nix, flake.nix and the overlay over a fake nixpkgs."""
    return json.loads(run_nix("nix-instantiate", "--eval", "--strict", "--json", WIRING_NIX))


def skopeo_copy_to_oci_layout(layout: Path, ref: str, dest: Path, tools: Tools) -> None:
    """skopeo copies an image out of an OCI layout (as `dest:t`), checking every blob."""
    argv = [tools.skopeo, "--insecure-policy", "copy", f"oci:{layout}:{ref}", f"oci:{dest}:t"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"


# Calls after which a path has been written to: (call, which quoted arguments are paths
# written). open and openat write only with a write flag; symlink's target is a string.
_WRITES = {
    "creat": (0,),
    "mkdir": (0,),
    "mkdirat": (0,),
    "rename": (0, 1),
    "renameat": (0, 1),
    "renameat2": (0, 1),
    "unlink": (0,),
    "unlinkat": (0,),
    "rmdir": (0,),
    "symlink": (1,),
    "symlinkat": (1,),
    "link": (1,),
    "linkat": (1,),
    "chmod": (0,),
    "fchmodat": (0,),
    "truncate": (0,),
}
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC")
_CALL = re.compile(r"^\d+\s+(?P<call>\w+)\((?P<args>.*)\)\s+= ")
# A path argument: a dirfd (or AT_FDCWD) that -y decorates with its folder, then a
# name; or a plain string.
_PATH = re.compile(
    r'(?:(?:-?\d+|AT_FDCWD)<(?P<dir>[^>]*)>|AT_FDCWD), "(?P<name>[^"]*)"|"(?P<path>[^"]*)"'
)
# tqdm makes a multiprocessing lock even when disabled: a POSIX semaphore, created
# and unlinked in /dev/shm (the sandbox's own tmpfs).
_TOLERATED = ("/dev/shm/sem.",)


def traced_writes(log: str) -> tuple[list[str], list[str]]:
    """From a build log with strace's lines: the paths written, and network calls."""
    (cwd,) = re.findall(r"^nixlayer-trace: tmpdir=\S+ pwd=(\S+)$", log, re.M)
    written, network = [], []
    for line in log.splitlines():
        match = _CALL.match(line)
        if match is None:
            continue
        call, args = match["call"], match["args"]
        if call in ("socket", "connect"):
            network.append(line)
            continue
        paths = [_resolve(found, cwd) for found in _PATH.finditer(args)]
        if call in ("open", "openat"):
            written += paths[:1] if _WRITE_FLAGS.search(args) else []
        elif call in _WRITES:
            written += [paths[i] for i in _WRITES[call] if i < len(paths)]
    return written, network


def _resolve(found: re.Match[str], cwd: str) -> str:
    if found["path"] is not None:
        name, folder = found["path"], cwd
    else:
        name, folder = found["name"], found["dir"] or cwd
    return os.path.normpath(os.path.join(folder, name))


# Evaluation only: the Nix files, the arguments, the wiring to nixpkgs.


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_nix_file_parses(path: Path) -> None:
    run_nix("nix-instantiate", "--parse", path)


def test_settings_follow_the_arguments(nix_images: NixImages) -> None:
    """The Nix arguments become nixlayer's settings, keyed by its option names."""
    settings = nix_images.evaluate("settings")
    motd, extra = settings.pop("add")
    assert re.fullmatch(r"/nix/store/[0-9a-z]{32}-motd:/etc/motd", motd)
    assert re.fullmatch(r"/nix/store/[0-9a-z]{32}-nixlayer-test-custom-extra:/", extra)
    assert settings == {
        "name": "nixlayer-test-custom",
        "tag": "v1",
        "arch": nix_images.evaluate("system"),
        "contents": [nix_images.closure.app],
        "created": "1970-01-01T00:00:01Z",
        "format": "oci",
        "link-paths": "/bin,/share",
        "max-layers": 3,
        "mkdir": ["/tmp:1777"],
        "mtime": 1,
    }


@pytest.mark.parametrize("attribute", ["roots", "rootsFromCommands"])
def test_store_paths_named_in_config_and_commands_are_the_closure(
    nix_images: NixImages, attribute: str
) -> None:
    assert nix_images.evaluate(attribute) == [nix_images.closure.app]


def test_default_nix_wires_the_core_to_nixpkgs() -> None:
    """default.nix over a fake nixpkgs: buildImage asks runCommand for a structured-
    attrs derivation whose builder is one command of the nixlayer package."""
    wiring = evaluate_wiring()["default"]
    assert wiring["names"] == ["buildImage", "nixlayer", "overlay", "planImage", "streamImage"]
    image = wiring["image"]
    hello = "/nix/store/00000000000000000000000000000000-hello-2.12"
    assert (image["kind"], image["name"]) == ("runCommand", "hello.tar")
    assert image["attrs"]["__structuredAttrs"] is True
    assert image["attrs"]["exportReferencesGraph"] == {"closure": [hello]}
    assert image["attrs"]["nixlayer"]["contents"] == [hello]
    package = r"'/nix/store/0{32}-nixlayer-[^/']+/bin/nixlayer'"
    assert re.fullmatch(
        package + r' from-closure "\$NIX_ATTRS_JSON_FILE" --attrs-key closure '
        r'--settings-from-attrs -o - > "\$out"',
        image["script"],
    )
    assert re.match(package + " plan ", image["plan"]["script"])


@pytest.mark.parametrize("where", ["default", "flake"])
def test_package_is_built_from_pyproject(where: str) -> None:
    """The Nix package has pyproject.toml's name, version and dependencies, and takes
    nixpkgs' version of any dependency pyproject.toml caps (a cap there is for speed)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dependencies = [
        re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0] for spec in project["dependencies"]
    ]
    capped = [
        name
        for name, spec in zip(dependencies, project["dependencies"], strict=True)
        if "<" in spec
    ]
    package = evaluate_wiring()[where]["package"]
    assert package == {
        "kind": "buildPythonApplication",
        "pname": project["name"],
        "version": project["version"],
        "pyproject": True,
        "build-system": ["setuptools"],
        "dependencies": dependencies,
        "pythonRelaxDeps": capped,
        "mainProgram": "nixlayer",
    }


def test_flake_outputs() -> None:
    flake = evaluate_wiring()["flake"]
    systems = ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"]
    assert flake["inputs"] == ["nixpkgs"]
    assert flake["overlays"] == ["default"]
    assert flake["outputs"] == {
        "packages": systems,
        "lib": systems,
        "checks": ["aarch64-linux", "x86_64-linux"],
    }
    assert flake["lib"] == ["buildImage", "planImage", "streamImage"]
    assert flake["check"]["contents"] == ["/nix/store/00000000000000000000000000000000-hello-2.12"]


# Inside Nix and outside: the same bytes.


def test_image_is_the_one_built_outside(nix_images: NixImages, outside_image: Path) -> None:
    """Structured attributes, settings from the attributes file, the config's store
    paths as the closure: the same bytes as `nix path-info` and flags outside Nix."""
    assert sha256_hex(nix_images.outputs["image"].read_bytes()) == sha256_hex(
        outside_image.read_bytes()
    )


def test_gzip_archive_is_the_one_built_outside(nix_images: NixImages) -> None:
    out = nix_images.workdir / "outside.tar.gz"
    build_outside(
        nix_images.closure.path_info,
        *app_flags(nix_images.closure),
        "--compress",
        "gzip",
        "-o",
        out,
    )
    gzipped = nix_images.outputs["gzip"]
    assert gzipped.name.endswith("-nixlayer-test.tar.gz")
    assert sha256_hex(gzipped.read_bytes()) == sha256_hex(out.read_bytes())


def test_references_graph_text_gives_the_same_image(
    nix_images: NixImages, outside_image: Path
) -> None:
    """A builder without structured attributes: plain exportReferencesGraph text, whose
    NAR sizes nixlayer reads from the store inside the build."""
    assert nix_images.outputs["textGraph"].read_bytes() == outside_image.read_bytes()


def test_stream_script_writes_the_same_image(nix_images: NixImages, outside_image: Path) -> None:
    """streamImage's output is a script, run outside Nix like streamLayeredImage's."""
    script = nix_images.outputs["stream"]
    assert os.access(script, os.X_OK)
    streamed = subprocess.run(
        [script, "--no-cache", "--quiet"],
        capture_output=True,
        check=True,
        timeout=300,
        env=clean_environment(),
    ).stdout
    assert sha256_hex(streamed) == sha256_hex(outside_image.read_bytes())


def test_custom_layout_is_the_one_built_outside(nix_images: NixImages) -> None:
    """An OCI folder with a customised root, built again outside Nix from the same
    attributes file (closure and settings): every file has the same bytes."""
    outside = nix_images.workdir / "outside-oci"
    attrs = nix_images.outputs["custom.attrsFile"]
    build_outside(attrs, "--attrs-key", "closure", "--settings-from-attrs", "-o", outside)
    assert folder_files(nix_images.outputs["custom"]) == folder_files(outside)


# What consumers read.


def test_image_unpacks_to_the_store(nix_images: NixImages, tools: Tools, tmp_path: Path) -> None:
    image = nix_images.outputs["image"]
    config = skopeo_inspect_config(image, tools.skopeo)
    app = nix_images.closure.app
    assert config["config"]["Cmd"] == [f"{app}/bin/app"]
    assert "GREETING=hello" in config["config"]["Env"]
    rootfs = unpack_image(image, tmp_path, tools.skopeo, tools.umoci)
    assert compare_tree(rootfs, Path("/"), nix_images.closure.paths) == []


def test_custom_layout_unpacks_to_store_and_root(
    nix_images: NixImages, tools: Tools, tmp_path: Path
) -> None:
    """contents linked under pathsToLink, extraFiles, extraCommands and a mkdir."""
    layout = nix_images.outputs["custom"]
    skopeo_copy_to_oci_layout(layout, "nixlayer-test-custom:v1", tmp_path / "copy", tools)
    rootfs = umoci_unpack(tmp_path / "copy", "t", tmp_path / "bundle", tools.umoci)
    assert compare_store(rootfs, Path("/"), nix_images.closure.paths) == []
    app = nix_images.closure.app
    assert os.readlink(rootfs / "bin" / "app") == f"{app}/bin/app"
    assert os.readlink(rootfs / "share" / "right") == f"{app}/share/right"
    assert (rootfs / "etc" / "motd").read_text(encoding="utf-8") == "built inside Nix\n"
    assert (rootfs / "var" / "status").read_text(encoding="utf-8") == "ok\n"
    assert (rootfs / "var" / "empty").is_dir()
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert sorted(os.listdir(rootfs)) == ["bin", "etc", "nix", "share", "tmp", "var"]


# The plan output.


def test_plan_output_is_the_plan_outside(nix_images: NixImages) -> None:
    """passthru.plan runs `nixlayer plan` alone: the layering without any tar."""
    closure = nix_images.closure
    assert read_plan(nix_images.outputs["image.plan"]) == plan_outside(closure)
    # maxLayers 3, less the customisation layer.
    assert read_plan(nix_images.outputs["custom.plan"]) == plan_outside(
        closure, "--max-layers", "2"
    )


def test_plan_output_is_the_image_layering(nix_images: NixImages) -> None:
    """The plan's layers are the store layers of the image that was built."""
    described = json.loads(run_ok("inspect", "--json", nix_images.outputs["custom"]).stdout)
    store_layers = [layer["store_paths"] for layer in described["layers"] if layer["store_paths"]]
    plan = read_plan(nix_images.outputs["custom.plan"])
    assert [layer["paths"] for layer in plan["layers"]] == store_layers


# What a build may not do: differ, show progress, write elsewhere, connect.


def test_builds_are_reproducible_in_nix(nix_images: NixImages) -> None:
    """--check builds again and fails if an output differs by one byte."""
    checked = [nix_images.drvs[name] for name in ("image", "custom", "image.plan", "textGraph")]
    run_nix("nix-store", "--realise", "--check", *checked)


def test_build_log_is_plain(nix_images: NixImages) -> None:
    """No progress bar or colour in a build log: no carriage return, no escape."""
    log = build_log(nix_images.drvs["image"])
    assert f"nixlayer: wrote {NAME} to -" in log
    assert "\r" not in log and "\x1b" not in log


@pytest.mark.parametrize("attribute", ["traced", "tracedArchive"])
def test_builder_writes_only_out_and_tmpdir(nix_images: NixImages, attribute: str) -> None:
    """Under strace inside the build, nixlayer writes nothing outside $out and $TMPDIR
    and opens no socket: the layer cache stays off, no temporary file sits in the store."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not on PATH")
    (drv,) = instantiate(nix_images.closure, [attribute], "--argstr", "strace", strace)
    (out,) = realise([drv], nix_images.workdir / attribute)
    log = build_log(drv)
    (tmpdir,) = re.findall(r"^nixlayer-trace: tmpdir=(\S+) ", log, re.M)
    written, network = traced_writes(log)
    assert written, "the trace shows no write at all: is strace tracing nixlayer?"
    allowed = (f"{out}/", f"{tmpdir}/", *_TOLERATED)
    outside = [path for path in written if path != str(out) and not path.startswith(allowed)]
    assert outside == []
    assert network == []
