"""Where a closure file is expected, a store path, a ``./result`` link or an installable
works too: nixlayer asks ``nix path-info --json --recursive`` for its closure (the real
Nix, built closures as in test_nix.py). Without Nix, or when Nix fails, one line.

The rules that tell a closure file from what Nix knows are checked without Nix, on a
store laid out in a temporary folder (``--store-root``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.archives import layer_members, read_docker_archive
from support.nix import NixClosure, build_closure, nix_missing, run_nix
from support.run import run_nixlayer, run_ok

from nixlayer.nixinput import nix_argument

STORE_NAME = "0123456789abcdfghijklmnpqrsvwxyz"  # 32 characters of Nix's base-32
needs_nix = pytest.mark.skipif(nix_missing() is not None, reason=nix_missing() or "")


@pytest.fixture(scope="module")
def nix_closure(tmp_path_factory: pytest.TempPathFactory) -> NixClosure:
    """The test closure (app → left, right, config; left, right → base), with
    ``result`` (app), ``result-2`` (its exportReferencesGraph text) and ``result-3``
    (a structured-attrs file) beside ``path-info.json`` in one folder."""
    if nix_missing() is not None:
        pytest.skip(nix_missing() or "")
    return build_closure(tmp_path_factory.mktemp("nix-input"))


def folder_of(closure: NixClosure) -> Path:
    return closure.path_info.parent


def image_store_paths(image: Path) -> set[str]:
    """The store paths whose contents an image's layers hold."""
    archive = read_docker_archive(image.read_bytes())
    names = (member.name.lstrip("./").split("/") for layer in archive.layers
             for member in layer_members(layer))  # fmt: skip
    return {f"/nix/store/{parts[2]}" for parts in names if parts[:2] == ["nix", "store"]
            and len(parts) > 2}  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The failure's one line on stderr, after checking it is the only one, exit 2."""
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("nixlayer: error: "), stderr
    return stderr


@pytest.fixture(scope="module")
def closure_file_image(nix_closure: NixClosure) -> Path:
    """The image of ``./result`` made the way the README said before: from
    ``nix path-info --json --recursive ./result > closure.json``."""
    folder = folder_of(nix_closure)
    closure = folder / "closure.json"
    with closure.open("w", encoding="utf-8") as out:
        subprocess.run(
            ["nix", "path-info", "--json", "--recursive", "./result"],
            cwd=folder, stdout=out, check=True, timeout=300,
        )  # fmt: skip
    run_ok("from-closure", "closure.json", "-o", "closure.tar", "-q", cwd=folder)
    return folder / "closure.tar"


def test_result_link_builds_the_image_of_its_closure(
    nix_closure: NixClosure, closure_file_image: Path
) -> None:
    folder = folder_of(nix_closure)
    result = run_ok("from-closure", "./result", "-o", "result.tar", cwd=folder)
    assert result.stderr.decode().startswith("nixlayer: wrote nixlayer-test-app-1.0:")
    image = folder / "result.tar"
    assert image.read_bytes() == closure_file_image.read_bytes()
    assert image_store_paths(image) == set(nix_closure.paths)
    assert len(nix_closure.paths) == 5


def test_store_path_and_a_folder_inside_it(
    nix_closure: NixClosure, closure_file_image: Path, tmp_path: Path
) -> None:
    for value in (nix_closure.app, f"{nix_closure.app}/bin"):
        out = tmp_path / "image.tar"
        run_ok("from-closure", value, "-o", out, "-q")
        assert out.read_bytes() == closure_file_image.read_bytes(), value


def test_plan_and_diff_take_a_result_link(nix_closure: NixClosure) -> None:
    folder = folder_of(nix_closure)

    def plan(value: str) -> object:
        return json.loads(run_ok("plan", value, "-q", cwd=folder).stdout)

    assert plan("./result") == plan("path-info.json")
    cost = json.loads(run_ok("diff", "path-info.json", "./result", "--json", cwd=folder).stdout)
    assert cost["pushed"] == 0


