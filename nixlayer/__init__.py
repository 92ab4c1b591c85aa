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
    """nixlayer's version, from pyproject.toml (its one source): as installed, else as
    in the checkout this module sits in, else ``unknown``. Looked up on demand, as the
    lookup costs every run that does not need it its time."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nixlayer")
    except PackageNotFoundError:
        pass
    try:
        pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    except (OSError, ValueError):
        return "unknown"
    found = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    return found[1] if found else "unknown"
