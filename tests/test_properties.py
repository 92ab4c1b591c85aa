"""Properties over generated input: closures that are almost right, random store trees
through the tar writer (and a few through umoci), and the same store made twice in
different ways giving the same bytes.

tests/test_readers.py already feeds arbitrary bytes, arbitrary JSON and arbitrary
references-graph lines to every reader; what it cannot reach is the code after the
readers, since random JSON is almost never a closure. The closures here are built
from valid and invalid store paths, references, sizes and shapes, so that many read
and go on through ``make_plan`` with every strategy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.run import run_ok
from support.tools import Tools, unpack_image
from support.trees import compare_tree

from nixlayer.closure import Closure
from nixlayer.errors import NixlayerError
from nixlayer.plan import make_plan
from nixlayer.readers import INPUT_FORMATS, read_closure
from nixlayer.store import store_layer_entries
from nixlayer.strategies import STRATEGIES
from nixlayer.tarwriter import lay_out, write_layer

STORE = "/nix/store"
_VALID = [f"{STORE}/{c * 32}-{name}" for c, name in (("0", "a"), ("1", "b-1.0"), ("2", "c"))]
_INVALID = [
    f"{STORE}/{'e' * 32}-bad-hash",
    f"{STORE}/{'1' * 32}-a/nested",
    f"{STORE}/../{'1' * 32}-up",
    "/elsewhere/" + "1" * 32 + "-x",
    f"{STORE}/{'1' * 32}-nul\0",
    "",
]
_NEVER_HANG = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- closures that are almost right ---------------------------------------------------

_SIZES = st.one_of(
    st.integers(0, 10**6),
    st.sampled_from([-1, 2**63, 2**63 - 1, 1.5, "12", True, None]),
)


@st.composite
def _entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few path-info entries over a small pool of paths, so that references often
    hit, sometimes miss, form cycles or point at the entry itself."""
    pool = draw(st.lists(st.sampled_from(_VALID), min_size=1, max_size=4, unique=True))
    names = st.sampled_from(pool) | st.sampled_from(_VALID + _INVALID)
    entries = []
    for path in pool + draw(st.lists(names, max_size=2)):
        entry: dict[str, Any] = {
            "path": path,
            "references": draw(st.lists(st.sampled_from(pool) | names, max_size=3)),
        }
        size = draw(_SIZES)
        if size is not None:
            entry["narSize"] = size
        if draw(st.integers(0, 9)) == 0:
            entry["valid"] = draw(st.sampled_from([False, True, "yes"]))
        entries.append(entry)
    return entries


def _serialise(entries: list[dict[str, Any]], shape: str) -> str:
    """The entries in one of the shapes Nix prints."""
    if shape == "path-info-list":
        return json.dumps(entries)
    if shape == "path-info-dict":
        return json.dumps({e["path"]: {k: v for k, v in e.items() if k != "path"} for e in entries})
    if shape == "path-info-v2":
        info = {_base(e["path"]): e for e in entries}
        for value in info.values():
            value["references"] = [_base(r) for r in value["references"]]
        return json.dumps({"version": 2, "storeDir": STORE, "info": info})
    if shape == "attrs":
        return json.dumps({"closure": entries, "name": "x"})
    lines = []
    for entry in entries:
        lines += [entry["path"], "", str(len(entry["references"])), *entry["references"]]
    return "\n".join(lines) + "\n"


def _base(path: str) -> str:
    """What formats 2 and 3 print for a path: the part after the store directory."""
    return path.removeprefix(STORE + "/")


@_NEVER_HANG
@given(
    entries=_entries(),
    shape=st.sampled_from(INPUT_FORMATS),
    forced=st.booleans(),
    strategy=st.sampled_from(sorted(STRATEGIES)),
    budget=st.integers(1, 4),
)
def test_near_closures_read_and_plan_or_fail_cleanly(
    tmp_path: Path,
    entries: list[dict[str, Any]],
    shape: str,
    forced: bool,
    strategy: str,
    budget: int,
) -> None:
    """Either a Closure whose plan is a partition within budget, or a one-line
    NixlayerError naming the file: no other exception, in any shape."""
    source = tmp_path / "closure"
    source.write_text(_serialise(json.loads(json.dumps(entries)), shape), encoding="utf-8")
    try:
        closure = read_closure(source, input_format=shape if forced else None)
    except NixlayerError as error:
        assert "\n" not in str(error) and str(error).startswith(f"{source}: ")
        return
    _check_closure(closure)
    try:
        plan = make_plan(_with_sizes(closure), strategy, budget)
    except NixlayerError as error:
        assert "cycle" in str(error), error
        return
    placed = [path for layer in plan.layers for path in layer.paths]
    assert sorted(placed) == sorted(closure.paths) and len(plan.layers) <= budget