def test_closure_files_nix_built_stay_closure_files(
    nix_closure: NixClosure, closure_file_image: Path, tmp_path: Path
) -> None:
    """``result-2`` and ``result-3`` lead to store files that are closure files (an
    exportReferencesGraph text, a structured-attrs JSON): read as such, as before,
    not as store paths whose own closure is the one file."""
    folder = folder_of(nix_closure)
    for link, extra in (("result-2", []), ("result-3", ["--attrs-key", "closure"])):
        out = tmp_path / f"{link}.tar"
        run_ok("from-closure", link, *extra, "-o", out, "-q", cwd=folder)
        assert out.read_bytes() == closure_file_image.read_bytes(), link


@needs_nix
def test_a_store_file_that_is_no_closure_is_a_store_path(tmp_path: Path) -> None:
    script = tmp_path / "nixlayer-test-hello.sh"
    script.write_text("#!/bin/sh\necho hello\n", encoding="utf-8")
    store_path = run_nix("nix-store", "--add", script).strip()
    (tmp_path / "result").symlink_to(store_path)
    run_ok("from-closure", "./result", "-o", "image.tar", "-q", cwd=tmp_path)
    assert image_store_paths(tmp_path / "image.tar") == {store_path}


# A package whose closure is two paths; no inputs, so that Nix fetches nothing.
FLAKE = """{
  outputs = { self }: let
    mk = name: script: derivation {
      inherit name;
      system = "SYSTEM";
      builder = "/bin/sh";
      args = [ "-c" "${script}; exit 0" ];
    };
    dep = mk "nixlayer-flake-dep" "echo dep > $out";
  in { packages.SYSTEM.default = mk "nixlayer-flake-top" "echo ${dep} > $out"; };
}
"""


@needs_nix
def test_an_installable(tmp_path: Path) -> None:
    """A flake's package, named as typed, relative to the folder nixlayer runs in;
    built first, as ``nix path-info`` reads what is built and builds nothing."""
    system = run_nix("nix", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem")
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text(FLAKE.replace("SYSTEM", system), encoding="utf-8")
    features = ("--extra-experimental-features", "nix-command flakes")
    run_nix("nix", *features, "build", f"{flake}#default", "-o", tmp_path / "result")
    result = run_ok("from-closure", ".#default", "-o", tmp_path / "image.tar", "-q", cwd=flake)
    assert result.stderr == b""
    paths = image_store_paths(tmp_path / "image.tar")
    assert os.readlink(tmp_path / "result") in paths and len(paths) == 2


@needs_nix
def test_without_nix_one_line_names_the_command(nix_closure: NixClosure, tmp_path: Path) -> None:
    no_nix = tmp_path / "bin"
    no_nix.mkdir()
    environment = {**os.environ, "PATH": str(no_nix)}
    result = run_nixlayer("from-closure", "./result", "-o", "image.tar",
                          cwd=folder_of(nix_closure), env=environment)  # fmt: skip
    line = one_error_line(result)
    assert line.startswith("nixlayer: error: ./result: reading the closure of a store path")
    assert f"`nix path-info --json --recursive {nix_closure.app} > closure.json`" in line
    assert not (folder_of(nix_closure) / "image.tar").exists()


@needs_nix
def test_nix_failure_is_one_line_with_its_error() -> None:
    """Nix says more ("don't know how to build these paths:", the path): its error
    line is the one that reaches the user."""
    missing = f"/nix/store/{STORE_NAME}-nixlayer-not-built"
    line = one_error_line(run_nixlayer("plan", missing))
    assert line == (
        f"nixlayer: error: {missing}: nix path-info failed: path '{missing}' is not valid\n"
    )


def test_a_folder_outside_the_store_is_refused(tmp_path: Path) -> None:
    line = one_error_line(run_nixlayer("from-closure", tmp_path, "-o", tmp_path / "image.tar"))
    assert line == (
        f"nixlayer: error: {tmp_path}: a folder, not a closure file, and not in the Nix store "
        "/nix/store (give a closure file, a store path or an installable)\n"
    )


def test_what_nix_is_asked_for(tmp_path: Path) -> None:
    """The rules of ``nixinput``, on a store laid out under ``tmp_path``."""
    store = tmp_path / "nix" / "store"
    package = store / f"{STORE_NAME}-app"
    (package / "bin").mkdir(parents=True)
    closure_in_store = store / f"{STORE_NAME}-closure"
    closure_in_store.write_text(' [{"path": "/nix/store/..."}]', encoding="utf-8")
    script = store / f"{STORE_NAME}-hello.sh"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    (tmp_path / "result").symlink_to(package)
    link = store / f"{STORE_NAME}-link"  # a store path that is a symlink itself
    link.symlink_to(package / "bin")
    (tmp_path / "result-2").symlink_to(link)
    (tmp_path / "closure.json").write_text("[]", encoding="utf-8")
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = _: { }; }", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    expected = {
        "-": None,
        str(tmp_path / "closure.json"): None,
        str(closure_in_store): None,
        str(package): f"/nix/store/{package.name}",
        str(tmp_path / "result"): f"/nix/store/{package.name}",
        f"{tmp_path / 'result'}/": f"/nix/store/{package.name}",
        str(package / "bin"): f"/nix/store/{package.name}",
        str(tmp_path / "result-2"): f"/nix/store/{link.name}",
        str(script): f"/nix/store/{script.name}",
        str(store / f"{STORE_NAME}-not-here"): f"/nix/store/{STORE_NAME}-not-here",
        str(flake): str(flake),
        str(tmp_path / "folder"): None,
        str(tmp_path / "missing.json"): None,
        ".#app": ".#app",
        "./sub#app": "./sub#app",
        "nixpkgs#hello": "nixpkgs#hello",
        "github:owner/repo": "github:owner/repo",
        "git+https://example.org/repo": "git+https://example.org/repo",
    }
    found = {value: nix_argument(value, store_root=tmp_path) for value in expected}
    assert found == expected


