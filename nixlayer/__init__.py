"""nixlayer: turn a Nix closure into a layered, reproducible container image.

The data flows one way, one module per stage:
closure file → ``readers`` → ``Closure`` → ``graph`` → ``strategies`` → ``Plan``
→ ``layers`` and ``tarwriter`` (one tar per layer) → ``formats`` (docker-archive, OCI
layout, oci-archive) → a file or folder. ``build`` runs those steps in order,
``api`` is what users call, ``options`` what they pass, ``cli`` and ``report`` the
command line over it.

The API is exported here and imported on first use, so that ``import nixlayer``
(and the command line's start) stays cheap::

    import nixlayer

    built = nixlayer.build_image("closure.json", nixlayer.BuildOptions(
        output=nixlayer.Output(path="image.tar")))
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nixlayer.api import (
        BuiltImage,
        Progress,
        VerifyReport,
        build_image,
        describe_image,
        diff_builds,
        fleet_plan_files,
        plan_fleet,
        plan_image,
        read_closure,
        read_image,
        save_plans,
        verify_image,
    )
    from nixlayer.closure import Closure
    from nixlayer.errors import NixlayerError
    from nixlayer.fleet import FleetPlan
    from nixlayer.image import SourceImage, WrittenImage, WrittenLayer
    from nixlayer.measure import PushCost
    from nixlayer.options import (
        AddFiles,
        BuildOptions,
        ClosureInput,
        Customisation,
        Identity,
        Layering,
        MakeDirectory,
        MakeSymlink,
        Output,
        RunConfig,
    )
    from nixlayer.plan import Plan, PlanLayer

# Each exported name → the module that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ("BuiltImage", "Progress", "VerifyReport", "build_image", "describe_image",
         "diff_builds", "fleet_plan_files", "plan_fleet", "plan_image", "read_closure",
         "read_image", "save_plans", "verify_image"),
        "nixlayer.api",
    ),
    **dict.fromkeys(
        ("AddFiles", "BuildOptions", "ClosureInput", "Customisation", "Identity", "Layering",
         "MakeDirectory", "MakeSymlink", "Output", "RunConfig"),
        "nixlayer.options",
    ),
    "Closure": "nixlayer.closure",
    "NixlayerError": "nixlayer.errors",
    "FleetPlan": "nixlayer.fleet",
    "SourceImage": "nixlayer.image",
    "WrittenImage": "nixlayer.image",
    "WrittenLayer": "nixlayer.image",
    "PushCost": "nixlayer.measure",
    "Plan": "nixlayer.plan",
    "PlanLayer": "nixlayer.plan",
}  # fmt: skip
__all__ = [
    "AddFiles",
    "BuildOptions",
    "BuiltImage",
    "Closure",
    "ClosureInput",
    "Customisation",
    "FleetPlan",
    "Identity",
    "Layering",
    "MakeDirectory",
    "MakeSymlink",
    "NixlayerError",
    "Output",
    "Plan",
    "PlanLayer",
    "Progress",
    "PushCost",
    "RunConfig",
    "SourceImage",
    "VerifyReport",
    "WrittenImage",
    "WrittenLayer",
    "build_image",
    "describe_image",
    "diff_builds",
    "fleet_plan_files",
    "plan_fleet",
    "plan_image",
    "read_closure",
    "read_image",
    "save_plans",
    "verify_image",
    "version",
]


def __getattr__(name: str) -> Any:
    """An exported name, from its module, imported the first time it is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nixlayer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


@functools.cache
def version() -> str:
    """nixlayer's version, from pyproject.toml (its one source), wherever the code runs
    from: an install's ``nixlayer-VERSION.dist-info`` folder beside the package (named
    so by the wheel format), the checkout's pyproject.toml, the package metadata as
    ``importlib.metadata`` finds it, else ``unknown``. The first two cost a directory
    listing or a small read; ``importlib.metadata`` scans every installed distribution
    (some 18 ms), and the version is written into every image's history."""
    package = Path(__file__).resolve().parent
    for info in sorted(package.parent.glob("nixlayer-*.dist-info")):
        return info.name.removeprefix("nixlayer-").removesuffix(".dist-info")
    try:
        pyproject = (package.parent / "pyproject.toml").read_text()
    except (OSError, ValueError):
        pyproject = ""
    found = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    if found:
        return found[1]
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nixlayer")
    except PackageNotFoundError:
        return "unknown"
