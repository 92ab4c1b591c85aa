"""Inputs that used to end in an internal error (exit 1) or never end: JSON nested
100,000 levels deep in every JSON input but the closure, metadata files that are named
pipes or links to devices, base configs whose typed fields have other types, and
standard streams closed at start-up. Each must be one ``nixlayer: error:`` line with
exit 2, or, where the input is only a hint (a layer-cache entry), be ignored.

Every run here is bounded in time and memory, so that the code before the fix (which
read ``/dev/zero`` until the memory ran out, or waited on a named pipe for ever)
fails these tests instead of taking the machine with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from support.handmade import input_error as _input_error
from support.run import nixlayer_command, run_ok

from nixlayer.cli import main
from nixlayer.errors import NixlayerError
from nixlayer.formats import read_image
from nixlayer.inspect import describe_image
from nixlayer.jsonfile import MAX_DEPTH, parse_json
from nixlayer.report import format_description
from nixlayer.verify import verify_image

STORE_PATH = f"/nix/store/{'1' * 32}-one"
DEPTH = 100_000
DEEP = "[" * DEPTH + "]" * DEPTH
# One argument may hold 128 KiB (MAX_ARG_STRLEN): the deepest --cmd a shell can pass.
DEEP_ARGUMENT = "[" * 60_000 + "]" * 60_000
_MEMORY = 1 << 30
_SECONDS = 60


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY, _MEMORY))


def run_separately(
    *args: str | os.PathLike[str], shell_redirect: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """The CLI in a process of its own, within 1 GiB of memory and a minute, for what
    might not end; ``shell_redirect`` (``<&-``...) is applied by a shell that then
    becomes nixlayer."""
    command = [*nixlayer_command(), *map(str, args)]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    return subprocess.run(
        command, capture_output=True, check=False, timeout=_SECONDS, preexec_fn=_bounded
    )


def run(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI's ``main`` in this process: its exit code, stdout and stderr as a process
    of its own would give them, without the time it takes to start one."""
    out, err = io.TextIOWrapper(io.BytesIO()), io.TextIOWrapper(io.BytesIO())
    saved = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["nixlayer", *map(str, args)]
    try:
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = saved[0]
        signal.signal(signal.SIGTERM, saved[1])
    out.flush()
    err.flush()
    code = exited.value.code
    return subprocess.CompletedProcess(args, code, out.buffer.getvalue(), err.buffer.getvalue())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store of one path, its closure, and images of it in both formats."""
    folder = tmp_path_factory.mktemp("small")
    (folder / "root" / STORE_PATH.lstrip("/")).mkdir(parents=True)
    (folder / "root" / STORE_PATH.lstrip("/") / "hello").write_text("hello\n")
    closure = folder / "closure.json"
    closure.write_text(json.dumps([{"path": STORE_PATH, "references": [], "narSize": 1000}]))
    build = ("from-closure", closure, "--store-root", folder / "root", "-q", "--no-cache")
    run_ok(*build, "-o", folder / "image.tar")
    run_ok(*build, "-o", folder / "layout", "--format", "oci")
    deep = folder / "deep.json"
    deep.write_text(DEEP)
    return {"folder": folder, "closure": closure, "root": folder / "root", "deep": deep,
            "docker": folder / "image.tar", "oci": folder / "layout"}  # fmt: skip


def _build(
    small: dict[str, Path], out: Path, *options: str | os.PathLike[str], separately: bool = False
) -> subprocess.CompletedProcess[bytes]:
    return (run_separately if separately else run)(
        "from-closure", small["closure"], "--store-root", small["root"], "-q", "--no-cache",
        "-o", out, *options,
    )  # fmt: skip


# --- JSON nested 100,000 levels deep -------------------------------------------------


@pytest.mark.parametrize("flag", ["--config", "--group", "--previous"])
def test_deep_json_files_given_by_flags(small: dict[str, Path], tmp_path: Path, flag: str) -> None:
    _input_error(_build(small, tmp_path / "out.tar", flag, small["deep"]), "deep.json")
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("flag", ["--cmd", "--entrypoint"])
def test_deep_json_commands(small: dict[str, Path], tmp_path: Path, flag: str) -> None:
    line = _input_error(_build(small, tmp_path / "out.tar", flag, DEEP_ARGUMENT), flag)
    assert len(line) < 300  # the value is shown cut short


def test_deep_settings_from_attrs(small: dict[str, Path], tmp_path: Path) -> None:
    result = run("from-closure", small["deep"], "--settings-from-attrs", "-o", tmp_path / "o.tar")
    _input_error(result, "deep.json")


def test_deep_plans_given_to_plan_and_diff(small: dict[str, Path]) -> None:
    _input_error(run("plan", small["closure"], "--previous", small["deep"], "-q"), "deep.json")
    _input_error(run("diff", small["deep"], small["closure"]), "deep.json")
    _input_error(run("diff", small["closure"], small["deep"]), "deep.json")


def _docker_archive_with(source: Path, target: Path, change: Callable[[str, bytes], bytes]) -> Path:
    """A copy of a docker-archive with each member's bytes as ``change`` gives them."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old:
            data = change(member.name, old.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return target


def _manifest_of(archive: Path) -> list[dict[str, Any]]:
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]