def _check_closure(closure: Closure) -> None:
    for path, store_path in closure.paths.items():
        assert path in _VALID and set(store_path.references) <= closure.paths.keys()


def _with_sizes(closure: Closure) -> Closure:
    """Plain references-graph text has no sizes; the CLI reads them from disk."""
    from dataclasses import replace

    paths = {p: replace(sp, nar_size=sp.nar_size or 1) for p, sp in closure.paths.items()}
    return replace(closure, paths=paths)


# --- random store trees through the tar writer ----------------------------------------

_NAME_BYTES = st.binary(min_size=1, max_size=24).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
_NAMES = _NAME_BYTES | st.sampled_from([b"x" * 255, "naïve".encode(), b"\xff\xfe", b"-", b" "])
_MODES = st.sampled_from([0o644, 0o755, 0o600, 0o700, 0o400, 0o500, 0o444, 0o555, 0o750])


@dataclass(frozen=True)
class FileSpec:
    data: bytes
    mode: int


@dataclass(frozen=True)
class LinkSpec:
    target: bytes


@dataclass(frozen=True)
class TwinSpec:
    """A hard link to the n-th file created so far in the tree (modulo their number)."""

    index: int


Tree = dict[bytes, Any]  # name → FileSpec, LinkSpec, TwinSpec or a Tree

_LEAVES = st.one_of(
    st.builds(FileSpec, st.binary(max_size=2000), _MODES),
    st.builds(FileSpec, st.just(b"z" * 5000), _MODES),  # more than one tar block
    st.builds(LinkSpec, st.binary(min_size=1, max_size=300).filter(lambda t: b"\0" not in t)),
    st.builds(TwinSpec, st.integers(0, 10)),
)
_TREES = st.recursive(
    st.dictionaries(_NAMES, _LEAVES, max_size=4),
    lambda children: st.dictionaries(_NAMES, _LEAVES | children, max_size=4),
    max_leaves=14,
)
_TOPS = st.one_of(_TREES, st.builds(FileSpec, st.binary(max_size=100), _MODES), _LEAVES)


def _make(path: bytes, node: Any, files: list[bytes]) -> None:
    """Create ``node`` at ``path``; hard links need a file made earlier in the tree,
    and become plain files when there is none yet."""
    if isinstance(node, dict):
        os.mkdir(path)
        for name, child in node.items():
            _make(os.path.join(path, name), child, files)
        os.chmod(path, 0o755)
    elif isinstance(node, LinkSpec):
        os.symlink(node.target, path)
    elif isinstance(node, TwinSpec) and files:
        os.link(files[node.index % len(files)], path)
    else:
        spec = node if isinstance(node, FileSpec) else FileSpec(b"twin", 0o644)
        with open(path, "wb") as file:
            file.write(spec.data)
        os.chmod(path, spec.mode)
        files.append(path)


def _on_disk(top: bytes, name: bytes) -> dict[bytes, tuple[str, int, bytes]]:
    """The tree as a tar of it must hold it: name → (kind, canonical mode, content or
    target), read with lstat and open, independently of nixlayer's walk."""
    st_ = os.lstat(top)
    if stat.S_ISLNK(st_.st_mode):
        return {name: ("symlink", 0o777, os.readlink(top))}
    if stat.S_ISREG(st_.st_mode):
        with open(top, "rb") as file:
            data = file.read()
        return {name: ("file", 0o555 if st_.st_mode & stat.S_IXUSR else 0o444, data)}
    tree = {name: ("dir", 0o555, b"")}
    for child in os.listdir(top):
        tree.update(_on_disk(os.path.join(top, child), name + b"/" + child))
    return tree


