"""Daemons the tests start and stop (a registry, containerd, dockerd): free ports,
readiness, stopping by PID, and the mounts they leave."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago; a daemon that
    loses the race exits, and its fixture starts it again on another port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET of ``url``, None when nothing answers; never via a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


class DaemonFailed(Exception):
    """A daemon exited or never became ready; the message ends with its log."""


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, timeout: float
) -> None:
    """Until ``ready()`` holds while the daemon still runs: a daemon that lost its port
    to another program exits, even if that program answers in its place."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise DaemonFailed(f"{process.args[0]} exited {process.returncode}:\n{_log_tail(log)}")
        if ready() and process.poll() is None:
            return
        if time.monotonic() > deadline:
            raise DaemonFailed(f"{process.args[0]} not ready after {timeout}s:\n{_log_tail(log)}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to this one PID, SIGKILL if it lingers; never a name or a group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@contextlib.contextmanager
def running_daemon(
    argv: Sequence[str | os.PathLike[str]],
    log: Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a daemon for the length of the ``with``, its output in ``log``.

    It is stopped by its PID on the way out whatever happened, a failing test or a
    daemon that never became ready (``DaemonFailed``) included. Its own session keeps
    a Ctrl-C meant for pytest from reaching it before the cleanup does.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(map(str, argv)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(process, ready, log, timeout)
        yield process
    finally:
        stop_process(process)


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder``, deepest first (the order to unmount them)."""
    prefix = os.path.realpath(folder)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            # the mount point is the fifth field, with spaces and the like octal-escaped
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + os.sep):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_daemon_state(folder: Path) -> None:
    """Unmount what a daemon left mounted under ``folder``, then remove the folder.

    The folder is kept when something stays mounted: removing it then would delete
    whatever the mount shows.
    """
    for point in mounts_under(folder):
        subprocess.run(["umount", "--lazy", str(point)], check=False, timeout=60)
    left = mounts_under(folder)
    assert not left, f"still mounted, so {folder} is kept: {left}"
    shutil.rmtree(folder)
