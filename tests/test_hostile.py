"""Hostile input: closures that lie, store trees that fight back, and outputs that
cannot be written. Each must end in one ``nixlayer: error:`` line naming the file, path
or flag, exit code 2, and nothing left at the destination; or, where the input is odd
but legal (a dangling symlink, a name that is not UTF-8), in an exact image.

What tests/test_readers.py, tests/test_tarwriter.py and tests/test_end_to_end.py
already cover (most malformed closure fields, a FIFO inside a store path, a missing
store path, a file changed between layout and write, hard-link twins across layers)
is not repeated here. Slow cases run only with ``NIXLAYER_SLOW_TESTS=1``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumers import layer_members, nixlayer_command, read_docker_archive, run_nixlayer

from nixlayer.errors import NixlayerError
from nixlayer.output import atomic_output
from nixlayer.plan import make_plan
from nixlayer.readers import read_closure
from nixlayer.report import format_report
from nixlayer.store import store_layer_entries
from nixlayer.tarwriter import lay_out, write_layer
from nixlayer.verify import verify_image

SLOW = os.environ.get("NIXLAYER_SLOW_TESTS") == "1"
slow = pytest.mark.skipif(not SLOW, reason="slow: set NIXLAYER_SLOW_TESTS=1")
STORE = "/nix/store"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _path(name: str, hash_char: str = "1") -> str:
    return f"{STORE}/{hash_char * 32}-{name}"


P1, P2, P3 = _path("one", "1"), _path("two", "2"), _path("three", "3")


def _closure_file(folder: Path, entries: list[dict[str, Any]]) -> Path:
    target = folder / "closure.json"
    target.write_text(json.dumps(entries), encoding="utf-8")
    return target


def _entry(path: str, *references: str, nar_size: int = 1000) -> dict[str, Any]:
    return {"path": path, "references": sorted(references), "narSize": nar_size}


def _read_error(folder: Path, entries: list[dict[str, Any]]) -> str:
    with pytest.raises(NixlayerError) as caught:
        read_closure(_closure_file(folder, entries))
    return str(caught.value)


def _input_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """The one-line error of a problem with the input: exit 2, no traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("nixlayer: note")]
    assert len(lines) == 1 and lines[0].startswith("nixlayer: error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".nixlayer-"))


# --- closure input: what test_readers.py leaves out ----------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"{STORE}/{'1' * 32}-a/b", "not in the store directory"),  # a nested path
        (f"{STORE}/../etc/passwd", "not in the store directory"),
        (f"{STORE}/{'1' * 32}-..", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 32}-.hidden", "not a valid Nix store path name"),
        (f"{STORE}/..", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 32}-a\0b", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 31}-short-hash", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 33}-long-hash", "not a valid Nix store path name"),
        (f"{STORE}/{'e' * 32}-letter-e", "not a valid Nix store path name"),
        (f"{STORE}/{'o' * 32}-letter-o", "not a valid Nix store path name"),
        (f"{STORE}/{'u' * 32}-letter-u", "not a valid Nix store path name"),
        (f"{STORE}/{'t' * 32}-letter-t", "not a valid Nix store path name"),
        (f"{STORE}/{'A' * 32}-upper-case", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 32}-", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 32}-{'n' * 212}", "not a valid Nix store path name"),
        (f"{STORE}/{'1' * 32}-sp ace", "not a valid Nix store path name"),
        ("/tmp/" + "1" * 32 + "-elsewhere", "not in the store directory"),
        ("nix/store/" + "1" * 32 + "-relative", "not in the store directory"),
    ],
)
def test_malformed_store_path_names(tmp_path: Path, path: str, message: str) -> None:
    """As an entry and as a reference: the name is refused, never used as a file name."""
    assert message in _read_error(tmp_path, [_entry(path)])
    assert message in _read_error(tmp_path, [_entry(P1, path)])


