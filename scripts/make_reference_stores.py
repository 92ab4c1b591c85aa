#!/usr/bin/env python3
"""Generate the fake Nix stores the three reference images are built from.

The reference images are the ones people actually ship, built with nothing but
nixlayer's CLI (see ``scripts/build_reference_images.sh``):

- ``postgrest``: a static server from scratch, like PostgREST's own image: one static
  binary whose only reference is a tzdata-like data path.
- ``python-app``: a FastAPI + uvicorn app on a Python environment made like nixpkgs'
  ``python3.withPackages`` (a buildEnv of symlinks into the interpreter and the
  packages), with the libraries and references of the real closure: glibc, zlib,
  libffi, openssl, the interpreter, seven packages whose ``nix-support`` names what
  they propagate, and uvicorn's script whose shebang is the interpreter.  The same
  store holds ``bash`` and ``coreutils`` (coreutils as nixpkgs builds it: one binary
  and symlinks) for the debug variant.

Each store is rebuilt from scratch and is identical byte for byte on every run, made
with the helpers of ``make_fixture_store.py``; the closures (``nix path-info --json``
lists with real narSize and narHash, references found by scanning the contents) go
to ``fixtures/reference/*-closure.json``, which are committed.

Usage: ``python scripts/make_reference_stores.py [TARGET] [--closures-out DIR]``
(defaults ``fixtures/reference/store`` and ``fixtures/reference``): stores in
``TARGET/postgrest`` and ``TARGET/python-app``.  ``--path NAME`` prints the store path
of a name (``postgrest-12.0.2``, ``python3-3.11.9-env``…) and generates nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))  # make_fixture_store, beside this file

from make_fixture_store import (
    REPO,
    Builder,
    closure_entries,
    closure_json,
    closure_of,
    fake_elf,
    make_store_dir,
    reset_store,
    store_path,
)

NAMESPACE = "nixlayer-reference"
PYTHON_VERSION = "3.11"
SITE_PACKAGES = f"lib/python{PYTHON_VERSION}/site-packages"

TZDATA = "tzdata-2024a"
POSTGREST = "postgrest-12.0.2"

GLIBC = "glibc-2.39-52"
ZLIB = "zlib-1.3.1"
LIBFFI = "libffi-3.4.6"
OPENSSL = "openssl-3.0.14"
PYTHON = "python3-3.11.9"
PYTHON_ENV = "python3-3.11.9-env"
BASH = "bash-5.2p26"
COREUTILS = "coreutils-9.4"
COREUTILS_PROGRAMS = ("cat", "echo", "env", "id", "ls", "mkdir", "rm", "sleep")


@dataclass(frozen=True)
class PythonPackage:
    """A package as nixpkgs' buildPythonPackage installs it: its module in
    site-packages, a dist-info, and the packages it propagates listed by store path
    in ``nix-support/propagated-build-inputs`` (which is what makes them references)."""

    name: str  # the store path's name
    module: str
    version: str
    files: tuple[str, ...]  # module files besides __init__.py
    propagates: tuple[str, ...] = ()  # store path names
    scripts: tuple[str, ...] = ()  # bin/ entry points


PACKAGES = (
    PythonPackage("python3.11-anyio-4.3.0", "anyio", "4.3.0", ("_core/_eventloop.py",)),
    PythonPackage("python3.11-h11-0.14.0", "h11", "0.14.0", ("_connection.py",)),
    PythonPackage("python3.11-click-8.1.7", "click", "8.1.7", ("core.py",)),
    PythonPackage("python3.11-pydantic-2.7.1", "pydantic", "2.7.1", ("main.py",)),
    PythonPackage(
        "python3.11-starlette-0.37.2",
        "starlette",
        "0.37.2",
        ("applications.py", "routing.py"),
        propagates=("python3.11-anyio-4.3.0",),
    ),
    PythonPackage(
        "python3.11-fastapi-0.110.1",
        "fastapi",
        "0.110.1",
        ("applications.py", "routing.py"),
        propagates=("python3.11-starlette-0.37.2", "python3.11-pydantic-2.7.1"),
    ),
    PythonPackage(
        "python3.11-uvicorn-0.29.0",
        "uvicorn",
        "0.29.0",
        ("main.py", "__main__.py"),
        propagates=("python3.11-click-8.1.7", "python3.11-h11-0.14.0"),
        scripts=("uvicorn",),
    ),
)

POSTGREST_NAMES = (TZDATA, POSTGREST)
PYTHON_APP_NAMES = (
    GLIBC,
    ZLIB,
    LIBFFI,
    OPENSSL,
    PYTHON,
    *(package.name for package in PACKAGES),
    PYTHON_ENV,
    BASH,
    COREUTILS,
)
PATHS = {name: store_path(name, NAMESPACE) for name in (*POSTGREST_NAMES, *PYTHON_APP_NAMES)}


def _lib(name: str) -> str:
    return f"{PATHS[name]}/lib"


def _filler(label: str, size: int) -> bytes:
    """Deterministic bytes standing in for machine code, so sizes are realistic."""
    return hashlib.shake_256(label.encode()).digest(size)


def _binary(label: str, needs: Collection[str], size: int) -> bytes:
    """A dynamically linked stand-in whose RUNPATH names the ``lib`` of ``needs``."""
    return fake_elf(label, [_lib(n) for n in needs]) + _filler(label, size)


def _builder(root: Path, name: str) -> Builder:
    builder = Builder(root, name, PATHS)
    builder.dir("")
    return builder


# --- postgrest ---------------------------------------------------------------------


def build_tzdata(root: Path) -> None:
    b = _builder(root, TZDATA)
    b.file("share/zoneinfo/UTC", b"TZif2" + bytes(39) + b"UTC0\n")
    b.file("share/zoneinfo/Europe/Berlin", b"TZif2" + _filler("Europe/Berlin", 700))
    b.symlink("share/zoneinfo/Etc/UTC", "../UTC")
    b.file("share/zoneinfo/zone1970.tab", b"DE\t+5230+01322\tEurope/Berlin\n")


def build_postgrest(root: Path) -> None:
    """A static executable: no RUNPATH, no interpreter; it finds time zones in tzdata."""
    b = _builder(root, POSTGREST)
    static = (
        b"\x7fELF\x02\x01\x01\x00postgrest (statically linked)\0"
        + f"TZDIR={PATHS[TZDATA]}/share/zoneinfo\0".encode()
        + _filler("postgrest", 8192)
    )
    b.file("bin/postgrest", static, 0o755)


# --- python-app ----------------------------------------------------------------------


def build_glibc(root: Path) -> None:
    b = _builder(root, GLIBC)
    b.file("lib/libc.so.6", _binary("libc", [GLIBC], 96 * 1024))
    b.file("lib/libm.so.6", _binary("libm", [GLIBC], 24 * 1024))
    b.file("lib/ld-linux-x86-64.so.2", _binary("ld.so", [GLIBC], 8 * 1024), 0o755)
    b.file("share/locale/locale.alias", b"C.UTF-8 C.UTF-8\n")


def build_zlib(root: Path) -> None:
    b = _builder(root, ZLIB)
    b.file("lib/libz.so.1.3.1", _binary("libz", [GLIBC], 4 * 1024), 0o755)
    b.symlink("lib/libz.so.1", "libz.so.1.3.1")


def build_libffi(root: Path) -> None:
    b = _builder(root, LIBFFI)
    b.file("lib/libffi.so.8.1.4", _binary("libffi", [GLIBC], 2 * 1024), 0o755)
    b.symlink("lib/libffi.so.8", "libffi.so.8.1.4")


def build_openssl(root: Path) -> None:
    b = _builder(root, OPENSSL)
    b.file("lib/libcrypto.so.3", _binary("libcrypto", [ZLIB, GLIBC], 32 * 1024), 0o755)
    b.file("lib/libssl.so.3", _binary("libssl", [OPENSSL, GLIBC], 8 * 1024), 0o755)
    b.file("etc/ssl/openssl.cnf", b"openssl_conf = openssl_init\n[openssl_init]\n")


def build_python(root: Path) -> None:
    """The interpreter: libpython, the standard library, and extension modules that
    link openssl, libffi and zlib, which is how the real one references them."""
    b = _builder(root, PYTHON)
    stdlib = f"lib/python{PYTHON_VERSION}"
    dynload = f"{stdlib}/lib-dynload"
    b.file(f"bin/python{PYTHON_VERSION}", _binary("python", [PYTHON, GLIBC], 4 * 1024), 0o755)
    b.symlink("bin/python3", f"python{PYTHON_VERSION}")
    b.file("lib/libpython3.11.so.1.0", _binary("libpython", [GLIBC], 128 * 1024), 0o755)
    b.file(f"{stdlib}/os.py", b'"""OS routines for NT or Posix."""\nimport abc\nimport sys\n')
    b.file(f"{stdlib}/site.py", b'"""Append module search paths for third-party packages."""\n')
    b.file(f"{stdlib}/json/__init__.py", b'"""JSON (JavaScript Object Notation)."""\n')
    for module, needs in (("_ssl", OPENSSL), ("_ctypes", LIBFFI), ("zlib", ZLIB)):
        so = f"{dynload}/{module}.cpython-311-x86_64-linux-gnu.so"
        b.file(so, _binary(module, [needs, GLIBC], 2 * 1024), 0o755)
    b.file(f"{SITE_PACKAGES}/README.txt", b"This directory exists so that 3rd party packages")


def _module_text(package: PythonPackage, file: str) -> bytes:
    return f'"""{package.module}/{file}, version {package.version}."""\n'.encode()


def _script(package: PythonPackage) -> bytes:
    """An entry point as nixpkgs wraps it: the interpreter's store path as shebang,
    the package's own propagated site-packages on sys.path."""
    site_dirs = [PATHS[package.name], *(PATHS[n] for n in package.propagates)]
    additions = "".join(f"site.addsitedir('{d}/{SITE_PACKAGES}')\n" for d in site_dirs)
    return (
        f"#!{PATHS[PYTHON]}/bin/python{PYTHON_VERSION}\n"
        f"# -*- coding: utf-8 -*-\nimport site\nimport sys\n{additions}"
        f"from {package.module}.main import main\nsys.exit(main())\n"
    ).encode()


