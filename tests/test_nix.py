"""Against the real Nix: build a small closure, describe it in the three shapes Nix
prints (path-info JSON, structured-attrs JSON, exportReferencesGraph text), and
check that each gives the same image, and that the image is the store.

Run as a script (``python tests/test_nix.py fixtures/nix-2.8``) to capture those
three descriptions as reader fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.archives import sha256_hex
from support.nix import NixClosure, build_closure, run_nix
from support.run import FIXTURES, run_ok
from support.stores import FixtureStore
from support.tools import Tools, unpack_image
from support.trees import compare_tree


@pytest.fixture(scope="module")
def nix_closure(tmp_path_factory: pytest.TempPathFactory) -> NixClosure:
    if shutil.which("nix-build") is None or shutil.which("nix") is None:
        pytest.skip("nix-build not on PATH: run scripts/install-test-deps.sh")
    return build_closure(tmp_path_factory.mktemp("nix"))


@pytest.fixture(scope="module")
def path_info_image(nix_closure: NixClosure, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nix-image") / "image.tar"
    run_ok("from-closure", nix_closure.path_info, "--store-root", "/", "-o", out)
    return out


def test_closure_is_the_intended_dag(nix_closure: NixClosure) -> None:
    """Guards the test itself: Nix found the references the expression meant."""
    info = {e["path"]: e for e in json.loads(nix_closure.path_info.read_text(encoding="utf-8"))}
    by_name = {path[44:]: path for path in info}
    refs = {
        name: sorted(r[44:] for r in info[path]["references"]) for name, path in by_name.items()
    }
    assert refs == {
        "nixlayer-test-app-1.0": [
            "nixlayer-test-config.json",
            "nixlayer-test-left-1.0",
            "nixlayer-test-right-1.0",
        ],
        "nixlayer-test-left-1.0": ["nixlayer-test-base-1.0"],
        "nixlayer-test-right-1.0": ["nixlayer-test-base-1.0"],
        "nixlayer-test-base-1.0": ["nixlayer-test-base-1.0"],
        "nixlayer-test-config.json": [],
    }


def test_real_closure_unpacks_to_the_store(
    nix_closure: NixClosure, path_info_image: Path, tools: Tools, tmp_path: Path
) -> None:
    rootfs = unpack_image(path_info_image, tmp_path, tools.skopeo, tools.umoci)
    assert compare_tree(rootfs, Path("/"), nix_closure.paths) == []


@pytest.mark.parametrize(
    ("shape", "extra"),
    [("attrs", ["--attrs-key", "closure"]), ("references_graph", [])],
    ids=["structured-attrs", "references-graph-text"],
)
def test_other_shapes_give_the_same_image(
    nix_closure: NixClosure, path_info_image: Path, shape: str, extra: list[str], tmp_path: Path
) -> None:
    """The plain text has no narSize: sizes read from disk are exact, so the layering
    (and every byte) must come out the same."""
    source = getattr(nix_closure, shape)
    out = tmp_path / "image.tar"
    run_ok("from-closure", source, *extra, "--store-root", "/", "-o", out, "--quiet")
    assert sha256_hex(out.read_bytes()) == sha256_hex(path_info_image.read_bytes())


def test_sizes_from_disk_equal_nix_nar_sizes(nix_closure: NixClosure) -> None:
    """Without narSize, nixlayer measures the store: the plan, sizes included, must be
    the one made from Nix's own narSize values."""

    def plan(*args: str | Path) -> dict[str, object]:
        return json.loads(run_ok("plan", *args, "--store-root", "/", "-o", "-", "-q").stdout)

    assert plan(nix_closure.references_graph) == plan(nix_closure.path_info)


def test_fixture_store_nar_matches_nix(fixture_store: FixtureStore) -> None:
    """narSize and narHash of the generated store are what ``nix-store --dump`` says."""
    if shutil.which("nix-store") is None:
        pytest.skip("nix-store not on PATH: run scripts/install-test-deps.sh")
    for entry in fixture_store.entries:
        nar = subprocess.run(
            ["nix-store", "--dump", str(fixture_store.disk(entry["path"]))],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        digest = "sha256-" + base64.b64encode(hashlib.sha256(nar).digest()).decode()
        assert (entry["narSize"], entry["narHash"]) == (len(nar), digest), entry["path"]


def test_committed_nix_fixtures_agree() -> None:
    """The committed path-info and structured-attrs files describe one closure."""
    folder = FIXTURES / "nix-2.8"
    plans = [
        json.loads(run_ok("plan", folder / "path-info.json", "-o", "-", "-q").stdout),
        json.loads(
            run_ok("plan", folder / "attrs.json", "--attrs-key", "closure", "-o", "-", "-q").stdout
        ),
    ]
    assert plans[0] == plans[1]
    assert len([p for layer in plans[0]["layers"] for p in layer["paths"]]) == 5


def capture(dest: Path) -> None:
    """Write the real Nix outputs for this closure into ``dest`` (reader fixtures)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        closure = build_closure(Path(workdir))
        shutil.copyfile(closure.path_info, dest / "path-info.json")
    shutil.copyfile(closure.attrs, dest / "attrs.json")
    shutil.copyfile(closure.references_graph, dest / "references-graph.txt")
    version = run_nix("nix", "--version").strip()
    system = run_nix("nix", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem")
    (dest / "README").write_text(
        f"Made with {version} on {system} by `python tests/test_nix.py {dest}`: path-info.json "
        "is `nix path-info --json --recursive --closure-size` of the app in the CLOSURE_NIX "
        "of tests/support/nix.py; attrs.json and references-graph.txt are the outputs of its "
        "__structuredAttrs and exportReferencesGraph derivations.\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    capture(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES / "nix-2.8")
