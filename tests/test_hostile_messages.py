"""Messages: every failure is one line, ``nixlayer: error: …``, that names the file,
path or flag and says in words what is wrong. No ``[Errno 28]`` alone, no Python bytes
literal, no note line before it, no line of kilobytes for a path near PATH_MAX, and a
newline or a byte that is not UTF-8 in a name is shown escaped, on that one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.handmade import Store
from support.handmade import input_error as _input_error
from support.run import nixlayer_command, run_nixlayer, run_ok

LONGEST_LINE = 600  # two shortened paths and the words around them; PATH_MAX is 4096


def _error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """The run's whole stderr is one error line: exit 2, the words in it, nothing of
    Python's own (``[Errno``, ``b'``), and no path shown at full length."""
    line = _input_error(result, *words)
    assert result.stderr.count(b"\n") == 1, result.stderr
    assert "[Errno" not in line and "b'" not in line and 'b"' not in line, line
    assert len(line) < LONGEST_LINE, line
    return line


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """One store path with one small file."""
    store = Store(tmp_path / "in")
    top = store.add("app", "1")
    top.mkdir()
    (top / "file").write_bytes(b"content")
    return store


def _build(store: Store, *options: str | os.PathLike[str], cwd: Path | None = None):
    closure = store.closure()
    return run_nixlayer("from-closure", closure, "--store-root", store.root, *options, cwd=cwd)


# --- the cases the issue names --------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_device_as_output_is_named(store: Store) -> None:
    _error(_build(store, "-o", "/dev/full", "-q"), "-o /dev/full", "No space left on device")
    plan = run_nixlayer("plan", store.closure(), "-o", "/dev/full", "-q")
    _error(plan, "-o /dev/full", "No space left on device")


def test_a_file_replaced_by_a_folder_while_the_layer_is_read(store: Store) -> None:
    """The walk saw a file; by the time the layer reaches it, it is a folder (which
    opens, and then reads as EISDIR). The image streams to a pipe this test holds:
    once its first bytes come, the layer was laid out; a large file before the victim
    keeps the writer waiting on the pipe until the victim has been swapped."""
    top = store.root / store.paths[0].lstrip("/")
    (top / "a-large").write_bytes(bytes(64 << 20))
    victim = top / "z-victim"
    victim.write_bytes(b"small")
    args = ("from-closure", store.closure(), "--store-root", store.root, "-o", "-", "--no-cache")
    with subprocess.Popen(
        [*nixlayer_command(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stdout.read(512)
        victim.unlink()
        victim.mkdir()
        _, stderr = process.communicate(timeout=300)
    result = subprocess.CompletedProcess(args, process.returncode, b"", stderr)
    _error(result, str(victim), "replaced while it was being read")


@pytest.mark.parametrize("root", ["file", "missing"])
def test_a_store_root_that_is_no_folder(store: Store, tmp_path: Path, root: str) -> None:
    """Said of --store-root, not of every store path below it (as b'…': Not a directory)."""
    given = store.closure() if root == "file" else tmp_path / "missing"
    result = run_nixlayer("from-closure", store.closure(), "--store-root", given, "-q",
                          "-o", tmp_path / "x.tar")  # fmt: skip
    words = "is a file, not a folder" if root == "file" else "does not exist"
    _error(result, f"--store-root {given}: ", words)


@pytest.mark.parametrize("image_format", ["docker-archive", "oci"])
def test_an_output_below_a_file(store: Store, tmp_path: Path, image_format: str) -> None:
    """``-o file/out.tar`` where ``file`` is a file: not "does not exist"."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    result = _build(store, "-o", blocker / "sub" / "out", "--format", image_format, "-q")
    _error(result, f"-o {blocker}/sub/out", f"{blocker} is a file, not a folder")
    assert blocker.read_bytes() == b""


@pytest.mark.parametrize("command", ["inspect", "verify", "--from"])
def test_a_device_is_not_an_image(store: Store, tmp_path: Path, command: str) -> None:
    """Not "no such image file or folder": /dev/null is there, and is a device."""
    if command == "--from":
        result = _build(store, "--from", "/dev/null", "-o", tmp_path / "x.tar")
    else:
        result = run_nixlayer(command, "/dev/null")
    _error(result, "/dev/null: a character device, not an image")