def build_python_package(root: Path, package: PythonPackage) -> None:
    b = _builder(root, package.name)
    module = f"{SITE_PACKAGES}/{package.module}"
    b.file(f"{module}/__init__.py", f'__version__ = "{package.version}"\n'.encode())
    for file in package.files:
        b.file(f"{module}/{file}", _module_text(package, file))
    dist_info = f"{SITE_PACKAGES}/{package.module}-{package.version}.dist-info"
    b.file(
        f"{dist_info}/METADATA",
        f"Metadata-Version: 2.1\nName: {package.module}\nVersion: {package.version}\n".encode(),
    )
    b.file(f"{dist_info}/top_level.txt", f"{package.module}\n".encode())
    if package.propagates:
        inputs = " ".join(PATHS[n] for n in package.propagates)
        b.file("nix-support/propagated-build-inputs", f"{inputs}\n".encode())
    for script in package.scripts:
        b.file(f"bin/{script}", _script(package), 0o755)


def build_python_env(root: Path) -> None:
    """``python3.withPackages``: a buildEnv whose ``bin/`` links the interpreter and the
    packages' scripts, and whose site-packages links each package's module and
    dist-info (a whole directory is linked where only one package provides it)."""
    b = _builder(root, PYTHON_ENV)
    for program in ("python3", f"python{PYTHON_VERSION}"):
        b.symlink(f"bin/{program}", f"{PATHS[PYTHON]}/bin/{program}")
    for package in PACKAGES:
        for script in package.scripts:
            b.symlink(f"bin/{script}", f"{PATHS[package.name]}/bin/{script}")
        site = f"{PATHS[package.name]}/{SITE_PACKAGES}"
        for entry in (package.module, f"{package.module}-{package.version}.dist-info"):
            b.symlink(f"{SITE_PACKAGES}/{entry}", f"{site}/{entry}")


