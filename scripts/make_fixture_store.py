#!/usr/bin/env python3
"""Generate the fake Nix store the end-to-end tests turn into an image.

The tree is rebuilt from scratch on every run and is identical byte for byte (names,
contents, modes, hard links), so its closure file ``fixtures/store-closure.json`` can
be committed while the tree itself stays out of git.  Each store path exercises
something the layer writer must get right: long names, UTF-8, hard links inside one
store path and across two, symlinks (relative, absolute, a whole store path), an
empty directory, a store path that is one file, a 1 MiB file, and modes on disk that
are not Nix's canonical ones.

Usage: ``python scripts/make_fixture_store.py [TARGET] [--closure-out FILE]``
(defaults ``fixtures/store`` and ``fixtures/store-closure.json``).

The building blocks (``Builder``, ``fake_elf``, ``store_path``, ``closure_entries``,
``reset_store``…) take the store paths they work on as arguments, so that other fake
stores (``scripts/make_reference_stores.py``, the podman test) are made the same way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # for a checkout without `pip install -e .`; installed wins

from nixlayer.store import nar_size, walk_store_path  # noqa: E402

STORE_DIR = "/nix/store"
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"

# Store path names, in the order they are created.  The reference DAG (found by
# scanning contents, as Nix does) is:
#   app → curl, openssl, glibc, app-config.json, libc-link, docs-long-names, app (self)
#   curl → openssl, zlib, glibc          (diamond: curl → {openssl, zlib} → glibc)
#   openssl → zlib, glibc;  zlib → glibc;  libc-link → glibc;  glibc → glibc (self)
NAMES = (
    "glibc-2.38-27",
    "zlib-1.3.1",
    "openssl-3.0.13",
    "curl-8.6.0",
    "app-config.json",
    "libc-link",
    "docs-long-names-1.0",
    "app-1.0",
)

# Shared by zlib and openssl through one inode: the default plan gives each its own
# layer, so the image must carry it twice as independent files.
LICENSE_TEXT = b"zlib License\n\n(C) 1995-2024 Jean-loup Gailly and Mark Adler\n"
LONG_FILE_NAME = "a-file-name-longer-than-one-hundred-bytes-" + "x" * 70 + ".txt"
LONG_DIR_NAMES = tuple(f"level-{i}-" + "d" * 60 for i in range(4))


def nix_base32(data: bytes) -> str:
    """Nix's base-32 encoding (its own alphabet and bit order), as in store path hashes."""
    length = (len(data) * 8 - 1) // 5 + 1
    chars = []
    for n in range(length - 1, -1, -1):
        byte, bit = divmod(n * 5, 8)
        value = data[byte] >> bit
        if byte + 1 < len(data):
            value |= data[byte + 1] << (8 - bit)
        chars.append(NIX_BASE32[value & 0x1F])
    return "".join(chars)


def store_path(name: str, namespace: str = "nixlayer-fixture") -> str:
    """A stable store path for a name: sha256 folded to 20 bytes, as Nix compresses it.

    Each fake store has its own ``namespace``, so that two stores' paths of one name
    (two different zlibs) never share a hash, as they could not in a real store.
    """
    digest = hashlib.sha256(f"{namespace}:{name}".encode()).digest()
    folded = bytearray(20)
    for i, byte in enumerate(digest):
        folded[i % 20] ^= byte
    return f"{STORE_DIR}/{nix_base32(bytes(folded))}-{name}"


PATHS = {name: store_path(name) for name in NAMES}


