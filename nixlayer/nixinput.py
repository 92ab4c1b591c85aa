"""The closure of what a user has at hand: a store path, a ``./result`` link or an
installable, read by running ``nix path-info --json --recursive`` where a closure
file is expected.

What a value names, in this order:

- ``-`` is stdin, and anything that exists and is not a folder or a store path is a
  closure file, as before (a pipe from ``<(...)``, a file of any name).
- A store path (a direct child of the store directory, ``--store-root`` and
  ``--store-dir`` joined), or a symlink leading to one (``./result``), is a store
  path, whether a folder or a file; a folder inside one (``./result/bin``) names it,
  as ``nix`` takes it. A store file that starts as a closure file does (``[``, ``{``
  or ``/``: what ``exportReferencesGraph`` and structured attributes make) is read as
  one, as before. A path in the store directory that is not there is a store path too:
  Nix says whether it has it.
- A folder that holds ``flake.nix``, and a value that names nothing on disk but has a
  ``#`` or starts with a flake scheme (``.#app``, ``nixpkgs#hello``, ``github:o/r``),
  is an installable, handed to Nix as typed.
- Any other folder is refused; any other name is a closure file (and the reader says
  it does not exist).

Nix runs with stdin from /dev/null (it never waits on a prompt), an environment of
only what it and its fetchers use (``_environment``), its output in an unnamed
temporary file (the reader streams it, however large) and its stderr kept apart: a
failure is one line, Nix's own first error line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from nixlayer.closure import DEFAULT_STORE_DIR
from nixlayer.errors import NixlayerError, one_line, reason, show_path

# Flake reference schemes (``git+https:`` is git's): a value that names nothing on disk
# and starts with one is an installable.
_FLAKE_SCHEMES = frozenset(
    ("flake", "path", "github", "gitlab", "sourcehut", "git", "hg", "tarball", "file", "http",
     "https")
)  # fmt: skip
# The environment Nix gets: its own settings, where its configuration and caches are,
# and what fetching a flake may need (certificates, an SSH agent, *_proxy).
_PASSED = frozenset(
    ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE",
     "SSL_CERT_FILE", "SSL_CERT_DIR", "SSH_AUTH_SOCK")
)  # fmt: skip
_PASSED_PREFIXES = ("NIX_", "XDG_")
# The start of Nix's stderr that is searched for its error line: the rest may be a
# long build or evaluation trace.
_STDERR_READ = 64 * 1024
_ANSI = r"\x1b\[[0-9;]*[A-Za-z]"  # compiled on the way out only, as shlex is imported
_MAX_LINKS = 40  # as the kernel follows


def nix_argument(
    value: str | os.PathLike[str], store_root: Path = Path("/"), store_dir: str | None = None
) -> str | None:
    """What to ask Nix for the closure of ``value`` (a store path, or an installable as
    typed), or None where ``value`` is read as a closure file (see the module's rules;
    an existing folder that is none of these is None too, for the caller to refuse)."""
    text = os.fspath(value)
    if text == "-":
        return None
    logical = (store_dir or DEFAULT_STORE_DIR).rstrip("/") or "/"
    store = _store_folder(store_root, store_dir)
    child = _store_child(text, store)
    if child is not None:
        if os.path.isfile(child) and _starts_as_closure(child):
            return None
        return f"{logical}/{os.path.basename(child)}"
    real = os.path.realpath(text)
    if real.startswith(store + os.sep) and os.path.isdir(real):
        return f"{logical}/{real[len(store) + 1 :].split(os.sep)[0]}"
    if os.path.exists(text):
        return text if os.path.isfile(os.path.join(text, "flake.nix")) else None
    if "#" in text or text.partition(":")[0].partition("+")[0] in _FLAKE_SCHEMES:
        return text
    return None


def _store_folder(store_root: Path, store_dir: str | None) -> str:
    """Where the store directory is on this machine, its links followed."""
    logical = store_dir or DEFAULT_STORE_DIR
    return os.path.realpath(os.path.join(store_root, logical.lstrip("/")))


def _store_child(text: str, store: str) -> str | None:
    """The direct child of ``store`` that ``text`` is or leads to through symlinks
    (there or not), else None. Links are followed one at a time, so that a store
    path that is itself a symlink is the store path, not what it leads to."""
    path = text
    for _ in range(_MAX_LINKS):
        folder = os.path.realpath(os.path.dirname(path) or ".")
        path = os.path.join(folder, os.path.basename(path))
        if folder == store:
            return path
        try:
            path = os.path.join(folder, os.readlink(path))
        except OSError:  # not a link (or out of reach): no way into the store
            return None
    return None


@contextmanager
def closure_file(
    value: str | os.PathLike[str], store_root: Path = Path("/"), store_dir: str | None = None
) -> Iterator[tuple[Path, str | None]]:
    """The file to read ``value``'s closure from, and what messages call it (None: the
    file's own name, as before). For a store path or an installable, that is the
    output of ``nix path-info --json --recursive``, for the block's length."""
    argument = nix_argument(value, store_root, store_dir)
    if argument is None:
        if os.path.isdir(value):
            raise NixlayerError(
                f"{show_path(value)}: a folder, not a closure file, and not in the Nix store "
                f"{show_path(_store_folder(store_root, store_dir))} "
                "(give a closure file, a store path or an installable)"
            )
        yield Path(value), None
        return
    with tempfile.TemporaryFile() as output:
        path_info(argument, show_path(value), output)
        output.seek(0)  # where /dev/fd duplicates the descriptor rather than reopening
        yield Path(f"/dev/fd/{output.fileno()}"), show_path(value)


def path_info(argument: str, shown: str, output: IO[bytes]) -> None:
    """Write ``nix path-info --json --recursive ARGUMENT`` to ``output``; a problem is
    one line that starts with ``shown``, the value as the user gave it."""
    import shlex  # for a message: not loaded for every run

    command = f"nix path-info --json --recursive {shlex.quote(argument)}"
    nix = shutil.which("nix")
    if nix is None:
        raise NixlayerError(
            f"{shown}: reading the closure of a store path or installable takes nix, which is "
            f"not on PATH; make a closure file with `{command} > closure.json`"
        )
    features = ("--extra-experimental-features", "nix-command flakes")
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(
                [nix, *features, "path-info", "--json", "--recursive", "--", argument],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=stderr,
                env=_environment(),
                check=False,
            )
        except OSError as error:
            raise NixlayerError(f"{shown}: cannot run {show_path(nix)}: {reason(error)}") from None
        if done.returncode != 0:
            stderr.seek(0)
            said = _error_line(stderr.read(_STDERR_READ).decode(errors="replace"))
            code = done.returncode
            status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
            raise NixlayerError(f"{shown}: nix path-info failed: {said or status}")


def _starts_as_closure(path: str) -> bool:
    """Whether a file's first visible character is one a closure file starts with."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096).lstrip()
    except OSError:
        return True  # the reader says why it cannot be read
    return not head or head[:1] in (b"[", b"{", b"/")


def _error_line(stderr: str) -> str:
    """Nix's first line that starts ``error:`` (without it), else its first line."""
    lines = [line.strip() for line in re.sub(_ANSI, "", stderr).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return one_line(line[len("error:") :].strip())
    return one_line(lines[0]) if lines else ""


def _environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name in _PASSED or name.startswith(_PASSED_PREFIXES) or name.lower().endswith("_proxy")
    }