def build_bash(root: Path) -> None:
    b = _builder(root, BASH)
    b.file("bin/bash", _binary("bash", [GLIBC], 16 * 1024), 0o755)
    b.symlink("bin/sh", "bash")


def build_coreutils(root: Path) -> None:
    """As nixpkgs builds it (``singleBinary = "symlinks"``): one binary, a link a program."""
    b = _builder(root, COREUTILS)
    b.file("bin/coreutils", _binary("coreutils", [GLIBC], 16 * 1024), 0o755)
    for program in COREUTILS_PROGRAMS:
        b.symlink(f"bin/{program}", "coreutils")


# --- the stores and their closures -------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One fake store: how to build its paths, and the closures taken from it."""

    name: str  # its folder under the target
    names: tuple[str, ...]
    build: Callable[[Path], None]
    closures: dict[str, tuple[str, ...]]  # closure file stem → root names


def build_postgrest_store(root: Path) -> None:
    build_tzdata(root)
    build_postgrest(root)


def build_python_app_store(root: Path) -> None:
    for build in (build_glibc, build_zlib, build_libffi, build_openssl, build_python):
        build(root)
    for package in PACKAGES:
        build_python_package(root, package)
    build_python_env(root)
    build_bash(root)
    build_coreutils(root)


STORES = (
    Store("postgrest", POSTGREST_NAMES, build_postgrest_store, {"postgrest": (POSTGREST,)}),
    Store(
        "python-app",
        PYTHON_APP_NAMES,
        build_python_app_store,
        {
            "python-app": (PYTHON_ENV,),
            "python-app-debug": (PYTHON_ENV, BASH, COREUTILS),
        },
    ),
)