class Builder:
    """Writes one store path's entries under the target store root.

    Every mode is set explicitly (directories made on the way get 0755), so the tree
    does not depend on the umask of whoever generates it.  ``paths`` maps names to
    store paths: this fixture's by default, another fake store's when it has its own.
    """

    def __init__(self, root: Path, name: str, paths: Mapping[str, str] = PATHS) -> None:
        self.top = root / paths[name].lstrip("/")

    def _at(self, rel: str) -> Path:
        """The disk path for ``rel``, creating missing parent directories as 0755."""
        path = self.top / rel if rel else self.top
        missing = [p for p in path.parents if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            parent.chmod(0o755)
        return path

    def dir(self, rel: str, mode: int = 0o755) -> Path:
        path = self._at(rel)
        path.mkdir()
        path.chmod(mode)
        return path

    def file(self, rel: str, content: bytes, mode: int = 0o644) -> Path:
        path = self._at(rel)
        path.write_bytes(content)
        path.chmod(mode)
        return path

    def symlink(self, rel: str, target: str) -> None:
        self._at(rel).symlink_to(target)

    def hardlink(self, rel: str, existing: Path) -> None:
        os.link(existing, self._at(rel))


def fake_elf(label: str, runpath: Collection[str]) -> bytes:
    """Stand-in ELF bytes whose RUNPATH names store directories, as a real one would:
    what makes Nix's reference scan find the store paths a binary needs."""
    return (
        b"\x7fELF\x02\x01\x01\x00"
        + f"{label}\0RUNPATH={':'.join(runpath)}\0".encode()
        + bytes(range(256))
    )


def _elf(label: str, *needs: str) -> bytes:
    """Fake library bytes naming the store paths it needs, so references can be scanned."""
    return fake_elf(label, [f"{PATHS[n]}/lib" for n in needs])


def build_glibc(root: Path) -> None:
    b = Builder(root, "glibc-2.38-27")
    b.dir("")
    b.file("lib/libc.so.6", _elf("libc", "glibc-2.38-27"), 0o644)
    b.file("lib/ld-linux-x86-64.so.2", _elf("ld.so", "glibc-2.38-27"), 0o755)
    b.symlink("lib/libc.so", "libc.so.6")
    b.file("lib/locale/locale-archive", hashlib.shake_256(b"locale-archive").digest(1 << 20))
    b.file("share/i18n/locales/français-ñ_日本", b'LC_IDENTIFICATION\ntitle "UTF-8 name"\n')
    b.dir("etc/ld.so.conf.d")  # stays empty
    b.file("bin/ldd", f"#!{PATHS['glibc-2.38-27']}/bin/sh\necho ldd\n".encode(), 0o700)
    b.dir("libexec", 0o700)
    b.file("libexec/getconf", b"getconf\n", 0o600)


def build_zlib(root: Path) -> Path:
    b = Builder(root, "zlib-1.3.1")
    b.dir("")
    lib = b.file("lib/libz.so.1.3.1", _elf("libz", "glibc-2.38-27"), 0o755)
    b.hardlink("lib/libz.so.1", lib)  # two names, one inode, one store path
    b.symlink("lib/libz.so", "libz.so.1")
    return b.file("share/licenses/zlib/LICENSE", LICENSE_TEXT, 0o644)


def build_openssl(root: Path, zlib_license: Path) -> None:
    b = Builder(root, "openssl-3.0.13")
    b.dir("")
    b.file("lib/libssl.so.3", _elf("libssl", "zlib-1.3.1", "glibc-2.38-27"), 0o755)
    b.file("lib/libcrypto.so.3", _elf("libcrypto", "glibc-2.38-27"), 0o755)
    b.file("bin/openssl", _elf("openssl", "openssl-3.0.13"), 0o755)
    # "ssl" sorts before "ssl.cnf" as a name, but "ssl/" sorts after it: archive
    # order must follow names, not names with a trailing slash.
    b.file("etc/ssl/certs/ca-bundle.crt", b"-----BEGIN CERTIFICATE-----\n", 0o444)
    b.file("etc/ssl.cnf", b"[openssl_init]\n", 0o664)
    b.hardlink("share/licenses/zlib/LICENSE", zlib_license)  # a link across store paths


def build_curl(root: Path) -> None:
    b = Builder(root, "curl-8.6.0")
    b.dir("")
    needs = ("openssl-3.0.13", "zlib-1.3.1", "glibc-2.38-27")
    b.file("lib/libcurl.so.4.8.0", _elf("libcurl", *needs), 0o755)
    b.symlink("lib/libcurl.so.4", "libcurl.so.4.8.0")
    b.file("bin/curl", _elf("curl", "glibc-2.38-27"), 0o555)
    b.file("share/man/man1/curl.1", b".TH curl 1\n", 0o444)


def build_app_config(root: Path) -> None:
    Builder(root, "app-config.json").file("", b'{"listen": 8080, "debug": false}\n', 0o644)


def build_libc_link(root: Path) -> None:
    Builder(root, "libc-link").symlink("", f"{PATHS['glibc-2.38-27']}/lib/libc.so.6")


def build_docs(root: Path) -> None:
    b = Builder(root, "docs-long-names-1.0")
    b.dir("")
    deep = "share/doc/" + "/".join(LONG_DIR_NAMES)
    b.file(f"{deep}/{LONG_FILE_NAME}", b"a path longer than 255 bytes\n", 0o644)
    b.file(f"share/doc/{LONG_FILE_NAME}", b"a name longer than 100 bytes\n", 0o644)
    b.symlink("share/doc/deepest", f"{'/'.join(LONG_DIR_NAMES)}/{LONG_FILE_NAME}")


def build_app(root: Path) -> None:
    b = Builder(root, "app-1.0")
    b.dir("")
    libs = f"{PATHS['curl-8.6.0']}/lib:{PATHS['openssl-3.0.13']}/lib"
    script = (
        f"#!/bin/sh\nexport LD_LIBRARY_PATH={libs}\n"
        f"exec {PATHS['app-1.0']}/libexec/app --config {PATHS['app-config.json']} "
        f'--docs {PATHS["docs-long-names-1.0"]} "$@"\n'
    )
    b.file("bin/app", script.encode(), 0o755)
    b.file("libexec/app", _elf("app", "curl-8.6.0", "glibc-2.38-27"), 0o775)
    b.symlink("lib/ld.so", f"{PATHS['glibc-2.38-27']}/lib/ld-linux-x86-64.so.2")
    b.symlink("lib/libc.so.6", PATHS["libc-link"])
    b.symlink("share/app/app", "../../bin/app")
    b.file("share/app/README", b"plain text, no store references\n", 0o444)


def make_store_dir(root: Path) -> None:
    """``root/nix/store``, every level 0755 whatever the umask."""
    store = root / STORE_DIR.lstrip("/")
    store.mkdir(parents=True)
    for directory in (root, store.parent, store):
        directory.chmod(0o755)


def build_store(root: Path) -> None:
    """Create every store path under ``root`` (a store root: ``root/nix/store/…``)."""
    make_store_dir(root)
    build_glibc(root)
    zlib_license = build_zlib(root)
    build_openssl(root, zlib_license)
    build_curl(root)
    build_app_config(root)
    build_libc_link(root)
    build_docs(root)
    build_app(root)


def _nar_string(sink: Callable[[bytes], None], data: bytes) -> None:
    sink(len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8))