@pytest.mark.parametrize(
    "store_dir", ["/nix/../etc", "/nix/./store", "nix/store", "//nix", "/", "/a\0b"]
)
def test_store_directory_that_climbs_or_is_relative(tmp_path: Path, store_dir: str) -> None:
    """Every name in a layer starts with the store directory: one with ``..`` would put
    ``nix/../etc/…`` into the tar. Refused from --store-dir and from the file alike."""
    closure = _closure_file(tmp_path, [_entry(f"{store_dir.rstrip('/')}/{'1' * 32}-x")])
    with pytest.raises(NixlayerError, match=r"^--store-dir .*: (not|holds|the root|has)"):
        read_closure(closure, store_dir=store_dir)
    declared = {"version": 2, "storeDir": store_dir, "info": {f"{'1' * 32}-x": _entry("x")}}
    (tmp_path / "v2.json").write_text(json.dumps(declared), encoding="utf-8")
    with pytest.raises(NixlayerError, match=r'has "storeDir" .*, (not|holds|the root|has)'):
        read_closure(tmp_path / "v2.json")


def test_store_directory_with_dotdot_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "root" / "nix").mkdir(parents=True)
    (tmp_path / "root" / "etc" / f"{'1' * 32}-x").mkdir(parents=True)
    closure = tmp_path / "closure.txt"
    closure.write_text(f"/nix/../etc/{'1' * 32}-x\n\n0\n", encoding="utf-8")
    out = tmp_path / "image.tar"
    result = run_nixlayer("from-closure", closure, "--store-root", tmp_path / "root",
                          "--store-dir", "/nix/../etc", "-o", out)  # fmt: skip
    _input_error(result, "--store-dir /nix/../etc")
    assert not out.exists()


def test_longest_legal_name_is_accepted(tmp_path: Path) -> None:
    longest = f"{STORE}/{'1' * 32}-{'n' * 211}"
    assert longest in read_closure(_closure_file(tmp_path, [_entry(longest)])).paths


def test_disagreeing_duplicates(tmp_path: Path) -> None:
    entries = [_entry(P1), _entry(P2), _entry(P1, P2)]
    assert f"two entries for {P1} disagree" in _read_error(tmp_path, entries)
    sizes = [_entry(P1, nar_size=1), _entry(P1, nar_size=2)]
    assert "disagree" in _read_error(tmp_path, sizes)


def test_duplicate_keys_in_a_path_info_object(tmp_path: Path) -> None:
    """JSON parsers keep the last of two equal keys; the reader must not."""
    text = f'{{"{P1}": {{"references": []}}, "{P1}": {{"references": ["{P1}"]}}}}'
    (tmp_path / "dict.json").write_text(text, encoding="utf-8")
    with pytest.raises(NixlayerError, match="appears twice in one object"):
        read_closure(tmp_path / "dict.json")


def test_self_reference_is_fine(tmp_path: Path) -> None:
    closure = read_closure(_closure_file(tmp_path, [_entry(P1, P1), _entry(P2, P1, P2)]))
    plan = make_plan(closure, "popularity", 10)
    assert sorted(p for layer in plan.layers for p in layer.paths) == [P1, P2]
    assert plan.roots == (P2,)


@pytest.mark.parametrize("strategy", ["popularity", "cochange", "auto"])
def test_reference_cycle_is_a_clear_error(tmp_path: Path, strategy: str) -> None:
    """Nix cannot make a cycle between two paths; one in the input is refused at once,
    naming the paths, rather than left to hang or mislead a strategy."""
    closure = read_closure(
        _closure_file(tmp_path, [_entry(P1, P2), _entry(P2, P3), _entry(P3, P1)])
    )
    started = time.monotonic()
    with pytest.raises(NixlayerError, match="cycle") as caught:
        make_plan(closure, strategy, 10)
    assert time.monotonic() - started < 5
    assert all(p in str(caught.value) for p in (P1, P2, P3))


def test_reference_cycle_through_the_cli(tmp_path: Path) -> None:
    closure = _closure_file(tmp_path, [_entry(P1, P2), _entry(P2, P1)])
    result = run_nixlayer("plan", closure, "-o", tmp_path / "plan.json")
    _input_error(result, "cycle", P1, P2)
    assert not (tmp_path / "plan.json").exists()