def make_store(target: Path, store: Store) -> dict[str, list[dict[str, Any]]]:
    """Rebuild one store at ``target`` and return its closures by file stem."""
    reset_store(target)
    make_store_dir(target)
    store.build(target)
    entries = closure_entries(target, [PATHS[name] for name in store.names])
    by_path = {entry["path"]: entry for entry in entries}
    closures = {}
    for stem, roots in store.closures.items():
        members = closure_of([PATHS[name] for name in roots], by_path)
        closures[stem] = [entry for entry in entries if entry["path"] in members]
    return closures


def make_reference_stores(target: Path) -> dict[str, list[dict[str, Any]]]:
    """Rebuild every reference store under ``target``; every closure by file stem."""
    closures: dict[str, list[dict[str, Any]]] = {}
    for store in STORES:
        closures.update(make_store(target / store.name, store))
    return closures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    reference = REPO / "fixtures" / "reference"
    parser.add_argument("target", nargs="?", type=Path, default=reference / "store")
    parser.add_argument("--closures-out", type=Path, default=reference)
    parser.add_argument("--path", choices=sorted(PATHS), help="print this name's store path")
    args = parser.parse_args(argv)
    if args.path:
        print(PATHS[args.path])
        return 0
    closures = make_reference_stores(args.target)
    args.closures_out.mkdir(parents=True, exist_ok=True)
    for stem, entries in closures.items():
        out = args.closures_out / f"{stem}-closure.json"
        out.write_text(closure_json(entries), encoding="utf-8")
        print(f"{len(entries)} store paths in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
