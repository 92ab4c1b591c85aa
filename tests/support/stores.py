"""The stores the tests build from: the generated fixture store, copies of it and an app
update on it, and the reference images with their generated stores."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from support.run import REPO, load_script, nixlayer_environment
from support.trees import STORE_DIR


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


def load_fixture_generator() -> ModuleType:
    """``scripts/make_fixture_store.py`` as a module."""
    return load_script("make_fixture_store")


def closure_nar_size(entries: Iterable[Mapping[str, Any]]) -> int:
    return sum(entry["narSize"] for entry in entries)


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
