"""Interrupting nixlayer in the middle of writing a large image: SIGTERM and SIGINT
unwind (exit 130, temporary files removed, the destination as it was); SIGKILL
cannot be cleaned up after, but the destination is still either absent or the
previous complete image, and what is left over is only nixlayer's temporary names.

The store holds 3 times 128 MiB, so that a build takes long enough to be caught while
its temporary file grows; the signal is sent once 16 MiB of it are on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.run import nixlayer_command, run_ok

from nixlayer.report import format_report
from nixlayer.verify import verify_image

STORE = "/nix/store"
FILE_SIZE = 128 << 20
CAUGHT_AT = 16 << 20  # bytes of temporary files on disk when the signal is sent
FORMATS = ["docker-archive", "oci", "oci-archive"]


class BigStore:
    """Three store paths of one 128 MiB file each, and two closures: all of them
    (the big build that is interrupted) and one small path (the previous image)."""

    def __init__(self, folder: Path) -> None:
        self.root = folder / "root"
        chunk = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not compressible away
        self.paths = [f"{STORE}/{c * 32}-big-{c}" for c in "123"]
        for number, path in enumerate(self.paths):
            on_disk = self.root / path.lstrip("/")
            on_disk.mkdir(parents=True)
            with (on_disk / "data").open("wb") as file:
                for _ in range(FILE_SIZE >> 20):
                    file.write(chunk)
                file.write(b"%d" % number)
        small = f"{STORE}/{'4' * 32}-small"
        (self.root / small.lstrip("/")).mkdir(parents=True)
        (self.root / small.lstrip("/") / "file").write_bytes(b"small")
        self.big = self._closure(folder / "big.json", self.paths)
        self.small = self._closure(folder / "small.json", [small])

    @staticmethod
    def _closure(target: Path, paths: list[str]) -> Path:
        entries = [{"path": p, "references": [], "narSize": FILE_SIZE} for p in paths]
        target.write_text(json.dumps(entries), encoding="utf-8")
        return target

    def args(self, closure: Path, out: Path, image_format: str) -> list[str]:
        return [
            "from-closure", str(closure), "--store-root", str(self.root), "-o", str(out),
            "--format", image_format, "--compress", "none", "--no-cache", "-q",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigStore]:
    """Made once for the module, and removed after it: pytest keeps the temporary
    folders of the last runs, and 384 MiB each would add up."""
    folder = tmp_path_factory.mktemp("big-store")
    yield BigStore(folder)
    shutil.rmtree(folder)


def _destination(folder: Path, image_format: str) -> Path:
    return folder / ("image" if image_format == "oci" else "image.tar")


def _snapshot(out: Path) -> dict[str, str]:
    """The sha256 of every file at the destination (a file, or a layout's files)."""
    if out.is_file():
        return {".": hashlib.sha256(out.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".nixlayer-")
    }


def _temporary_bytes(folder: Path, pid: int) -> int:
    """Bytes in the temporary files of process ``pid`` under ``folder``: those with a
    ``.nixlayer-`` name, and those it has open without a name (O_TMPFILE)."""
    total = 0
    for path in folder.rglob(".nixlayer-*"):
        with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
            total += path.stat().st_size if path.is_file() else 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(f"{folder}/") and target.endswith(" (deleted)"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
    return total


def _anonymous_files_work(folder: Path) -> bool:
    """Whether ``folder``'s file system makes files without a name (O_TMPFILE)."""
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except (AttributeError, OSError):
        return False
    return True


def _interrupted(command: list[str], folder: Path, signum: int) -> tuple[int, str, float]:
    """Start the build, send ``signum`` once it is writing, and wait for its end:
    the exit code, stderr, and the seconds from the signal to the exit."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _temporary_bytes(folder, process.pid) < CAUGHT_AT:
        if process.poll() is not None:
            pytest.fail("the build ended before it could be interrupted")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the build wrote nothing within 120 s")
        time.sleep(0.002)
    process.send_signal(signum)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr.decode(errors="replace"), time.monotonic() - sent


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and folders anywhere under ``folder``. os.walk passes over a
    folder that vanishes as it is listed (a watcher removing a scratch folder), where
    Path.rglob raised FileNotFoundError."""
    return sorted(
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, folders, files in os.walk(folder)
        for name in (*folders, *files)
        if name.startswith(".nixlayer-")
    )


def _leftovers_vanish(folder: Path, within: float = 30) -> list[str]:
    """The leftovers once they are gone, or those still there after ``within`` s
    (the watcher of an oci-archive's scratch folder removes it after the kill)."""
    deadline = time.monotonic() + within
    while (leftovers := _leftovers(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftovers


def _previous_image(big_store: BigStore, out: Path, image_format: str) -> dict[str, str]:
    """A complete small image at the destination, as a last build left it."""
    run_ok(*big_store.args(big_store.small, out, image_format))
    assert verify_image(str(out)).ok
    return _snapshot(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("image_format", FORMATS)
def test_sigterm_and_sigint_unwind(
    big_store: BigStore, tmp_path: Path, image_format: str, signum: int
) -> None:
    out = _destination(tmp_path, image_format)
    before = _previous_image(big_store, out, image_format)
    command = [*nixlayer_command(), *big_store.args(big_store.big, out, image_format)]
    code, stderr, took = _interrupted(command, tmp_path, signum)
    assert code == 130, stderr
    assert set(stderr.splitlines()) <= {"nixlayer: error: interrupted"}, stderr
    assert _leftovers(tmp_path) == []
    assert _snapshot(out) == before  # of a layout, the blobs this run added go too
    report = verify_image(str(out))
    assert report.ok and report.notes == [], format_report(report)
    assert took < 10, f"{took:.1f} s from the signal to the exit"


def test_an_interrupt_says_so(big_store: BigStore, tmp_path: Path) -> None:
    command = [
        *nixlayer_command(),
        *big_store.args(big_store.big, tmp_path / "i.tar", "docker-archive"),
    ]
    code, stderr, _ = _interrupted(command, tmp_path, signal.SIGINT)
    assert (code, stderr) == (130, "nixlayer: error: interrupted\n")


@pytest.mark.parametrize("image_format", FORMATS)
def test_sigkill_leaves_the_previous_image(
    big_store: BigStore, tmp_path: Path, image_format: str
) -> None:
    """Nothing runs after SIGKILL, but the destination is the previous image,
    complete, and verifies. Where the file system makes files without a name, the
    ones being written vanish with the process, and the folder an oci-archive is
    assembled in is removed by its watcher; elsewhere the files stay, under names
    starting ``.nixlayer-``, and are the only leftovers."""
    out = _destination(tmp_path, image_format)
    before = _previous_image(big_store, out, image_format)
    command = [*nixlayer_command(), *big_store.args(big_store.big, out, image_format)]
    code, _, _ = _interrupted(command, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    after = _snapshot(out)
    if image_format == "oci":
        assert after["index.json"] == before["index.json"]
    else:
        assert after == before
    report = verify_image(str(out))
    assert report.ok, format_report(report)
    if _anonymous_files_work(tmp_path):
        assert _leftovers_vanish(tmp_path) == []
    else:
        assert _leftovers(tmp_path), "a killed build leaves its named temporary files"
    names = {name for name in os.listdir(tmp_path) if not name.startswith(".nixlayer-")}
    assert names == {out.name}


def test_sigkill_before_a_first_image_leaves_no_destination(
    big_store: BigStore, tmp_path: Path
) -> None:
    out = tmp_path / "image.tar"
    command = [*nixlayer_command(), *big_store.args(big_store.big, out, "docker-archive")]
    code, _, _ = _interrupted(command, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not out.exists()
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".nixlayer-")] == []


def test_sigterm_stops_layers_being_compressed(tmp_path: Path) -> None:
    """Two layers of slow-to-compress data (random hex at zstd level 19, over a minute
    of CPU each): SIGTERM once their first compressed bytes are on disk stops both at
    their next buffer, instead of waiting for them to finish."""
    root = tmp_path / "root"
    paths = [f"{STORE}/{c * 32}-slow-{c}" for c in "56"]
    for path in paths:
        on_disk = root / path.lstrip("/")
        on_disk.mkdir(parents=True)
        with (on_disk / "data").open("wb") as file:
            for _ in range(48):
                file.write(os.urandom(1 << 19).hex().encode())
    closure = BigStore._closure(tmp_path / "slow.json", paths)
    out = tmp_path / "out" / "image"
    command = [
        *nixlayer_command(), "from-closure", str(closure), "--store-root", str(root),
        "-o", str(out), "--format", "oci", "--compress", "zstd", "--compress-level", "19",
        "--no-cache", "-q",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _temporary_bytes(tmp_path, process.pid) < 1 << 20 and time.monotonic() < deadline:
        assert process.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.01)
    before = _cpu_seconds(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 130, stderr
    assert stderr.decode() == "nixlayer: error: interrupted\n"
    assert not (tmp_path / "out").exists()  # a first write leaves nothing behind
    # The work done after the signal, in CPU time (which other processes' load does not
    # stretch): the buffers being compressed take a few seconds of it at level 19 (some
    # 2.5 s here); finishing the two layers (96 MiB) some 160 s of it.
    after = usage.ru_utime + usage.ru_stime - before
    assert after < 8, f"{after:.1f} s of CPU after the signal"


def _cpu_seconds(pid: int) -> float:
    """The CPU time a running process has used, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