def _dump(sink: Callable[[bytes], None], path: bytes) -> None:
    """Serialise one node the way ``nix-store --dump`` does (entries sorted bytewise)."""
    st = os.lstat(path)
    _nar_string(sink, b"(")
    _nar_string(sink, b"type")
    if stat.S_ISREG(st.st_mode):
        _nar_string(sink, b"regular")
        if st.st_mode & stat.S_IXUSR:
            _nar_string(sink, b"executable")
            _nar_string(sink, b"")
        _nar_string(sink, b"contents")
        with open(path, "rb") as f:
            _nar_string(sink, f.read())
    elif stat.S_ISLNK(st.st_mode):
        _nar_string(sink, b"symlink")
        _nar_string(sink, b"target")
        _nar_string(sink, os.readlink(path))
    else:
        _nar_string(sink, b"directory")
        for name in sorted(os.listdir(path)):
            for token in (b"entry", b"(", b"name", name, b"node"):
                _nar_string(sink, token)
            _dump(sink, os.path.join(path, name))
            _nar_string(sink, b")")
    _nar_string(sink, b")")


def nar_hash(disk_path: bytes) -> tuple[str, int]:
    """The real narHash (SRI sha256) and the byte count of the NAR it was taken over."""
    digest = hashlib.sha256()
    size = 0

    def sink(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)

    _nar_string(sink, b"nix-archive-1")
    _dump(sink, disk_path)
    return "sha256-" + base64.b64encode(digest.digest()).decode(), size