def test_a_plan_of_another_version(store: Store, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    run_ok("plan", store.closure(), "-o", plan, "-q")
    future = json.loads(plan.read_text())
    future["version"] = 99
    plan.write_text(json.dumps(future))
    _error(run_nixlayer("diff", plan, store.closure()), f"OLD {plan}", "version 99")
    result = _build(store, "--previous", plan, "-o", tmp_path / "x.tar")
    _error(result, f"--previous {plan}", "a plan of version 99", "version 1")
    # A plan where a closure belongs, of any version, is said to be a plan.
    for command in ("plan", "from-closure"):
        _error(run_nixlayer(command, plan), f"{plan}: a nixlayer plan, not a closure")


def test_a_device_given_to_add(store: Store, tmp_path: Path) -> None:
    line = _error(_build(store, "--add", "/dev/null:/x", "-o", tmp_path / "x.tar"),
                  "--add /dev/null:/x", "a character device")  # fmt: skip
    assert "Nix store" not in line


@pytest.mark.parametrize(
    ("store_dir", "words"),
    [
        ("/", "the root /"),
        ("//nix", "an empty part"),
    ],
)
def test_a_store_directory_says_what_is_wrong_with_it(
    store: Store, tmp_path: Path, store_dir: str, words: str
) -> None:
    _error(_build(store, "--store-dir", store_dir, "-o", tmp_path / "x.tar"),
           f"--store-dir {store_dir}: ", words)  # fmt: skip


def test_settings_from_attrs_with_the_closure_on_stdin(store: Store, tmp_path: Path) -> None:
    """The settings are read from the closure's file, which stdin cannot give twice."""
    command = [*nixlayer_command(), "from-closure", "-", "--settings-from-attrs",
               "--store-root", str(store.root), "-o", str(tmp_path / "x.tar")]  # fmt: skip
    with store.closure().open("rb") as closure:
        result = subprocess.run(command, stdin=closure, capture_output=True, timeout=300)
    _error(result, "--settings-from-attrs", "stdin")
    assert not (tmp_path / "x.tar").exists()


def test_an_unknown_input_format_names_the_flag(store: Store, tmp_path: Path) -> None:
    _error(_build(store, "--input-format", "foo", "-o", tmp_path / "x.tar"),
           "--input-format foo: unknown", "path-info-list")  # fmt: skip


def test_an_oci_digest_of_another_algorithm_names_the_image(store: Store, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert _build(store, "--format", "oci", "-o", layout, "-q").returncode == 0
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "md5:" + "0" * 32
    (layout / "index.json").write_text(json.dumps(index))
    _error(run_nixlayer("inspect", layout), f"{layout}: unsupported digest")


def test_a_layer_that_is_not_the_gzip_it_claims(store: Store, tmp_path: Path) -> None:
    """verify's problem lines are words too: gzip's "Not a gzipped file (b'..')" is not."""
    layout = tmp_path / "layout"
    assert _build(store, "--format", "oci", "--compress", "none", "-o", layout).returncode == 0
    index = json.loads((layout / "index.json").read_text())
    manifest_blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_blob.read_text())
    manifest["layers"][0]["mediaType"] += "+gzip"
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    result = run_nixlayer("verify", layout)
    assert result.returncode == 1, result.stderr
    report = result.stdout.decode()
    assert "not a gzip stream" in report and "b'" not in report, report


# --- empty paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag", ["-o", "--cache-dir", "--from", "--store-root", "--previous", "--config", "--group"]
)
def test_an_empty_path_option_is_refused(store: Store, tmp_path: Path, flag: str) -> None:
    """``-o ""`` wrote ./image.tar, ``--store-root ""`` read the current folder: an
    empty path names nothing, and is refused before anything is read or written."""
    closure = store.closure()
    result = run_nixlayer("from-closure", closure, "--store-root", store.root, flag, "",
                          *(() if flag == "-o" else ("-o", tmp_path / "x.tar")),
                          cwd=tmp_path)  # fmt: skip
    _error(result, flag.lstrip("-"), "an empty path")
    assert sorted(os.listdir(tmp_path)) == ["in"]


@pytest.mark.parametrize(
    "args",
    [("plan", "CLOSURE", "-o", ""), ("inspect", ""), ("diff", "", "CLOSURE")],
)  # fmt: skip
def test_an_empty_path_argument_is_refused(
    store: Store, tmp_path: Path, args: tuple[str, ...]
) -> None:
    closure = str(store.closure())
    result = run_nixlayer(*(closure if a == "CLOSURE" else a for a in args), cwd=tmp_path)
    _error(result, "an empty path")
    assert sorted(os.listdir(tmp_path)) == ["in"]