# Closures of this shape are what a large fleet's closure looks like: a base of 50
# paths (libc, compilers' runtimes) every application uses, and applications of 100
# paths each, whose paths use a few of their own and one or two of the base.
_SCALE_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from nixlayer.plan import make_plan
    from nixlayer.readers import read_closure
    from nixlayer.strategies import DEFAULT_STRATEGY

    count, shape, strategy, target = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    strategy = DEFAULT_STRATEGY if strategy == "default" else strategy
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    rng = random.Random(7)
    paths = [
        "/nix/store/" + "".join(rng.choice(alphabet) for _ in range(32)) + f"-pkg-{i}-1.0"
        for i in range(count)
    ]
    entries = []
    for i, path in enumerate(paths):
        refs = set()
        if shape == "stacks" and i:
            if i < 50:
                refs = {rng.randrange(i) for _ in range(2)}
            else:
                start = 50 + (i - 50) // 100 * 100
                refs = {rng.randrange(start, i) for _ in range(2) if i > start}
                refs.add(rng.randrange(50))
        entries.append({"path": path, "narSize": 1000 + i, "narHash": "sha256-" + "A" * 43 + "=",
                        "references": sorted([paths[j] for j in refs] + [path])})
    Path(target).write_text(json.dumps(entries))
    started = time.monotonic()
    closure = read_closure(Path(target))
    read = time.monotonic() - started
    plan = make_plan(closure, strategy, 100)
    assert sorted(p for layer in plan.layers for p in layer.paths) == sorted(paths)
    status = Path("/proc/self/status").read_text()
    peak = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) << 10
    print(json.dumps({"read": read, "plan": time.monotonic() - started - read, "peak": peak}))
    """
)


def _scale(tmp_path: Path, count: int, shape: str, strategy: str, timeout: float) -> dict:
    """read_closure and make_plan on a generated closure, in a child process so that a
    budget overrun fails the test instead of hanging the suite."""
    target = tmp_path / f"closure-{count}-{shape}.json"
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SCALE_SCRIPT, str(count), shape, strategy, str(target)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{count} paths ({shape}, {strategy}): no plan within {timeout} s")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("shape", ["flat", "stacks"])
def test_twenty_thousand_paths_plan_in_seconds(tmp_path: Path, shape: str) -> None:
    """A guard in the default run against quadratic planning: 20,000 paths with no
    references (all roots) or in stacks plan within a few seconds."""
    timing = _scale(tmp_path, 20_000, shape, "default", timeout=5)
    assert timing["read"] < 1.5, timing


def test_two_hundred_thousand_paths_are_read_in_seconds(tmp_path: Path) -> None:
    """The closure reader alone on 200,000 paths (63 MB of path-info JSON): linear,
    and fast enough that planning, not reading, decides the time."""
    entries = [_entry(f"{STORE}/{_nix32(i)}-p-{i}") for i in range(200_000)]
    target = _closure_file(tmp_path, entries)
    started = time.monotonic()
    closure = read_closure(target)
    assert len(closure.paths) == 200_000
    assert time.monotonic() - started < 6


@slow
@pytest.mark.parametrize("strategy", ["popularity", "cochange", "auto"])
@pytest.mark.parametrize("shape", ["flat", "stacks"])
def test_two_hundred_thousand_paths_plan(tmp_path: Path, shape: str, strategy: str) -> None:
    """The brief's 200,000 paths through read_closure and make_plan, with a generous
    limit; the report gives the times measured."""
    timing = _scale(tmp_path, 200_000, shape, strategy, timeout=300)
    print(f"200k {shape} {strategy}: {timing}")


def _nix32(number: int) -> str:
    digits = []
    for _ in range(32):
        number, digit = divmod(number, 32)
        digits.append(NIX32[digit])
    return "".join(digits)


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from nixlayer.readers import read_closure

    def peak():  # this process's own high-water mark (ru_maxrss counts the parent's)
        status = Path("/proc/self/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])

    before = peak()
    closure = read_closure(Path(sys.argv[1]))
    print(json.dumps({"paths": len(closure.paths), "growth": (peak() - before) * 1024}))
    """
)


def _peak_growth(closure: Path) -> int:
    """How much a fresh process's peak RSS grows while it reads ``closure``."""
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(closure)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)["growth"]