def _image_commands(
    image: Path, tmp_path: Path, small: dict[str, Path], separately: bool = False
) -> list[subprocess.CompletedProcess[bytes]]:
    """The commands that read ``image``, each of which must fail in one line."""
    cli = run_separately if separately else run
    return [
        cli("inspect", image),
        _build(small, tmp_path / "out.tar", "--from", image, separately=separately),
        cli("plan", small["closure"], "--from", image, "-q"),
        cli("diff", image, small["closure"]),
    ]


@pytest.mark.parametrize("member", ["manifest.json", "config"])
def test_deep_docker_archive_metadata(small: dict[str, Path], tmp_path: Path, member: str) -> None:
    config = _manifest_of(small["docker"])[0]["Config"]
    name = config if member == "config" else member
    image = _docker_archive_with(
        small["docker"], tmp_path / "deep.tar", lambda n, data: DEEP.encode() if n == name else data
    )
    for result in _image_commands(image, tmp_path, small):
        _input_error(result, name)
    verified = run("verify", image)
    assert verified.returncode == 1 and b"nested too deeply" in verified.stdout


def _layout_copy(small: dict[str, Path], tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    shutil.copytree(small["oci"], layout, symlinks=True)
    return layout


def _manifest_blob(layout: Path) -> Path:
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.parametrize("where", ["index.json", "manifest"])
def test_deep_oci_layout_metadata(small: dict[str, Path], tmp_path: Path, where: str) -> None:
    layout = _layout_copy(small, tmp_path)
    target = layout / "index.json" if where == "index.json" else _manifest_blob(layout)
    target.write_text(DEEP)
    for result in _image_commands(layout, tmp_path, small):
        _input_error(result)
    verified = run("verify", layout)
    assert verified.returncode == 1 and b"nested too deeply" in verified.stdout


def test_deep_nested_index_is_reported_by_verify(small: dict[str, Path], tmp_path: Path) -> None:
    """An index whose manifest is itself an index, nested 100,000 levels deep."""
    layout = _layout_copy(small, tmp_path)
    nested = DEEP.encode()
    digest = hashlib.sha256(nested).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(nested)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": f"sha256:{digest}", "size": len(nested)})  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    verified = run("verify", layout)
    assert verified.returncode == 1, verified.stderr
    assert b"nested too deeply" in verified.stdout


def test_deep_index_json_at_the_output(small: dict[str, Path], tmp_path: Path) -> None:
    layout = _layout_copy(small, tmp_path)
    (layout / "index.json").write_text(DEEP)
    _input_error(_build(small, layout, "--format", "oci"), "index.json")
    assert (layout / "index.json").read_text() == DEEP


@pytest.mark.parametrize("damage", ["deep", "fifo", "dev-zero"])
def test_a_damaged_cache_entry_is_ignored(
    small: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    """A cache entry is only a hint: whatever is in its place, the build goes on."""
    cache, first, second = tmp_path / "cache", tmp_path / "first", tmp_path / "second"
    options = ("from-closure", small["closure"], "--store-root", small["root"], "-q",
               "--format", "oci", "--cache-dir", cache)  # fmt: skip
    assert run(*options, "-o", first).returncode == 0
    entries = list((cache / "layers").rglob("*.json"))
    assert entries
    for entry in entries:
        entry.unlink()
        if damage == "deep":
            entry.write_text(DEEP)
        elif damage == "fifo":
            os.mkfifo(entry)
        else:
            entry.symlink_to("/dev/zero")
    result = (run if damage == "deep" else run_separately)(*options, "-o", second)
    assert result.returncode == 0, result.stderr
    assert (first / "index.json").read_bytes() == (second / "index.json").read_bytes()


def test_json_nesting_is_bounded_below_python_s_own_limit() -> None:
    """Deep but within Python's recursion limit is refused as well: a document read
    must also be writable and printable from anywhere in nixlayer."""
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") == parse_json(
        "[" * MAX_DEPTH + "]" * MAX_DEPTH, "x"
    )
    with pytest.raises(NixlayerError, match="x: not valid JSON: nested too deeply"):
        parse_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "x")
    with pytest.raises(NixlayerError, match="NaN is not a JSON number"):
        parse_json('{"Healthcheck": NaN}', "x")


