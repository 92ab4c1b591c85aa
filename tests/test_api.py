"""The public Python API: what ``import nixlayer`` offers, the README's example run as
it is written, and errors that name the option that carried a wrong value."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.run import REPO, run_nixlayer, run_ok, write_json
from support.stores import FixtureStore
from support.tools import Tools

import nixlayer
from nixlayer.options import options_from_fields


def test_every_exported_name_resolves_and_the_package_loads_nothing_until_asked() -> None:
    """``import nixlayer`` is cheap: the API and the graph library load on first use."""
    probe = (
        "import sys, nixlayer; "
        "print(sorted(m for m in ('networkx', 'nixlayer.api') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
    for name in nixlayer.__all__:
        assert getattr(nixlayer, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nixlayer.nope  # noqa: B018


def test_py_typed_is_shipped() -> None:
    assert (REPO / "nixlayer" / "py.typed").is_file()


def test_plan_image_returns_the_plan_the_cli_writes(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    plan = nixlayer.plan_image(fixture_store.closure_file, nixlayer.Layering(max_layers=3))
    assert len(plan.layers) == 3
    assert sum(len(layer.paths) for layer in plan.layers) == len(fixture_store.entries)
    nixlayer.save_plans({str(tmp_path / "plan.json"): plan})
    cost = nixlayer.diff_builds(str(tmp_path / "plan.json"), str(tmp_path / "plan.json"))
    assert cost.pushed == 0 and cost.reuse_percent == 100.0


def test_an_error_names_the_value_and_the_option_that_carried_it(
    fixture_store: FixtureStore,
) -> None:
    with pytest.raises(nixlayer.NixlayerError) as raised:
        nixlayer.plan_image(fixture_store.closure_file, nixlayer.Layering(max_layers=0))
    assert (raised.value.option, raised.value.message) == ("max_layers", "0: must be at least 1")
    assert str(raised.value) == "max_layers 0: must be at least 1"
    assert "--" not in str(raised.value)


def test_options_from_fields_parse_values_as_people_write_them(tmp_path: Path) -> None:
    groups = write_json(tmp_path / "groups.json", [["python3-*"]])
    source, options = options_from_fields({
        "closure": "c.json", "cmd": '["a", "b"]', "entrypoint": ["/bin/sh"],
        "adds": ["./x:/srv:0644"], "directories": ["/tmp:1777"], "groups": str(groups),
        "link_paths": "/bin,/etc", "max_layers": 7,
    })  # fmt: skip
    assert source == nixlayer.ClosureInput("c.json")
    assert options.run.cmd == ("a", "b") and options.run.entrypoint == ("/bin/sh",)
    assert options.customisation.adds == (nixlayer.AddFiles(Path("./x"), "/srv", 0o644),)
    assert options.customisation.directories == (nixlayer.MakeDirectory("/tmp", 0o1777),)
    assert options.customisation.link_paths == ("/bin", "/etc")
    assert options.layering == nixlayer.Layering(max_layers=7, groups=(("python3-*",),))
    with pytest.raises(nixlayer.NixlayerError) as raised:
        options_from_fields({"closure": "c.json", "directories": ["tmp"]})
    assert raised.value.option == "directories"
    assert re.match(r"tmp: expected DEST", raised.value.message)


def test_from_closure_json_says_what_skopeo_reads(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """The manifest and config digests and each layer's digest, as skopeo finds them in
    the layout; a docker-archive's config digest is its config's, and it has no manifest."""
    layout, archive = tmp_path / "layout", tmp_path / "image.tar"
    common = ["--store-root", fixture_store.root, "--max-layers", "3", "-q", "--json"]
    said = json.loads(run_ok("from-closure", fixture_store.closure_file, "--format", "oci",
                             "-o", layout, *common).stdout)  # fmt: skip
    ref = f"oci:{layout}:{said['name']}:{said['tag']}"
    manifest = subprocess.run([tools.skopeo, "inspect", "--raw", ref], capture_output=True,
                              check=True).stdout  # fmt: skip
    assert said["manifest_digest"] == f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    parsed = json.loads(manifest)
    assert said["config_digest"] == parsed["config"]["digest"]
    assert [layer["digest"] for layer in said["layers"]] == [
        layer["digest"] for layer in parsed["layers"]
    ]
    assert sorted(p for layer in said["layers"] for p in layer["store_paths"]) == sorted(
        entry["path"] for entry in fixture_store.entries
    )
    said = json.loads(run_ok("from-closure", fixture_store.closure_file, "-o", archive,
                             *common).stdout)  # fmt: skip
    config = subprocess.run([tools.skopeo, "inspect", "--raw", "--config",
                             f"docker-archive:{archive}"], capture_output=True,
                            check=True).stdout  # fmt: skip
    assert said["config_digest"] == f"sha256:{hashlib.sha256(config).hexdigest()}"
    assert said["manifest_digest"] is None
    assert [layer["digest"] for layer in said["layers"]] == json.loads(config)["rootfs"]["diff_ids"]


def test_json_is_refused_where_stdout_takes_the_image(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    result = run_nixlayer("from-closure", fixture_store.closure_file, "--store-root",
                          fixture_store.root, "-o", "-", "--json")  # fmt: skip
    assert result.returncode == 2 and result.stdout == b""
    assert (
        result.stderr
        == b"nixlayer: error: --json: -o - is standard output, which takes the image\n"
    )


def _readme_block(section: str, language: str) -> str:
    """The first ``language`` code block of the README's ``section``."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{language}\n(.*?)```", body, re.DOTALL)
    assert found, f"no {language} block in the README's {section} section"
    return found[1]


def test_the_readme_python_example_builds_the_image_it_shows(
    fixture_store: FixtureStore, tools: Tools, tmp_path: Path
) -> None:
    """Run as it is written, in a folder laid out as the checkout after Try it; its
    output is the README's, and skopeo reads the image it wrote."""
    shutil.copytree(fixture_store.root, tmp_path / "fixtures" / "store", symlinks=True)
    shutil.copy(fixture_store.closure_file, tmp_path / "fixtures" / "store-closure.json")
    example = tmp_path / "example.py"
    example.write_text(_readme_block("Python", "python"))
    ran = subprocess.run([sys.executable, example], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == _readme_block("Python", "text")
    config = json.loads(subprocess.run(
        [tools.skopeo, "inspect", "--config", f"docker-archive:{tmp_path / 'image.tar'}"],
        capture_output=True, check=True,
    ).stdout)  # fmt: skip
    app = "/nix/store/3zcs07xwki8d83hggymk33l4hy14hk5s-app-1.0/bin/app"
    assert config["config"]["Cmd"] == [app]
    assert len(config["rootfs"]["diff_ids"]) == 4
