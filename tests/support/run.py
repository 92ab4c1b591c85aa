"""Running nixlayer as a user would: the console script beside the running python, its
exit code and output; the repository's scripts as modules."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"


def nixlayer_command() -> list[str]:
    """The installed console script, preferring the one of the running interpreter,
    so that a stale ``nixlayer`` elsewhere on PATH is never the one tested."""
    beside_python = Path(sysconfig.get_path("scripts")) / "nixlayer"
    if beside_python.is_file():
        return [str(beside_python)]
    found = shutil.which("nixlayer")
    if found:
        return [found]
    return [sys.executable, "-c", "from nixlayer.cli import main; main()"]


def run_nixlayer(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would, capturing stdout and stderr as bytes."""
    return subprocess.run(
        [*nixlayer_command(), *map(str, args)],
        cwd=cwd,
        env=None if env is None else dict(env),
        umask=umask,
        capture_output=True,
        check=False,
        timeout=300,
    )


def run_ok(*args: str | os.PathLike[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``run_nixlayer`` that fails the test with the CLI's stderr when it does not exit 0."""
    result = run_nixlayer(*args, **kwargs)
    assert result.returncode == 0, (
        f"nixlayer {' '.join(map(str, args))} exited {result.returncode}:\n"
        + result.stderr.decode(errors="replace")
    )
    return result


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module; scripts/ is not a package.

    Registered in ``sys.modules`` as it runs, as an import would: dataclasses look their
    module up there, and one script importing another then shares this copy.
    """
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return path


def nixlayer_environment() -> dict[str, str]:
    """The environment in which a script's ``nixlayer`` is the one ``run_nixlayer`` runs,
    and its ``python`` the interpreter of the tests."""
    directories = [str(Path(sys.executable).parent)]
    command = nixlayer_command()
    if len(command) == 1:
        directories.insert(0, str(Path(command[0]).parent))
    path = os.pathsep.join([*directories, os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "PYTHON": sys.executable}