# --- metadata that is not a regular file --------------------------------------------


@contextmanager
def _made(path: Path, kind: str) -> Iterator[None]:
    """``path`` made a ``kind`` of file that is not a regular one."""
    if path.is_file() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        # bound under a short name (a socket's is at most 107 bytes), then moved
        with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX) as server:
            server.bind(f"{short}/s")
            os.rename(f"{short}/s", path)
            yield
            return
    yield


KINDS = ["fifo", "dev-zero", "folder", "socket"]
# In an image, a folder where a file should be is a missing file, as it always was.
IN_IMAGE = ["fifo", "dev-zero", "socket"]


def _separately(kind: str) -> bool:
    """Whether the code before the fix never ended on such a file (then the test runs
    the CLI in a process of its own, within bounds) or only failed."""
    return kind in ("fifo", "dev-zero")


@pytest.mark.parametrize("kind", IN_IMAGE)
@pytest.mark.parametrize("where", ["index.json", "oci-layout", "manifest"])
def test_layout_metadata_that_is_not_a_file(
    small: dict[str, Path], tmp_path: Path, where: str, kind: str
) -> None:
    """verify reports it, instead of waiting for ever on a named pipe or reading
    /dev/zero to the end."""
    layout = _layout_copy(small, tmp_path)
    target = _manifest_blob(layout) if where == "manifest" else layout / where
    with _made(target, kind):
        verified = (run_separately if _separately(kind) else run)("verify", layout)
        assert verified.returncode == 1, verified.stderr
        assert target.name.encode() in verified.stdout


@pytest.mark.parametrize(("where", "kind"), [("manifest", "fifo"), ("index.json", "dev-zero")])
def test_every_command_that_reads_an_image_ends(
    small: dict[str, Path], tmp_path: Path, where: str, kind: str
) -> None:
    """The two cases of the issue, through every command that reads an image."""
    layout = _layout_copy(small, tmp_path)
    target = _manifest_blob(layout) if where == "manifest" else layout / where
    with _made(target, kind):
        for result in _image_commands(layout, tmp_path, small, separately=True):
            _input_error(result, target.name, "not a regular file")