def _from_tar(data: bytes) -> dict[bytes, tuple[str, int, bytes]]:
    """The same view of a tar, which holds no hard link: a store's twins are files."""
    tree: dict[bytes, tuple[str, int, bytes]] = {}
    kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.REGTYPE: "file"}
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        for member in tar:
            name = os.fsencode(member.name)
            assert name not in tree, f"{name!r} twice"
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.mtime == 7
            assert not member.islnk(), f"{name!r} is a hard link"
            if member.issym():
                tree[name] = ("symlink", member.mode, os.fsencode(member.linkname))
            else:
                extracted = tar.extractfile(member) if member.isreg() else None
                tree[name] = (
                    kinds[member.type],
                    member.mode,
                    extracted.read() if extracted else b"",
                )
    return tree


@contextmanager
def _store_of(top: Any) -> Iterator[tuple[bytes, str]]:
    """A store root holding one store path made from ``top``."""
    root = tempfile.mkdtemp(prefix="nixlayer-prop-")
    path = f"{STORE}/{'5' * 32}-tree"
    try:
        os.makedirs(os.path.join(root, STORE.lstrip("/")))
        _make(os.fsencode(os.path.join(root, path.lstrip("/"))), top, [])
        yield os.fsencode(root), path
    finally:
        shutil.rmtree(root)


@settings(max_examples=120, deadline=None)
@given(top=_TOPS)
def test_random_trees_round_trip_through_the_tar_writer(top: Any) -> None:
    with _store_of(top) as (root, path):
        layout = lay_out(store_layer_entries(root, STORE, [path]), 7)
        out = io.BytesIO()
        digest = write_layer(layout, out.write)
        data = out.getvalue()
        assert len(data) == layout.size and digest == hashlib.sha256(data).hexdigest()
        name = os.fsencode(path.lstrip("/"))
        expected = _on_disk(os.path.join(root, name), name)
        expected |= {b"nix": ("dir", 0o755, b""), b"nix/store": ("dir", 0o755, b"")}
        assert _from_tar(data) == expected


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(top=_TREES)
def test_random_trees_unpack_with_umoci(top: Tree, tools: Tools, tmp_path: Path) -> None:
    """A few trees through the CLI, skopeo and umoci: the unpacked tree is the store,
    byte for byte, mode for mode (a hard-linked twin comes back as a file of its own)."""
    assume(top)
    with _store_of(top) as (root, path):
        workdir = Path(tempfile.mkdtemp(dir=tmp_path))
        closure = workdir / "closure.txt"
        closure.write_text(f"{path}\n\n0\n", encoding="utf-8")
        archive = workdir / "image.tar"
        run_ok("from-closure", closure, "--store-root", os.fsdecode(root), "-o", archive, "-q")
        rootfs = unpack_image(archive, workdir, tools.skopeo, tools.umoci)
        assert compare_tree(rootfs, Path(os.fsdecode(root)), [path]) == []


# --- the same store, made twice in different ways ---------------------------------------

_SPEC: dict[str, dict[str, Any]] = {
    # store path name → {relative name: bytes (a file), "->target" (a symlink), None (a dir)}
    "libbase-1.0": {
        "lib/libbase.so.1": b"\x7fELF base" * 300,
        "lib/libbase.so": "->libbase.so.1",
        "share/doc/README": b"readme\n",
        "share/empty": None,
    },
    "tool-2.0": {
        "bin/tool": b"#!/bin/sh\necho tool\n",
        "bin/\xe9t\xe9-latin1": b"not utf-8 name",
        "etc/tool.conf": b"x = 1\n",
        "lib/twin-a": b"same inode",
        "lib/twin-b": "=lib/twin-a",  # a hard link
    },
    "app-3.0": {f"data/{n:02d}": bytes([n]) * (n * 100) for n in range(30)}
    | {"bin/app": b"#!/bin/sh\nexec tool\n", "lib": "->/nix/store/base"},
}
_EXECUTABLE = {"bin/tool", "bin/app"}
_REFS = {"libbase-1.0": [], "tool-2.0": ["libbase-1.0"], "app-3.0": ["tool-2.0", "libbase-1.0"]}