def _realistic_entries(count: int) -> list[dict[str, Any]]:
    """Path-info entries as ``nix path-info --json --recursive --closure-size`` prints
    them: about 700 bytes each, five references, a hash and a signature."""
    paths = [f"{STORE}/{_nix32(i * 7919)}-package-{i}-1.2.3" for i in range(count)]
    return [
        {
            "path": path,
            "narHash": "sha256-" + "A" * 43 + "=",
            "narSize": 1000 + i,
            "closureSize": 123456789,
            "deriver": path + ".drv",
            "registrationTime": 1700000000,
            "valid": True,
            "signatures": ["cache.nixos.org-1:" + "B" * 86 + "=="],
            "references": sorted(paths[max(0, i - 5) : i]),
        }
        for i, path in enumerate(paths)
    ]


def _references_graph_file(folder: Path, entries: list[dict[str, Any]]) -> Path:
    lines = [line for e in entries
             for line in (e["path"], "", str(len(e["references"])), *e["references"])]  # fmt: skip
    target = folder / "references-graph.txt"
    target.write_text("\n".join(lines) + "\n")
    return target


def test_large_references_graph_text_streams_too(tmp_path: Path) -> None:
    """As below, for exportReferencesGraph's plain text: read a line at a time, each
    further byte costs less than 1.6 bytes (reading it whole and splitting it cost
    4.5)."""
    sizes, growths = [], []
    for count in (8_000, 32_000):
        target = _references_graph_file(tmp_path, _realistic_entries(count))
        sizes.append(target.stat().st_size)
        growths.append(_peak_growth(target))
    assert (growths[1] - growths[0]) / (sizes[1] - sizes[0]) < 1.6, (sizes, growths)


def test_large_input_memory_stays_below_the_input_size(tmp_path: Path) -> None:
    """A 1 GB closure is not made here; instead the peak memory of reading 6 MB and
    24 MB of realistic path-info is measured. The file streams through the reader
    (nixlayer/jsonstream.py), which keeps of each entry only what it uses, and each
    store path's name once: each further byte of input costs less than 1.6 bytes
    (the closure itself is most of it), where ``json.loads`` cost 3.4, and the peak
    stays below twice the file. Measured on 1 GB: see the commit that made the
    reader stream."""
    sizes, growths = [], []
    for count in (8_000, 32_000):
        target = _closure_file(tmp_path, _realistic_entries(count))
        sizes.append(target.stat().st_size)
        growths.append(_peak_growth(target))
    per_byte = (growths[1] - growths[0]) / (sizes[1] - sizes[0])
    assert per_byte < 1.6, (sizes, growths)
    assert growths[1] < 2 * sizes[1], (sizes, growths)


# --- store trees through the CLI ----------------------------------------------------


class Store:
    """A store tree under ``root`` and the closure file that lists its paths."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / "root"
        (self.root / STORE.lstrip("/")).mkdir(parents=True)
        self.paths: list[str] = []

    def add(self, name: str, hash_char: str) -> Path:
        """A store path's location on disk (not created: make it a file, folder...)."""
        path = _path(name, hash_char)
        self.paths.append(path)
        return self.root / path.lstrip("/")

    def closure(self) -> Path:
        return _closure_file(self.folder, [_entry(p) for p in self.paths])

    def build(self, out: Path, *options: str, prefix: tuple[str, ...] = ()) -> Any:
        args = ("from-closure", self.closure(), "--store-root", self.root, "-o", out, "-q")
        if not prefix:
            return run_nixlayer(*args, *options)
        command = [*prefix, *nixlayer_command(), *map(str, args), *options]
        return subprocess.run(command, capture_output=True, check=False, timeout=300)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def _members(archive: Path) -> dict[bytes, tarfile.TarInfo]:
    """Every member of every layer, by its name as bytes (not UTF-8 names included)."""
    found = {}
    for layer in read_docker_archive(archive.read_bytes()).layers:
        for member in layer_members(layer):
            found[os.fsencode(member.name)] = member
    return found


def _name(path: Path, root: Path) -> bytes:
    return os.fsencode(path.relative_to(root))