def _scan_references(disk_path: bytes, candidates: Collection[str]) -> list[str]:
    """The ``candidates`` whose hash part occurs in a file or symlink target, as Nix
    scans them."""
    blobs = []
    for dirpath, dirnames, filenames in os.walk(disk_path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                blobs.append(os.readlink(full))
            elif os.path.isfile(full):
                blobs.append(Path(os.fsdecode(full)).read_bytes())
    if os.path.islink(disk_path):
        blobs.append(os.readlink(disk_path))
    elif os.path.isfile(disk_path):
        blobs.append(Path(os.fsdecode(disk_path)).read_bytes())
    found = set()
    for path in candidates:
        hash_part = path[len(STORE_DIR) + 1 :][:32].encode()
        if any(hash_part in blob for blob in blobs):
            found.add(path)
    return sorted(found)


def closure_entries(
    root: Path, store_paths: Collection[str] = tuple(PATHS.values())
) -> list[dict[str, Any]]:
    """The store's ``nix path-info --json --recursive --closure-size`` (Nix ≤ 2.18 list).

    References are looked for among ``store_paths`` only, which must be closed under
    them: what Nix scans for are the paths the build could see.
    """
    entries: dict[str, dict[str, Any]] = {}
    root_bytes = os.fsencode(root)
    for path in sorted(store_paths):
        disk = os.path.join(root_bytes, os.fsencode(path.lstrip("/")))
        size = nar_size(walk_store_path(root_bytes, path))
        digest, dumped = nar_hash(disk)
        if dumped != size:
            raise AssertionError(f"{path}: nar_size {size} but the NAR has {dumped} bytes")
        entries[path] = {
            "path": path,
            "narHash": digest,
            "narSize": size,
            "references": _scan_references(disk, store_paths),
        }
    for entry in entries.values():
        entry["closureSize"] = sum(
            entries[p]["narSize"] for p in closure_of([entry["path"]], entries)
        )
    return list(entries.values())


def closure_of(roots: Collection[str], entries: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The store paths reachable from ``roots`` through ``entries``' references."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(entries[current]["references"])
    return seen


def reset_store(target: Path) -> None:
    """Remove ``target`` if it exists, read-only directories included.

    Removing first makes a rerun identical to a fresh run, whatever an earlier run or
    a test left behind (touched mtimes, changed modes).
    """
    if target.exists() or target.is_symlink():
        for dirpath, dirnames, _ in os.walk(target):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755, follow_symlinks=False)
        shutil.rmtree(target)


def make_fixture_store(target: Path) -> list[dict[str, Any]]:
    """Rebuild the store tree at ``target`` (removing what was there) and return its closure."""
    reset_store(target)
    build_store(target)
    return closure_entries(target)


def closure_json(entries: list[dict[str, Any]]) -> str:
    """The closure as committed: indented like ``nix path-info --json | jq``, sorted keys."""
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", type=Path, default=REPO / "fixtures" / "store")
    parser.add_argument(
        "--closure-out", type=Path, default=REPO / "fixtures" / "store-closure.json"
    )
    args = parser.parse_args(argv)
    entries = make_fixture_store(args.target)
    args.closure_out.write_text(closure_json(entries), encoding="utf-8")
    print(f"{len(entries)} store paths under {args.target}, closure in {args.closure_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
