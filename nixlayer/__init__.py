"""nixlayer: turn a Nix closure into a layered, reproducible container image.

The data flows one way, one module per stage:
closure file → ``readers`` → ``Closure`` → ``graph`` → ``strategies`` → ``Plan``
→ ``tarwriter`` (one tar per layer) → ``docker_archive`` (the image) → bytes.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path


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
