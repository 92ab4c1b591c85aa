"""A new user's first hour: help and version, `diff` as a CI gate, images addressed in a
layout that holds several, the progress bar, sizes as the tables print them, and
flags that contradict each other."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from support.archives import read_docker_archive
from support.handmade import input_error as _input_error
from support.run import REPO, run_nixlayer, run_ok
from support.stores import FixtureStore

from nixlayer import cli
from nixlayer.layers import written_by_nixlayer
from nixlayer.sizes import parse_size

COMMANDS = ("from-closure", "plan", "diff", "inspect", "verify")


def _build(store: FixtureStore, *args: str | Path) -> None:
    run_ok("from-closure", store.closure_file, "--store-root", store.root, "-q", "--no-cache",
           *args)  # fmt: skip


# --- help, -h and --version -------------------------------------------------------------


def test_bare_nixlayer_prints_the_help_on_several_lines() -> None:
    result = run_nixlayer()
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.startswith("Usage: nixlayer") and "nixlayer: error" not in stderr, stderr
    listed = {line.split()[0] for line in stderr.splitlines() if line.startswith("  ")}
    assert listed >= set(COMMANDS), stderr


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_h_is_help(command: str) -> None:
    result = run_nixlayer(*([command] if command else []), "-h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: nixlayer {command}".rstrip().encode())


def test_version() -> None:
    """One source: pyproject.toml's version, as installed."""
    result = run_ok("--version")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{version("nixlayer")}"\n' in pyproject
    assert result.stdout.decode() == f"nixlayer {version('nixlayer')}\n"