def test_socket_and_device_node_are_refused_with_their_path(store: Store, tmp_path: Path) -> None:
    top = store.add("special", "1")
    top.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        short = Path(tempfile.mkdtemp(dir="/tmp"), "s")  # a socket's path has 107 bytes at most
        server.bind(str(short))
        short.rename(top / "control.sock")
        short.parent.rmdir()
        _input_error(store.build(tmp_path / "a.tar"), "control.sock", "not this special file")
    (top / "control.sock").unlink()
    try:
        os.mknod(top / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    _input_error(store.build(tmp_path / "b.tar"), "/null", "not this special file")
    assert not list(tmp_path.glob("*.tar")) and _leftovers(tmp_path) == []


def test_store_path_that_is_a_fifo_is_refused(store: Store, tmp_path: Path) -> None:
    os.mkfifo(store.add("pipe", "1"))
    _input_error(store.build(tmp_path / "a.tar"), "-pipe", "not this special file")
    assert not (tmp_path / "a.tar").exists() and _leftovers(tmp_path) == []


def test_symlinks_are_archived_as_links_never_followed(store: Store, tmp_path: Path) -> None:
    """A loop, a self-loop, a dangling link and links out of the store are all kept
    as links, with their targets byte for byte; nothing they point to is read."""
    top = store.add("links", "1")
    top.mkdir()
    (top / "a").symlink_to("b")
    (top / "b").symlink_to("a")
    (top / "self").symlink_to("self")
    (top / "dangling").symlink_to("does/not/exist")
    (top / "passwd").symlink_to("/etc/passwd")
    (top / "up").symlink_to("../../../../etc")
    store.add("etc", "2").symlink_to("/etc")  # a store path that is a link elsewhere
    loop = store.add("loop", "3")
    loop.symlink_to(_path("loop", "3"))  # a store path that is a link to itself
    out = tmp_path / "image.tar"
    result = store.build(out)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    members = _members(out)
    expected = {
        top / "a": "b",
        top / "b": "a",
        top / "self": "self",
        top / "dangling": "does/not/exist",
        top / "passwd": "/etc/passwd",
        top / "up": "../../../../etc",
        store.root / _path("etc", "2").lstrip("/"): "/etc",
        loop: _path("loop", "3"),
    }
    for path, target in expected.items():
        member = members[_name(path, store.root)]
        assert member.issym() and member.linkname == target, member.name
    assert not any(b"/etc/" in name or name.endswith(b"passwd/") for name in members)
    assert verify_image(str(out)).ok


def test_unreadable_file_and_folder(store: Store, tmp_path: Path) -> None:
    """Root reads anything, so the CLI runs without the capabilities that let it
    (setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH) when the tests are root."""
    prefix = _without_read_override()
    secret = store.add("secret-file", "1")
    secret.mkdir()
    (secret / "key").write_bytes(b"k")
    (secret / "key").chmod(0)
    closed = store.add("closed-folder", "2")
    (closed / "inner").mkdir(parents=True)
    (closed / "inner" / "file").write_bytes(b"f")
    (closed / "inner").chmod(0)
    try:
        store.paths = [_path("secret-file", "1")]
        _input_error(
            store.build(tmp_path / "a.tar", prefix=prefix), "secret-file/key", "cannot read"
        )
        store.paths = [_path("closed-folder", "2")]
        _input_error(
            store.build(tmp_path / "b.tar", prefix=prefix), "closed-folder/inner", "cannot read"
        )
    finally:
        (closed / "inner").chmod(0o755)
    assert not list(tmp_path.glob("*.tar")) and _leftovers(tmp_path) == []


def _without_read_override() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    drop = ("--bounding-set=-dac_override,-dac_read_search",)
    if setpriv is None:
        pytest.skip("as root, reading is never denied; setpriv (util-linux) is missing")
    probe = subprocess.run([setpriv, *drop, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()}")
    return (setpriv, *drop)


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_file_changing_while_the_cli_reads_it(store: Store, tmp_path: Path, change: str) -> None:
    """A writer keeps changing a 64 MB file during the whole build: the size nixlayer
    laid the layer out with is never the size it reads, and it stops with an error
    instead of writing a layer whose header lies."""
    top = store.add("moving", "1")
    top.mkdir()
    moving = top / "data"
    moving.write_bytes(bytes(64 << 20))
    stop = threading.Event()

    def keep_changing() -> None:
        with moving.open("r+b") as file:
            size = 64 << 20
            while not stop.is_set():
                size += 4096 if change == "grows" else -4096
                file.truncate(size)
                time.sleep(0.0005)

    writer = threading.Thread(target=keep_changing)
    writer.start()
    try:
        result = store.build(tmp_path / "image.tar", "--no-cache")
    finally:
        stop.set()
        writer.join()
    word = "grew" if change == "grows" else "shrank"
    _input_error(result, str(moving), f"the file {word} while it was being read")
    assert not (tmp_path / "image.tar").exists() and _leftovers(tmp_path) == []


def test_names_that_are_not_utf8_are_archived_byte_exact(store: Store, tmp_path: Path) -> None:
    top = store.add("bytes", "1")
    top.mkdir()
    names = [b"latin1-\xe9t\xe9", b"lone-\xff", b"half-\xc3", b"ok-\xc3\xa9"]
    root = os.fsencode(top)
    for name in names:
        with open(os.path.join(root, name), "wb") as file:
            file.write(name)
    os.symlink(b"target-\xfe\xfd", os.path.join(root, b"link-\xfe"))
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    members = _members(out)
    base = _name(top, store.root)
    for name in names:
        assert members[base + b"/" + name].isfile()
    assert os.fsencode(members[base + b"/link-\xfe"].linkname) == b"target-\xfe\xfd"
    layer = next(layer for layer in read_docker_archive(out.read_bytes()).layers if base in layer)
    assert b"hdrcharset=BINARY" in layer  # the PAX way to say the names are raw bytes
    assert b"path=" + base + b"/lone-\xff" in layer


def test_names_and_link_targets_over_255_bytes(store: Store, tmp_path: Path) -> None:
    top = store.add("long", "1")
    deep = top / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    (deep / ("f" * 255)).write_bytes(b"deep")
    target = "/".join(["x" * 250] * 16)  # 4,015 bytes: near PATH_MAX
    (top / "long-link").symlink_to(target)
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    members = _members(out)
    file_name = _name(deep / ("f" * 255), store.root)
    assert len(file_name) > 700 and members[file_name].size == 4
    assert members[_name(top / "long-link", store.root)].linkname == target
    assert verify_image(str(out)).ok


def test_hard_link_twins_in_two_layers_make_self_contained_layers(
    store: Store, tmp_path: Path
) -> None:
    """One inode under three names in two store paths that land in different layers:
    every name is a file holding the bytes, so each layer unpacks alone."""
    first, second = store.add("first", "1"), store.add("second", "2")
    first.mkdir()
    second.mkdir()
    (first / "shared").write_bytes(b"shared bytes")
    os.link(first / "shared", second / "shared")
    os.link(first / "shared", first / "again")
    out = tmp_path / "image.tar"
    assert store.build(out).returncode == 0
    report = verify_image(str(out))
    assert report.ok and report.layers == 2, format_report(report)
    members = _members(out)
    for path in (second / "shared", first / "again", first / "shared"):
        assert members[_name(path, store.root)].isfile()


def test_file_over_8_gib_gets_a_pax_size_record(tmp_path: Path) -> None:
    """A sparse file of 8 GiB + 1 byte, laid out and streamed only as far as its
    header: the layout's size counts every byte, and the header carries a PAX size
    that tarfile reads back (USTAR's 11 octal digits stop at 8 GiB - 1)."""
    size = (8 << 30) + 1
    path = _path("huge", "1")
    on_disk = tmp_path / path.lstrip("/")
    on_disk.parent.mkdir(parents=True)
    with on_disk.open("wb") as file:
        file.truncate(size)
    layout = lay_out(store_layer_entries(os.fsencode(tmp_path), STORE, [path]), 1)
    head = io.BytesIO()

    class Enough(Exception):
        pass

    def write(data: Any) -> None:
        head.write(bytes(data))
        if head.tell() > 8192:
            raise Enough

    with pytest.raises(Enough):
        write_layer(layout, write)
    with tarfile.open(fileobj=io.BytesIO(head.getvalue()), mode="r|") as tar:
        member = next(m for m in tar if m.name == path.lstrip("/"))
        assert member.size == size and member.isfile()
        assert member.pax_headers["size"] == str(size)
    assert layout.size % 512 == 0 and layout.size > size


@slow
def test_file_over_8_gib_streams_through_the_cli(store: Store, tmp_path: Path) -> None:
    """The whole 8 GiB + 1 through ``-o -`` into a reader that parses and counts it,
    so that no 8 GiB tar reaches the disk."""
    huge = store.add("huge", "1")
    with huge.open("wb") as file:
        file.seek(8 << 30)
        file.write(b"!")
    command = [*nixlayer_command(), "from-closure", str(store.closure()), "--store-root",
               str(store.root), "-o", "-", "-q"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        with tarfile.open(fileobj=process.stdout, mode="r|") as outer:
            seen = _stream_layers(outer)
    assert process.returncode == 0
    assert seen == {os.fsencode(_name(huge, store.root)): (8 << 30) + 1}


def _stream_layers(outer: tarfile.TarFile) -> dict[bytes, int]:
    """Regular files of every layer in a streamed docker-archive: name → bytes read,
    checking that the last byte is the ``!`` the test wrote."""
    seen = {}
    for member in outer:
        if not member.name.endswith("layer.tar"):
            continue
        with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
            for inner in layer:
                if inner.isfile() and inner.size:
                    data = layer.extractfile(inner)
                    assert data is not None
                    count, last = 0, b""
                    while chunk := data.read(8 << 20):
                        count, last = count + len(chunk), chunk[-1:]
                    assert last == b"!"
                    seen[os.fsencode(inner.name)] = count
    return seen


# Runs a command and prints its peak RSS on stderr. ru_maxrss of a child counts the
# memory of the process it was forked from, so the command must be forked from this
# small wrapper, not from pytest.
_PEAK_WRAPPER = (
    sys.executable,
    "-c",
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(f'peak-kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
    "file=sys.stderr); sys.exit(code)",
)


@slow
def test_a_million_small_files(tmp_path: Path) -> None:
    """1,000,000 files of a few bytes in 1,000 folders of one store path: the image is
    written and verifies; the report gives the time and peak memory measured."""
    store = Store(tmp_path)
    top = store.add("many", "1")
    started = time.monotonic()
    for folder in range(1000):
        (top / f"{folder:03d}").mkdir(parents=True)
        for number in range(1000):
            (top / f"{folder:03d}" / f"f{number:03d}").write_bytes(b"%d\n" % number)
    made = time.monotonic() - started
    out = tmp_path / "image.tar"
    started = time.monotonic()
    result = store.build(out, "--no-cache", prefix=_PEAK_WRAPPER)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    peak = int(result.stderr.decode().rsplit("peak-kib=", 1)[1]) / 1024
    started = time.monotonic()
    report = verify_image(str(out))
    checked = time.monotonic() - started
    print(f"1M files: made {made:.0f} s, built {took:.0f} s, peak {peak:.0f} MiB, "
          f"verified {checked:.0f} s, {out.stat().st_size >> 20} MiB")  # fmt: skip
    assert report.ok, format_report(report)
    assert peak < 2048, f"peak RSS {peak:.0f} MiB"


# --- outputs ------------------------------------------------------------------------


def _small_store(tmp_path: Path, size: int = 4 << 20) -> Store:
    store = Store(tmp_path / "in")
    top = store.add("data", "1")
    top.mkdir()
    (top / "blob").write_bytes(os.urandom(size))
    return store


def _destination(folder: Path, image_format: str) -> Path:
    return folder / ("image" if image_format == "oci" else "image.tar")


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A folder and a function that mounts a small tmpfs on it (root only); unmounted
    at the end whatever happens."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode()}")
        mounted.append(point)
        return point

    yield point, mount
    for done in mounted:
        subprocess.run(["umount", "-l", str(done)], check=False)


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_full_disk(mount_point: tuple[Path, Any], tmp_path: Path, image_format: str) -> None:
    """A 1 MiB tmpfs and a 4 MiB image: exit 2 with one line naming -o and the
    folder, and no temporary file left to fill the disk further."""
    _, mount = mount_point
    folder = mount("size=1m")
    store = _small_store(tmp_path)
    out = _destination(folder, image_format)
    result = store.build(out, "--format", image_format, "--compress", "none", "--no-cache")
    _input_error(result, "-o ", str(folder), "No space left on device")
    assert not (out / "index.json").exists() if image_format == "oci" else not out.exists()
    leftovers = [str(p) for p in folder.rglob(".nixlayer-*")]
    assert leftovers == [], leftovers


def test_full_disk_while_a_base_layer_is_copied(
    mount_point: tuple[Path, Any], tmp_path: Path
) -> None:
    """An OCI image copies a base's compressed layers as stored: a full disk then is
    the folder's problem, not a damaged base."""
    _, mount = mount_point
    store = _small_store(tmp_path)
    base = tmp_path / "base"
    assert store.build(base, "--format", "oci", "--compress", "gzip").returncode == 0
    folder = mount("size=1m")
    result = store.build(folder / "image", "--format", "oci", "--from", base, "--no-cache")
    _input_error(result, "-o ", str(folder), "No space left on device")
    assert [str(p) for p in folder.rglob(".nixlayer-*")] == []


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_read_only_folder(mount_point: tuple[Path, Any], tmp_path: Path, image_format: str) -> None:
    _, mount = mount_point
    folder = mount("ro,size=1m")
    result = _small_store(tmp_path, 1024).build(
        _destination(folder, image_format), "--format", image_format
    )
    _input_error(result, "-o ", str(folder), "Read-only file system")


def test_folder_that_does_not_exist(tmp_path: Path) -> None:
    store = _small_store(tmp_path, 1024)
    out = tmp_path / "missing" / "image.tar"
    _input_error(store.build(out), f"-o {out}", "does not exist")
    _input_error(store.build(tmp_path), f"-o {tmp_path}", "is a folder")


def test_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    """The old image is replaced by a rename, not overwritten in place: a hard link
    to the old file still holds the old bytes, and the new file gets the umask's mode."""
    store = _small_store(tmp_path, 1024)
    out = tmp_path / "image.tar"
    out.write_bytes(b"the previous image")
    os.link(out, tmp_path / "previous")
    result = run_nixlayer(
        "from-closure", store.closure(), "--store-root", store.root, "-o", out, "-q", umask=0o027
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "previous").read_bytes() == b"the previous image"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert verify_image(str(out)).ok
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("before", ["no-folder", "empty-folder", "layout"])
def test_a_failed_oci_write_removes_what_it_created(tmp_path: Path, before: str) -> None:
    """A store path missing on disk stops the build after other layers were written:
    a layout that was not there before goes again (with the folders made for it),
    an empty folder is left empty, and an existing layout is as it was."""
    store = _small_store(tmp_path)
    target = tmp_path / "out"
    out = target / "sub" / "image" if before == "no-folder" else target
    if before == "empty-folder":
        target.mkdir()
    if before == "layout":
        assert store.build(out, "--format", "oci", "--no-cache").returncode == 0
    store.add("gone", "2")  # in the closure, not on disk
    store.closure()
    kept = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = store.build(out, "--format", "oci", "--no-cache")
    _input_error(result, "does not exist on disk")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == kept


@pytest.mark.parametrize("image_format", ["docker-archive", "oci", "oci-archive"])
def test_no_clobber_refuses_an_existing_image(tmp_path: Path, image_format: str) -> None:
    store = _small_store(tmp_path, 1024)
    out = _destination(tmp_path, image_format)
    assert store.build(out, "--format", image_format, "--no-cache").returncode == 0
    before = sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    result = store.build(out, "--format", image_format, "--no-clobber", "--no-cache")
    _input_error(result, f"-o {out}", "exists already")
    assert sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before
    fresh = tmp_path / "fresh" / out.name
    fresh.parent.mkdir()
    assert store.build(fresh, "--format", image_format, "--no-clobber").returncode == 0
    assert verify_image(str(fresh)).ok


def test_no_clobber_holds_when_the_file_appears_during_the_write(tmp_path: Path) -> None:
    """The check before the write is not the only one: a file that appears meanwhile
    is kept, and the new one is dropped, because the name is taken by ``link``."""
    out = tmp_path / "image.tar"
    refused = pytest.raises(NixlayerError, match="exists already")
    with refused, atomic_output(str(out), clobber=False) as file:
        file.write(b"new")
        out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["image.tar"]


def test_a_named_pipe_as_destination_is_written_into_not_replaced(tmp_path: Path) -> None:
    """As ``-o /dev/null`` must be: a file renamed over it would replace the device."""
    store = _small_store(tmp_path, 1024)
    expected = tmp_path / "image.tar"
    assert store.build(expected, "--no-cache").returncode == 0
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = store.build(fifo, "--no-cache")
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received == [expected.read_bytes()]