def _store_path(name: str) -> str:
    return f"{STORE}/{hashlib.sha256(name.encode()).hexdigest()[:32].translate(_NIX32)}-{name}"


_NIX32 = str.maketrans("eotu", "0123")


def _make_store(root: Path, rng: random.Random) -> Path:
    """The store of ``_SPEC``, its entries created in an order ``rng`` decides (so that
    folders list in different orders), with random file times; returns the closure."""
    items = [(name, rel, value) for name, files in _SPEC.items() for rel, value in files.items()]
    rng.shuffle(items)
    links = [item for item in items if isinstance(item[2], str) and item[2].startswith("=")]
    for name, rel, value in [item for item in items if item not in links] + links:
        path = os.fsencode(root / _store_path(name).lstrip("/")) + b"/" + os.fsencode(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if value is None:
            os.makedirs(path, exist_ok=True)
        elif isinstance(value, bytes):
            with open(path, "wb") as file:
                file.write(value)
            os.chmod(path, 0o755 if rel in _EXECUTABLE else rng.choice([0o644, 0o600, 0o444]))
        elif value.startswith("->"):
            os.symlink(value[2:], path)
        else:
            twin = os.fsencode(root / _store_path(name).lstrip("/")) + b"/" + value[1:].encode()
            os.link(twin, path)
    for folder, _, names in os.walk(root):
        for entry in [folder, *(os.path.join(folder, n) for n in names)]:
            when = rng.randrange(10**9), rng.randrange(10**9)
            os.utime(entry, when, follow_symlinks=False)
    lines = []
    for name, refs in _REFS.items():
        lines += [_store_path(name), "", str(len(refs)), *map(_store_path, refs)]
    closure = root.parent / "closure.txt"
    closure.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return closure


def _listings(root: Path) -> list[list[str]]:
    return [os.listdir(folder) for folder, _, _ in sorted(os.walk(root))]


def _fingerprint(out: Path) -> dict[str, str]:
    """The sha256 of the file, or of every file of a layout folder."""
    files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
    return {
        str(p.relative_to(out.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


@pytest.fixture
def second_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on a tmpfs, whose folders list entries newest first, where tmp_path's
    (ext4 with hashed folders) list them in hash order: the two copies of a store then
    list differently. tmp_path itself where there is no /dev/shm."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "elsewhere"
        return
    folder = Path(tempfile.mkdtemp(prefix="nixlayer-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("image_format", "compress"),
    [
        ("docker-archive", "none"),
        ("docker-archive", "zstd"),
        ("oci", "gzip"),
        ("oci-archive", "zstd"),
    ],
)
def test_same_store_made_differently_gives_the_same_bytes(
    tmp_path: Path, second_filesystem: Path, image_format: str, compress: str
) -> None:
    """Two copies of one store on two file systems, created in different orders with
    different file times (mtimes and atimes) and file modes, built under different
    umasks, TZ, LANG and working folders with a relative -o: every output file has
    the same sha256."""
    copies = [
        (tmp_path, random.Random(1), 0o022, {"TZ": "UTC", "LANG": "C.UTF-8"}),
        (
            second_filesystem,
            random.Random(2),
            0o077,
            {"TZ": "Asia/Kathmandu", "LANG": "tr_TR.UTF-8", "LC_ALL": ""},
        ),
    ]
    prints, listings = [], []
    for base, rng, umask, env in copies:
        closure = _make_store(base / "store", rng)
        listings.append(_listings(base / "store"))
        work = base / "cwd" / f"deeper-{umask:o}"
        work.mkdir(parents=True)
        out = Path("image" if image_format == "oci" else "image.tar")
        environment = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"} | env
        run_ok("from-closure", closure, "--store-root", base / "store", "-o", out,
               "--format", image_format, "--compress", compress, "--no-cache", "-q",
               cwd=work, env=environment, umask=umask)  # fmt: skip
        prints.append(_fingerprint(work / out))
    if listings[0] == listings[1]:
        pytest.skip("no second file system listing folders in another order (/dev/shm)")
    assert prints[0] == prints[1]