@pytest.mark.parametrize("layout", ["install", "checkout", "neither"])
def test_version_where_the_code_runs_from(tmp_path: Path, layout: str) -> None:
    """An install's dist-info folder beside the package names the version, else a
    checkout's pyproject.toml, else the package metadata (none here: unknown)."""
    (tmp_path / "nixlayer").mkdir()
    (tmp_path / "nixlayer" / "__init__.py").write_bytes(
        (REPO / "nixlayer/__init__.py").read_bytes()
    )
    if layout == "install":
        (tmp_path / "nixlayer-7.1.dist-info").mkdir()
    if layout == "checkout":
        (tmp_path / "pyproject.toml").write_text('[project]\nversion = "7.2"\n')
    found = subprocess.run(
        [sys.executable, "-S", "-c", "import nixlayer; print(nixlayer.version())"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert found == {"install": "7.1", "checkout": "7.2", "neither": "unknown"}[layout]


def test_history_records_the_version(fixture_store: FixtureStore, tmp_path: Path) -> None:
    _build(fixture_store, "--add", f"{fixture_store.closure_file}:/closure.json",
           "-o", tmp_path / "image.tar")  # fmt: skip
    config = read_docker_archive((tmp_path / "image.tar").read_bytes()).config
    assert {entry["created_by"] for entry in config["history"]} == {
        f"nixlayer {version('nixlayer')}"
    }


@pytest.mark.parametrize(
    ("created_by", "ours"),
    [("nixlayer", True), ("nixlayer 0.1.0", True), ("nixlayer2", False), (None, False)],
)
def test_layers_of_any_version_are_nixlayers(created_by: str | None, ours: bool) -> None:
    assert written_by_nixlayer({"created_by": created_by}) is ours


# --- diff counts every layer ------------------------------------------------------------


def test_diff_counts_the_customisation_layer(fixture_store: FixtureStore, tmp_path: Path) -> None:
    """Two builds differing only in an added file: that layer is pushed."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.bin").write_bytes(os.urandom(100_000))
        _build(fixture_store, "--add", f"{tmp_path / name}.bin:/data",
               "-o", tmp_path / f"{name}.tar")  # fmt: skip
    gate = run_nixlayer("diff", tmp_path / "a.tar", tmp_path / "b.tar", "--fail-over", "1000")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    report = json.loads(run_ok("diff", tmp_path / "a.tar", tmp_path / "b.tar", "--json").stdout)
    assert report["pushed"] >= 100_000
    assert [layer["status"] for layer in report["layers"]][-1] == "new"
    same = run_ok("diff", tmp_path / "a.tar", tmp_path / "a.tar", "--fail-over", "0")
    assert b"pushed 0 B" in same.stdout


def test_diff_counts_a_base_images_layers(fixture_store: FixtureStore, tmp_path: Path) -> None:
    """The same store layers, on a base or not: the base's own layer is pushed too."""
    (tmp_path / "data.bin").write_bytes(os.urandom(100_000))
    _build(fixture_store, "--add", f"{tmp_path / 'data.bin'}:/data", "--name", "base",
           "-o", tmp_path / "base.tar")  # fmt: skip
    plan = tmp_path / "plan.json"
    run_ok("plan", fixture_store.closure_file, "-o", plan, "-q")
    _build(fixture_store, "--from", tmp_path / "base.tar", "-o", tmp_path / "on-base.tar")
    report = json.loads(run_ok("diff", plan, tmp_path / "on-base.tar", "--json").stdout)
    assert report["pushed"] >= 100_000


def test_diff_json_numbers_layers_as_the_table(fixture_store: FixtureStore, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    run_ok("plan", fixture_store.closure_file, "-o", plan, "-q")
    report = json.loads(run_ok("diff", plan, plan, "--json").stdout)
    table = run_ok("diff", plan, plan).stdout.decode().splitlines()[1:-1]
    assert [layer["index"] for layer in report["layers"]] == [int(row.split()[0]) for row in table]
    assert report["layers"][0]["index"] == 1


# --- --fail-over sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "size"),
    [("1000", 1000), ("10M", 10 << 20), ("10MiB", 10 << 20), ("1.5 GiB", 3 << 29),
     ("10 KiB", 10240), ("2k", 2048), ("0", 0), ("7 B", 7)],
)  # fmt: skip
def test_sizes_as_the_tables_print_them(given: str, size: int) -> None:
    assert parse_size(given) == size


@pytest.mark.parametrize("given", ["10MB", "-1", "1e3", "", "ten", "10 M B", "\u0661\u0660"])
def test_fail_over_refuses_what_is_not_a_size(given: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "store_dir": "/nix/store", "strategy": "x", "layers": []}')
    _input_error(run_nixlayer("diff", plan, plan, "--fail-over", given), "--fail-over")


def test_fail_over_takes_a_size(fixture_store: FixtureStore, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    run_ok("plan", fixture_store.closure_file, "-o", plan, "-q")
    empty = tmp_path / "empty.json"
    empty.write_text('{"version": 1, "store_dir": "/nix/store", "strategy": "x", "layers": []}')
    assert run_nixlayer("diff", empty, plan, "--fail-over", "10M").returncode == 0
    over = run_nixlayer("diff", empty, plan, "--fail-over", "1 KiB")
    assert over.returncode == 1 and b"--fail-over 1 KiB" in over.stderr, over.stderr


# --- PATH:REF -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_images(fixture_store: FixtureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout, in a folder whose name has a colon, holding app:v1 and app:v2."""
    layout = tmp_path_factory.mktemp("refs") / "my:images"
    for tag in ("v1", "v2"):
        _build(fixture_store, "--format", "oci", "-o", layout, "--name", f"app:{tag}",
               "--env", f"TAG={tag}")  # fmt: skip
    return layout


@pytest.mark.parametrize("ref", ["app:v1", "app:v2", "docker.io/library/app:v2"])
def test_inspect_an_image_of_a_layout(two_images: Path, ref: str) -> None:
    described = json.loads(run_ok("inspect", f"{two_images}:{ref}", "--json").stdout)
    assert f"TAG={ref[-2:]}" in described["config"]["Env"]


def test_layout_of_several_images_needs_a_ref(two_images: Path) -> None:
    _input_error(run_nixlayer("inspect", two_images), "PATH:REF", "app:v1", "app:v2")
    _input_error(run_nixlayer("inspect", f"{two_images}:app:v3"), "app:v3", "app:v1")


def test_refs_in_diff_from_and_previous(
    fixture_store: FixtureStore, two_images: Path, tmp_path: Path
) -> None:
    v1, v2 = f"{two_images}:app:v1", f"{two_images}:app:v2"
    report = json.loads(run_ok("diff", v1, v2, "--json").stdout)
    assert {layer["status"] for layer in report["layers"]} == {"reused"}
    _build(fixture_store, "--from", v1, "--previous", v2, "-o", tmp_path / "on.tar")
    config = read_docker_archive((tmp_path / "on.tar").read_bytes()).config
    assert "TAG=v1" in config["config"]["Env"]


def test_a_docker_archive_has_no_ref(fixture_store: FixtureStore, tmp_path: Path) -> None:
    _build(fixture_store, "-o", tmp_path / "image.tar")
    _input_error(run_nixlayer("inspect", f"{tmp_path / 'image.tar'}:app:v1"), "docker-archive")


# --- --name and --tag ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--name", "a:b", "--tag", "c"], ["--name a:b", "the tag c"]),
        (["--name", f"a@sha256:{'0' * 64}"], ["--name", "digest"]),
    ],
)
def test_name_and_tag_that_contradict(
    fixture_store: FixtureStore, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    result = run_nixlayer("from-closure", fixture_store.closure_file, "--store-root",
                          fixture_store.root, "-o", tmp_path / "x.tar", *args)  # fmt: skip
    _input_error(result, *words)
    assert not (tmp_path / "x.tar").exists()


# --- inspect ------------------------------------------------------------------------------


def test_inspect_counts_one_store_path(fixture_store: FixtureStore, tmp_path: Path) -> None:
    _build(fixture_store, "-o", tmp_path / "image.tar")
    text = run_ok("inspect", tmp_path / "image.tar").stdout.decode()
    assert "1 store path: " in text and "1 store paths" not in text


# --- the progress bar ---------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("image_format", ["docker-archive", "oci"])
def test_progress_bar_counts_what_its_total_counts(
    fixture_store: FixtureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    image_format: str,
) -> None:  # fmt: skip
    """The bar never passes its total, and ends at it, on a first build and on one
    that reuses every layer."""
    seen: list[tuple[Any, Any]] = []
    update, close = cli._Progress.update, cli._Progress.__exit__

    def watched_update(progress: cli._Progress, count: int) -> None:
        update(progress, count)
        assert progress.bar is not None
        seen.append((progress.bar.n, progress.bar.total))

    def record(progress: cli._Progress, *exc: object) -> None:
        assert progress.bar is not None
        ends.append((progress.bar.n, progress.bar.total))
        close(progress, *exc)

    ends: list[tuple[Any, Any]] = []
    monkeypatch.setattr(cli._Progress, "update", watched_update)
    monkeypatch.setattr(cli._Progress, "__exit__", record)
    monkeypatch.setattr("sys.stderr", _Terminal())
    argv = ["from-closure", str(fixture_store.closure_file), "--store-root",
            str(fixture_store.root), "--add", f"{fixture_store.closure_file}:/c.json",
            "--format", image_format, "-o", str(tmp_path / "image"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    for _ in range(2):
        assert cli.app(argv, standalone_mode=False) in (None, 0)
    assert seen and all(n <= total for n, total in seen), seen
    assert len(ends) == 2 and all(n == total > 0 for n, total in ends), ends
