"""The external consumers that read images back: skopeo, umoci, podman and other tools
run as programs, their failures quoting what they said."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def podman(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """podman with its output captured, for the tests that load and run images."""
    return subprocess.run(
        ["podman", *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )


def _run_tool(argv: Sequence[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}{result.stdout}"


def skopeo_copy_to_oci(
    archive: Path, dest: Path, tag: str = "test", skopeo: str = "skopeo"
) -> None:
    """Convert with skopeo, which checks every layer against its diff_id on the way."""
    _run_tool(
        [skopeo, "--insecure-policy", "copy", f"docker-archive:{archive}", f"oci:{dest}:{tag}"]
    )


def umoci_unpack(oci_dir: Path, tag: str, bundle: Path, umoci: str = "umoci") -> Path:
    """Unpack with umoci, applying layers in order as a runtime would; returns the rootfs."""
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    _run_tool([umoci, "unpack", *rootless, "--image", f"{oci_dir}:{tag}", str(bundle)])
    return bundle / "rootfs"


def unpack_image(
    archive: Path, workdir: Path, skopeo: str = "skopeo", umoci: str = "umoci"
) -> Path:
    """docker-archive → OCI layout → runtime bundle, in ``workdir``; returns the rootfs."""
    skopeo_copy_to_oci(archive, workdir / "oci", skopeo=skopeo)
    return umoci_unpack(workdir / "oci", "test", workdir / "bundle", umoci=umoci)


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the external programs the image checks drive."""

    skopeo: str
    umoci: str


def skopeo_inspect_config(archive: Path, skopeo: str = "skopeo") -> dict[str, Any]:
    """The image config as skopeo reads it from a docker-archive."""
    argv = [skopeo, "inspect", "--config", f"docker-archive:{archive}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return json.loads(result.stdout)


def tool_stdout(argv: Sequence[str | os.PathLike[str]], timeout: int = 300) -> str:
    """An external tool's stdout; a failure quoting what it said when it does not exit 0."""
    words = list(map(str, argv))
    result = subprocess.run(words, capture_output=True, text=True, check=False, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(words)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
    )
    return result.stdout