# A stand-in for nix that records how it was run (arguments, environment, stdin) and
# answers as ``nix path-info --json --recursive`` would for a one-path closure, or,
# with exit status 1, fails as Nix does: notes and a warning before its colored error.
FAKE_NIX = """#!PYTHON
import json, os, sys
with open(RECORD, "w") as record:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ),
               "stdin": os.readlink("/proc/self/fd/0")}, record)
print("warning: notes of nix's own", file=sys.stderr)
if STATUS:
    print("don't know how to build these paths:", file=sys.stderr)
    print("warning: error: not this line", file=sys.stderr)
    print("\\x1b[31;1merror:\\x1b[0m path '%s' is not valid" % sys.argv[-1], file=sys.stderr)
    sys.exit(STATUS)
print(json.dumps([{"path": sys.argv[-1], "narSize": 8, "references": []}]))
"""


def fake_nix(folder: Path, status: int) -> Path:
    """A folder for PATH holding only the stand-in ``nix``; its record beside it."""
    bin_folder = folder / "bin"
    bin_folder.mkdir()
    script = FAKE_NIX.replace("PYTHON", sys.executable)
    script = script.replace("RECORD", repr(str(folder / "record.json")))
    (bin_folder / "nix").write_text(script.replace("STATUS", str(status)), encoding="utf-8")
    (bin_folder / "nix").chmod(0o755)
    return bin_folder


def test_how_nix_is_run(tmp_path: Path) -> None:
    """stdin from /dev/null, so that it never waits on a prompt; an environment of
    what Nix uses, not everything nixlayer got; its stderr not on nixlayer's."""
    store_path = f"/nix/store/{STORE_NAME}-fake"
    environment = {**os.environ, "PATH": str(fake_nix(tmp_path, 0)),
                   "NIX_REMOTE": "daemon", "NIXLAYER_TEST_UNRELATED": "1"}  # fmt: skip
    result = run_ok("plan", store_path, "-o", "-", "-q", env=environment)
    assert result.stderr == b""
    assert [layer["paths"] for layer in json.loads(result.stdout)["layers"]] == [[store_path]]
    record = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))
    assert record["argv"][-5:] == ["path-info", "--json", "--recursive", "--", store_path]
    assert record["stdin"] == "/dev/null"
    assert record["env"]["NIX_REMOTE"] == "daemon"
    assert record["env"]["PATH"] == environment["PATH"]
    assert "NIXLAYER_TEST_UNRELATED" not in record["env"]


def test_nix_error_line_is_the_one_shown(tmp_path: Path) -> None:
    store_path = f"/nix/store/{STORE_NAME}-fake"
    environment = {**os.environ, "PATH": str(fake_nix(tmp_path, 1))}
    line = one_error_line(run_nixlayer("plan", store_path, env=environment))
    assert line == (
        f"nixlayer: error: {store_path}: nix path-info failed: path '{store_path}' is not valid\n"
    )
