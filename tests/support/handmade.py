"""Small store trees and closures made by hand for one test: store paths named by one
repeated hash character, closure files that list them, and the checks of what a bad
input must end in (one error line, nothing left behind)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from support.run import nixlayer_command, run_nixlayer

STORE = "/nix/store"


def store_path(name: str, hash_char: str = "1") -> str:
    return f"{STORE}/{hash_char * 32}-{name}"


P1, P2, P3 = store_path("one", "1"), store_path("two", "2"), store_path("three", "3")


def closure_file(folder: Path, entries: list[dict[str, Any]]) -> Path:
    target = folder / "closure.json"
    target.write_text(json.dumps(entries), encoding="utf-8")
    return target


def entry(path: str, *references: str, nar_size: int = 1000) -> dict[str, Any]:
    return {"path": path, "references": sorted(references), "narSize": nar_size}


def input_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """The one-line error of a problem with the input: exit 2, no traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("nixlayer: note")]
    assert len(lines) == 1 and lines[0].startswith("nixlayer: error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".nixlayer-"))


class Store:
    """A store tree under ``root`` and the closure file that lists its paths."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / "root"
        (self.root / STORE.lstrip("/")).mkdir(parents=True)
        self.paths: list[str] = []

    def add(self, name: str, hash_char: str) -> Path:
        """A store path's location on disk (not created: make it a file, folder...)."""
        path = store_path(name, hash_char)
        self.paths.append(path)
        return self.root / path.lstrip("/")

    def closure(self) -> Path:
        return closure_file(self.folder, [entry(p) for p in self.paths])

    def build(self, out: Path, *options: str, prefix: tuple[str, ...] = ()) -> Any:
        args = ("from-closure", self.closure(), "--store-root", self.root, "-o", out, "-q")
        if not prefix:
            return run_nixlayer(*args, *options)
        command = [*prefix, *nixlayer_command(), *map(str, args), *options]
        return subprocess.run(command, capture_output=True, check=False, timeout=300)


def small_store(tmp_path: Path, size: int = 4 << 20) -> Store:
    """One store path holding one file of ``size`` random bytes."""
    store = Store(tmp_path / "in")
    top = store.add("data", "1")
    top.mkdir()
    (top / "blob").write_bytes(os.urandom(size))
    return store