@pytest.mark.parametrize("kind", IN_IMAGE)
def test_layer_blob_that_is_not_a_file(small: dict[str, Path], tmp_path: Path, kind: str) -> None:
    layout = _layout_copy(small, tmp_path)
    manifest = json.loads(_manifest_blob(layout).read_text())
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].removeprefix("sha256:")
    with _made(layer, kind):
        verified = (run_separately if _separately(kind) else run)("verify", layout)
        assert verified.returncode == 1, verified.stderr
        assert layer.name.encode() in verified.stdout
        built = _build(small, tmp_path / "out.tar", "--from", layout, separately=_separately(kind))
        _input_error(built, layer.name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", ["--config", "--group"])
def test_flag_files_that_are_not_files(
    small: dict[str, Path], tmp_path: Path, flag: str, kind: str
) -> None:
    """(``--previous`` may be a closure, which may come from a pipe, as from stdin.)"""
    given = tmp_path / "given.json"
    given.write_text("{}")
    with _made(given, kind):
        built = _build(small, tmp_path / "out.tar", flag, given, separately=_separately(kind))
        _input_error(built, flag, "not a regular file")


@pytest.mark.parametrize("kind", KINDS)
def test_index_json_at_the_output_that_is_not_a_file(
    small: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    layout = _layout_copy(small, tmp_path)
    with _made(layout / "index.json", kind):
        built = _build(small, layout, "--format", "oci", separately=_separately(kind))
        _input_error(built, "index.json", "not a regular file")


# --- a base config's fields of the wrong type -----------------------------------------


def _with_config(source: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a docker-archive whose config ``change`` edits, under its new digest."""
    manifest = _manifest_of(source)
    old_name = manifest[0]["Config"]
    with tarfile.open(source) as tar:
        config = json.load(tar.extractfile(old_name))  # type: ignore[arg-type]
    change(config)
    data = json.dumps(config).encode()
    manifest[0]["Config"] = f"{hashlib.sha256(data).hexdigest()}.json"
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old:
            content = old.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == old_name:
                member.name, content = manifest[0]["Config"], data
            elif member.name == "manifest.json":
                content = json.dumps(manifest).encode()
            member.size = len(content)
            new.addfile(member, io.BytesIO(content))
    return target


WRONG_TYPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "architecture": lambda c: c.update(architecture=["amd64"]),
    "os": lambda c: c.update(os=["linux"]),
    "variant": lambda c: c.update(variant=7),
    "created": lambda c: c.update(created=0),
    "os.features": lambda c: c.update({"os.features": "sse4"}),
    "history": lambda c: c.update(history="abc"),
    "comment": lambda c: c["history"][0].update(comment=5),
    "User": lambda c: c.update(config={"User": 0}),
}


@pytest.mark.parametrize("field", sorted(WRONG_TYPES))
def test_base_config_field_of_the_wrong_type(
    small: dict[str, Path], tmp_path: Path, field: str
) -> None:
    """verify reports it; --from refuses the base (a consumer refuses such a config, and
    the new one would carry it); inspect shows the field as JSON, and does not crash."""
    image = _with_config(small["docker"], tmp_path / "base.tar", WRONG_TYPES[field])
    problems = verify_image(str(image)).problems
    assert len(problems) == 1 and f"{field} " in problems[0], problems
    _input_error(_build(small, tmp_path / "out.tar", "--from", image), "--from", field)
    assert not (tmp_path / "out.tar").exists()
    assert "['" not in format_description(describe_image(read_image(str(image))))


def test_base_config_without_architecture(small: dict[str, Path], tmp_path: Path) -> None:
    image = _with_config(small["docker"], tmp_path / "base.tar", lambda c: c.pop("architecture"))
    assert run("verify", image).returncode == 1
    _input_error(_build(small, tmp_path / "out.tar", "--from", image), "architecture is missing")


def test_base_config_with_a_null_history_is_a_base_without_history(
    small: dict[str, Path], tmp_path: Path
) -> None:
    """null is a field not set, for consumers as for nixlayer."""
    image = _with_config(small["docker"], tmp_path / "base.tar", lambda c: c.update(history=None))
    assert run("verify", image).returncode == 0
    result = _build(small, tmp_path / "out.tar", "--from", image)
    assert result.returncode == 0, result.stderr
    assert run("verify", tmp_path / "out.tar").returncode == 0


def test_oci_ref_name_of_the_wrong_type(small: dict[str, Path], tmp_path: Path) -> None:
    layout = _layout_copy(small, tmp_path)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"]["io.containerd.image.name"] = ["app"]
    (layout / "index.json").write_text(json.dumps(index))
    shown = run("inspect", layout)
    assert shown.returncode == 0, shown.stderr


# --- closed standard streams ---------------------------------------------------------


def test_plan_from_a_closed_stdin(small: dict[str, Path]) -> None:
    _input_error(run_separately("plan", "-", shell_redirect="<&-"), "standard input is closed")


def test_image_to_a_closed_stdout(small: dict[str, Path]) -> None:
    result = run_separately("from-closure", small["closure"], "--store-root", small["root"],
                            "-o", "-", "-q", shell_redirect=">&-")  # fmt: skip
    _input_error(result, "standard output is closed")
    _input_error(
        run_separately("inspect", small["docker"], shell_redirect=">&-"), "standard output"
    )


def test_plan_with_stderr_closed_writes_only_the_plan_to_stdout(small: dict[str, Path]) -> None:
    result = run_separately(
        "plan", small["closure"], "--store-root", small["root"], shell_redirect="2>&-"
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["layers"]


def test_notes_with_stderr_closed_stay_out_of_the_image_on_stdout(
    small: dict[str, Path],
) -> None:
    result = run_separately("from-closure", small["closure"], "--store-root", small["root"],
                            "-o", "-", "--no-cache", shell_redirect="2>&-")  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == small["docker"].read_bytes()


# --- a closure that never ends -------------------------------------------------------


def test_a_closure_read_from_a_device_ends(small: dict[str, Path]) -> None:
    """The closure may come from a pipe, so it is not held to a regular file: but one
    entry or line that goes on for ever is refused before the memory runs out."""
    _input_error(run_separately("plan", "/dev/zero"), "/dev/zero", "not a closure")


def test_a_closure_whose_string_never_ends(small: dict[str, Path]) -> None:
    endless = 'printf \'["\'; tr "\\0" a < /dev/zero'
    with subprocess.Popen(["sh", "-c", endless], stdout=subprocess.PIPE) as writer:
        try:
            result = subprocess.run(
                [*nixlayer_command(), "plan", "-"], stdin=writer.stdout, capture_output=True,
                check=False, timeout=_SECONDS, preexec_fn=_bounded,
            )  # fmt: skip
        finally:
            writer.kill()
    _input_error(result, "<stdin>", "not a closure")
