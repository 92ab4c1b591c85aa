"""Nix: a small closure built by a real Nix, and nix-build of the repository's Nix files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Plain derivations with /bin/sh as builder (no nixpkgs needed).  Outputs mention
# each other so that Nix records references: app → left, right, config;
# left → base; right → base (a diamond); base → base (a self-reference).  The
# last command of every builder is `exit 0`: Nix 2.8 may kill a builder whose last
# command is an external program.
CLOSURE_NIX = r"""
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; set -e\n${script}\nexit 0" ];
  };
  base = mk "nixlayer-test-base-1.0" ''
    mkdir -p $out/lib $out/bin
    echo "base library; loads plugins from $out/lib" > $out/lib/libbase.so
    ln -s libbase.so $out/lib/libbase.so.1
    printf '#!/bin/sh\necho base\n' > $out/bin/base
    chmod 755 $out/bin/base
  '';
  left = mk "nixlayer-test-left-1.0" ''
    mkdir -p $out/lib
    echo "left; needs ${base}/lib/libbase.so" > $out/lib/libleft.so
  '';
  right = mk "nixlayer-test-right-1.0" ''
    mkdir -p $out/lib
    echo "right" > $out/lib/libright.so
    ln -s ${base}/lib/libbase.so $out/lib/libbase.so
  '';
  config = mk "nixlayer-test-config.json" ''
    echo '{"greeting": "hello"}' > $out
  '';
  app = mk "nixlayer-test-app-1.0" ''
    mkdir -p $out/bin $out/share/doc
    echo '#!/bin/sh' > $out/bin/app
    echo "exec ${left}/lib/libleft.so ${right}/lib/libright.so ${config}" >> $out/bin/app
    chmod 555 $out/bin/app
    ln -s ${right} $out/share/right
    mkdir $out/share/empty
    echo "café" > $out/share/doc/README-é
  '';
  graph = derivation {
    name = "nixlayer-test-references-graph";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    exportReferencesGraph = [ "closure" app ];
    args = [ "-c" "export PATH=/usr/bin:/bin; cp closure $out; exit 0" ];
  };
  # Nix 2.8 writes .attrs.json/.attrs.sh in the build directory; newer Nix names
  # them in $NIX_ATTRS_JSON_FILE/$NIX_ATTRS_SH_FILE.  $out is only in .attrs.sh.
  attrs = derivation {
    name = "nixlayer-test-structured-attrs";
    system = builtins.currentSystem;
    builder = "/bin/bash";
    __structuredAttrs = true;
    exportReferencesGraph.closure = [ app ];
    args = [ "-c" ''
      export PATH=/usr/bin:/bin
      source "''${NIX_ATTRS_SH_FILE:-.attrs.sh}"
      cp "''${NIX_ATTRS_JSON_FILE:-.attrs.json}" "''${outputs[out]}"
      exit 0
    '' ];
  };
in { inherit app graph attrs; }
"""


@dataclass(frozen=True)
class NixClosure:
    """The built app and the three descriptions of its closure, as files; ``expression``
    is the Nix file of CLOSURE_NIX, for other expressions to import."""

    app: str
    paths: list[str]
    path_info: Path
    attrs: Path
    references_graph: Path
    expression: Path


def nix_missing() -> str | None:
    """Why the Nix tests cannot run here, or None when they can."""
    missing = [name for name in ("nix-build", "nix-instantiate", "nix") if not shutil.which(name)]
    if not missing:
        return None
    return f"{', '.join(missing)} not on PATH: run scripts/install-test-deps.sh"


def run_nix(*argv: str | os.PathLike[str], timeout: int = 300) -> str:
    """A Nix command's stdout; fails the test with what Nix said when it does not exit 0."""
    argv = tuple(map(str, argv))
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return result.stdout


def nix_build(
    expression: Path, attributes: Sequence[str], out_link: Path, *options: str
) -> list[Path]:
    """``nix-build`` some attributes of a Nix file: their output paths, in order.

    The out-links (``out_link``, ``out_link-2``…) keep the outputs from garbage
    collection while the tests read them.
    """
    selected = [argument for attribute in attributes for argument in ("-A", attribute)]
    built = run_nix("nix-build", expression, *selected, "-o", out_link, *options)
    return [Path(line) for line in built.split()]


def build_closure(workdir: Path) -> NixClosure:
    """Build (or find in the store: the derivations are fixed) the test closure."""
    expression = workdir / "closure.nix"
    expression.write_text(CLOSURE_NIX, encoding="utf-8")
    app, graph, attrs = nix_build(expression, ["app", "graph", "attrs"], workdir / "result")
    path_info = workdir / "path-info.json"
    path_info.write_text(
        run_nix("nix", "path-info", "--json", "--recursive", "--closure-size", app),
        encoding="utf-8",
    )
    paths = sorted(entry["path"] for entry in json.loads(path_info.read_text(encoding="utf-8")))
    return NixClosure(str(app), paths, path_info, attrs, graph, expression)