# --- no note line before the error -------------------------------------------------------


def test_a_damaged_base_prints_its_error_alone(store: Store, tmp_path: Path) -> None:
    """A base that holds a path of the closure makes a note ("1 path is in the base
    image already"); when the base's layer then turns out damaged, the run prints the
    error line alone: notes wait until the image is written."""
    base = tmp_path / "base.tar"
    run_ok("from-closure", store.closure(), "--store-root", store.root, "-o", base,
           "--no-cache", "-q")  # fmt: skip
    _damage_layer(base)
    extra = store.add("extra", "2")
    extra.mkdir()
    result = _build(store, "--from", base, "-o", tmp_path / "x.tar", "--no-cache")
    _error(result, str(base), "does not match")
    assert not (tmp_path / "x.tar").exists()
    good = _build(store, "-o", tmp_path / "y.tar", "--no-cache")
    assert good.returncode == 0 and good.stderr.startswith(b"nixlayer: wrote"), good.stderr


def _damage_layer(archive: Path) -> None:
    """One flipped byte inside the first layer's first file."""
    data = bytearray(archive.read_bytes())
    at = data.index(b"content")
    data[at] ^= 1
    archive.write_bytes(bytes(data))


def test_a_closure_without_sizes_prints_no_note_before_an_error(
    store: Store, tmp_path: Path
) -> None:
    """The note "has no narSize: reading the sizes from …" comes after the work, not before the
    error that stops it."""
    text = store.folder / "closure.txt"
    text.write_text(f"{store.paths[0]}\n\n0\n", encoding="utf-8")
    result = run_nixlayer("from-closure", text, "--store-root", store.root,
                          "--strategy", "none", "-o", tmp_path / "x.tar")  # fmt: skip
    _error(result, "--strategy none")
    ok = run_ok("plan", text, "--store-root", store.root, "-o", tmp_path / "p.json")
    assert b"has no narSize" in ok.stderr


# --- odd and over-long names --------------------------------------------------------------


def test_names_with_a_newline_or_a_byte_not_utf8_stay_on_one_line(
    store: Store, tmp_path: Path
) -> None:
    top = store.root / store.paths[0].lstrip("/")
    name = b"bad\nname-\xff"
    os.mkfifo(os.path.join(os.fsencode(top), name))
    line = _error(_build(store, "-o", tmp_path / "x.tar"), "bad\\nname-\\xff", "a named pipe")
    assert "\\udcff" not in line
    out = os.fsdecode(os.fsencode(tmp_path) + b"/new\nfolder-\xff/x.tar")
    _error(run_nixlayer("plan", store.closure(), "-o", out, "-q"),
           "-o ", "new\\nfolder-\\xff/x.tar", "does not exist")  # fmt: skip


def test_a_name_with_a_newline_can_be_added(store: Store, tmp_path: Path) -> None:
    """``--add SRC:DEST`` with a newline in SRC or DEST is of the right form."""
    source = tmp_path / "two\nlines"
    source.write_bytes(b"x")
    out = tmp_path / "x.tar"
    run_ok("from-closure", store.closure(), "--store-root", store.root, "-q", "-o", out,
           "--add", f"{source}:/two\nlines", "--symlink", "/link:two\nlines")  # fmt: skip


def _deep_store(store: Store) -> Path:
    """A store path whose file sits deeper than PATH_MAX (made relative to each
    folder in turn: no path that long can be given to the system)."""
    top = store.root / store.paths[0].lstrip("/")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(45):
            os.mkdir("d" * 100, dir_fd=fd)
            inner = os.open("d" * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("deepest", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return top


def test_a_store_tree_deeper_than_path_max_gives_a_short_line(store: Store, tmp_path: Path) -> None:
    top = _deep_store(store)
    line = _error(_build(store, "-o", tmp_path / "x.tar"), str(top)[:40], "...", "too long")
    assert "d" * 60 in line  # the tail says where in the tree


@pytest.mark.parametrize("command", ["from-closure", "plan", "inspect", "verify"])
def test_an_over_long_path_argument_is_shown_short(
    store: Store, tmp_path: Path, command: str
) -> None:
    deep = "/".join(["e" * 200] * 25)
    if command == "from-closure":
        result = _build(store, "-o", f"{deep}/x.tar")
    elif command == "plan":
        result = run_nixlayer("plan", store.closure(), "--previous", deep)
    else:
        result = run_nixlayer(command, deep)
    _error(result, deep[:40], "...", "too long")
