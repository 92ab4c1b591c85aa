"""Names that change what an image means (issue 14, part 2, and the numeric and
outer-archive part of 4): whiteouts, a store hidden by a non-directory above it,
numbers consumers reject, and member names of the outer archive that climb out.

nixlayer must never write such a layer (one ``nixlayer: error:`` line naming the
path or flag, exit 2, nothing written), and ``verify`` must reject an image that a
consumer would read differently from what its layers list; umoci shows what a
consumer makes of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.handmade import input_error as _input_error
from support.run import nixlayer_command, run_nixlayer
from support.tools import Tools, unpack_image

from nixlayer.customisation import parse_mkdir
from nixlayer.errors import NixlayerError
from nixlayer.verify import verify_image

HASH = "1" * 32
ONE = f"/nix/store/{HASH}-one"
TWO = f"/nix/store/{'2' * 32}-two"
OURS = "nixlayer"  # the created_by of the layers nixlayer writes


# --- a tiny store and closure --------------------------------------------------------


def _store(tmp_path: Path, store_dir: str = "/nix/store") -> tuple[Path, Path, str]:
    """A store of one path (``bin/hi``) under ``tmp_path/root``; its closure file and
    the store path."""
    path = f"{store_dir}/{HASH}-one"
    disk = tmp_path / "root" / path.lstrip("/")
    (disk / "bin").mkdir(parents=True)
    (disk / "bin" / "hi").write_text("hi\n")
    closure = tmp_path / "closure.json"
    closure.write_text(json.dumps([{"path": path, "references": [], "narSize": 1000}]))
    return tmp_path / "root", closure, path


def _build(tmp_path: Path, *flags: str | Path, store_dir: str = "/nix/store") -> Any:
    root, closure, _ = _store(tmp_path, store_dir)
    out = tmp_path / "image.tar"
    result = run_nixlayer(
        "from-closure", closure, "--store-root", root, "--store-dir", store_dir,
        "-o", out, "-q", *flags,
    )  # fmt: skip
    return result, out


# --- writers: whiteout names ---------------------------------------------------------


@pytest.mark.parametrize("name", [".wh.secret", ".wh..wh..opq", "bin/.wh.hi"])
def test_a_store_file_with_a_whiteout_name_is_refused(tmp_path: Path, name: str) -> None:
    root, closure, path = _store(tmp_path)
    (root / path.lstrip("/") / name).write_text("")
    out = tmp_path / "image.tar"
    result = run_nixlayer("from-closure", closure, "--store-root", root, "-o", out, "-q")
    _input_error(result, f"{path}/{name}", ".wh.")
    assert not out.exists()


@pytest.mark.parametrize(
    "flags",
    [
        ("--mkdir", "/.wh.nix"),
        ("--mkdir", "/.wh..wh..opq"),
        ("--mkdir", "/etc/.wh.passwd/x"),
        ("--symlink", "/.wh..wh..opq:/etc"),
        ("--symlink", "/usr/.wh.bin:/x"),
    ],
)
def test_a_flag_path_with_a_whiteout_name_is_refused(
    tmp_path: Path, flags: tuple[str, str]
) -> None:
    result, out = _build(tmp_path, *flags)
    _input_error(result, f"{flags[0]} {flags[1].split(':')[0]}", ".wh.")
    assert not out.exists()


def test_an_added_folder_holding_a_whiteout_name_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "add"
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / ".wh..wh..opq").write_text("")
    result, out = _build(tmp_path, "--add", f"{folder}:/")
    _input_error(result, f"--add {folder}:/", "etc/.wh..wh..opq")
    assert not out.exists()
    result, _ = _build(tmp_path / "b", "--add", f"{tmp_path / 'closure.json'}:/srv/.wh.x")
    _input_error(result, "--add /srv/.wh.x", ".wh.")


def test_contents_whose_store_path_holds_a_whiteout_name_are_refused(tmp_path: Path) -> None:
    root, closure, path = _store(tmp_path)
    (root / path.lstrip("/") / "bin" / ".wh.sh").write_text("")
    result = run_nixlayer(
        "from-closure", closure, "--store-root", root, "--contents", path,
        "-o", tmp_path / "image.tar", "-q",
    )  # fmt: skip
    _input_error(result, f"{path}/bin/.wh.sh")


def test_a_store_directory_with_a_whiteout_part_is_refused(tmp_path: Path) -> None:
    result, out = _build(tmp_path, store_dir="/nix/.wh.store")
    _input_error(result, "--store-dir /nix/.wh.store", ".wh.")
    assert not out.exists()


# --- writers: hiding the store -------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--symlink", "/nix:/etc"), "--symlink /nix"),
        (("--add", "{file}:/nix"), "--add {file}:/nix"),
        (("--add", "{link}:/nix"), "--add {link}:/nix"),
        (("--add", "{tree}:/"), "--add {tree}:/"),
    ],
)
def test_a_non_directory_over_a_parent_of_the_store_is_refused(
    tmp_path: Path, flags: tuple[str, str], named: str
) -> None:
    places = {"file": tmp_path / "f", "link": tmp_path / "l", "tree": tmp_path / "tree"}
    places["file"].write_text("x")
    places["link"].symlink_to("/etc")
    places["tree"].mkdir()
    (places["tree"] / "nix").symlink_to("/etc")
    result, out = _build(tmp_path, flags[0], flags[1].format(**places))
    _input_error(result, named.format(**places), "/nix is a parent of the store directory")
    assert not out.exists()


def test_a_parent_of_a_deeper_store_directory_is_protected(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for dest in ("/opt", "/opt/n"):
        result, out = _build(tmp_path / dest.replace("/", "_"), "--add", f"{tmp_path / 'f'}:{dest}",
                             store_dir="/opt/n/store")  # fmt: skip
        _input_error(result, f"--add {tmp_path / 'f'}:{dest}", f"{dest} is a parent")
        assert not out.exists()


def test_contents_with_a_top_level_nix_entry_are_refused(tmp_path: Path) -> None:
    root, closure, path = _store(tmp_path)
    (root / path.lstrip("/") / "nix").symlink_to("/etc")
    result = run_nixlayer(
        "from-closure", closure, "--store-root", root, "--contents", path,
        "-o", tmp_path / "image.tar", "-q",
    )  # fmt: skip
    _input_error(result, f"--contents {path}", "/nix is a parent of the store directory")


def test_a_directory_over_a_parent_of_the_store_is_fine(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "log").write_text("x")
    result, out = _build(tmp_path, "--mkdir", "/nix", "--add", f"{tmp_path / 'var'}:/nix/var")
    assert result.returncode == 0, result.stderr
    assert verify_image(str(out)).ok


# --- writers: numbers ----------------------------------------------------------------


def test_mkdir_owner_beyond_32_bits_is_refused(tmp_path: Path) -> None:
    result, out = _build(tmp_path, "--mkdir", "/x:0755:99999999999999999999999999:0")
    _input_error(result, "--mkdir /x:0755:99999999999999999999999999:0", "4294967294")
    assert not out.exists()
    with pytest.raises(NixlayerError, match="at most"):
        parse_mkdir("/x:0755:0:4294967295")  # (gid_t)-1: chown leaves the group unchanged
    assert parse_mkdir("/x:0755:4294967294:0").owner == (4294967294, 0)


# --- verify: hand-made images --------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: Any) -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _layer(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _store_layer(path: str = ONE) -> tuple[bytes, dict[str, str]]:
    """A layer as nixlayer writes it, listing ``path`` in its history."""
    name = path.lstrip("/")
    layer = _layer(
        _member("nix/", tarfile.DIRTYPE),
        _member("nix/store/", tarfile.DIRTYPE),
        _member(f"{name}/", tarfile.DIRTYPE),
        _member(f"{name}/hi", data=b"hi\n"),
    )
    return layer, {"created_by": OURS, "comment": f"store paths: {path}"}


def _archive(
    target: Path, layers: list[tuple[bytes, dict[str, str]]], layer_names: list[str] | None = None
) -> Path:
    """A docker-archive of these layers and history entries."""
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer, _ in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [history for _, history in layers],
    }).encode()  # fmt: skip
    names = layer_names or [f"{n:04d}/layer.tar" for n in range(1, len(layers) + 1)]
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": ["hostile:1"], "Layers": names}]
    ).encode()
    files = [*zip(names, (layer for layer, _ in layers), strict=True),
             ("config.json", config), ("manifest.json", manifest)]  # fmt: skip
    target.write_bytes(_layer(*(_member(name, data=data) for name, data in files)))
    return target


def _problems(path: Path) -> str:
    report = verify_image(str(path))
    assert not report.ok, f"verify passed {path}"
    return "\n".join(report.problems)


def test_verify_flags_a_whiteout_in_a_layer_nixlayer_wrote(tmp_path: Path) -> None:
    layer, history = _store_layer()
    custom = _layer(_member("etc/", tarfile.DIRTYPE), _member("etc/.wh.passwd"))
    custom_history = {"created_by": OURS, "comment": "customisation: "}
    image = _archive(tmp_path / "i.tar", [(layer, history), (custom, custom_history)])
    assert "nixlayer wrote it, yet it holds the whiteout etc/.wh.passwd" in _problems(image)


def test_verify_accepts_another_tools_whiteouts_away_from_the_store(tmp_path: Path) -> None:
    """A layer another tool wrote may delete what lower layers hold (that is what a
    whiteout is for), and empty a folder; only the store must stay as listed."""
    base = _layer(_member("etc/", tarfile.DIRTYPE), _member("etc/passwd", data=b"root\n"))
    top = _layer(_member("etc/", tarfile.DIRTYPE), _member("etc/.wh.passwd"),
                 _member("tmp/", tarfile.DIRTYPE), _member("tmp/.wh..wh..opq"))  # fmt: skip
    image = _archive(tmp_path / "i.tar", [(base, {"created_by": "docker"}), _store_layer(),
                                          (top, {"created_by": "RUN rm /etc/passwd"})])  # fmt: skip
    report = verify_image(str(image))
    assert report.ok, report.problems


HIDERS = {
    "nix symlink": (_member("nix", tarfile.SYMTYPE, linkname="/etc"),),
    "store file": (_member("nix/", tarfile.DIRTYPE), _member("nix/store", data=b"x")),
    "whiteout nix": (_member(".wh.nix"),),
    "whiteout store path": (
        _member("nix/", tarfile.DIRTYPE),
        _member("nix/store/", tarfile.DIRTYPE),
        _member(f"nix/store/.wh.{HASH}-one"),
    ),
    "opaque root": (_member(".wh..wh..opq"),),
    "opaque store": (
        _member("nix/", tarfile.DIRTYPE),
        _member("nix/store/", tarfile.DIRTYPE),
        _member("nix/store/.wh..wh..opq"),
    ),
    "store path as a file": (
        _member("nix/", tarfile.DIRTYPE),
        _member("nix/store/", tarfile.DIRTYPE),
        _member(ONE.lstrip("/"), data=b"not a folder"),
    ),
}


@pytest.mark.parametrize("hider", sorted(HIDERS))
def test_verify_flags_a_layer_that_hides_the_store(tmp_path: Path, hider: str) -> None:
    top = _layer(*HIDERS[hider])
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, {"created_by": "tool"})])
    assert f"hides the store path {ONE}" in _problems(image)


def test_verify_flags_a_whiteout_inside_a_store_path(tmp_path: Path) -> None:
    name = ONE.lstrip("/")
    top = _layer(_member(f"{name}/", tarfile.DIRTYPE), _member(f"{name}/.wh.hi"))
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, {"created_by": "tool"})])
    assert f"changes the store path {ONE}" in _problems(image)


def test_a_store_path_listed_again_above_is_not_lost(tmp_path: Path) -> None:
    """A base whose store path another tool deleted, built on with that path again:
    the consumer sees the higher layer's copy."""
    top = _layer(_member(".wh.nix"))
    image = _archive(tmp_path / "i.tar",
                     [_store_layer(), (top, {"created_by": "tool"}), _store_layer()])  # fmt: skip
    report = verify_image(str(image))
    assert report.ok, report.problems


def test_umoci_loses_the_store_verify_flags(tmp_path: Path, tools: Tools) -> None:
    """What the verify check stands for: a symlink over /nix in a higher layer leaves
    the unpacked image without its store."""
    top = _layer(_member("nix", tarfile.SYMTYPE, linkname="/etc"))
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, {"created_by": "tool"})])
    rootfs = unpack_image(image, tmp_path, tools.skopeo, tools.umoci)
    assert (rootfs / "nix").is_symlink()
    assert not (rootfs / ONE.lstrip("/") / "hi").exists()
    assert f"hides the store path {ONE}" in _problems(image)


def test_umoci_deletes_what_a_whiteout_names(tmp_path: Path, tools: Tools) -> None:
    """A store file named like a whiteout is no file to a consumer: umoci deletes the
    name after ``.wh.``, which is why nixlayer refuses to write one."""
    name = ONE.lstrip("/")
    layer = _layer(
        _member("nix/", tarfile.DIRTYPE), _member("nix/store/", tarfile.DIRTYPE),
        _member(f"{name}/", tarfile.DIRTYPE), _member(f"{name}/.wh.hi"),
    )  # fmt: skip
    history = {"created_by": OURS, "comment": f"store paths: {TWO}"}
    image = _archive(tmp_path / "i.tar", [_store_layer(), (layer, history)])
    rootfs = unpack_image(image, tmp_path, tools.skopeo, tools.umoci)
    assert not (rootfs / name / "hi").exists()
    problems = _problems(image)
    assert "nixlayer wrote it, yet it holds the whiteout" in problems
    assert f"changes the store path {ONE}" in problems


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((_member("etc/.wh.x"), _member("etc/x-link", tarfile.LNKTYPE, linkname="etc/.wh.x")),
         "hard link to the whiteout"),
        ((_member("etc/.wh."),), "a whiteout that consumers read differently"),
        ((_member(".wh..wh.plnk"),), "a whiteout that consumers read differently"),
        ((_member("etc/x"), _member("etc/.wh.x")), "deletes a name this same layer holds"),
        ((_member("ab", pax_headers={"path": "a\0b"}),), "unsafe member name"),
        ((_member("x", uid=10**26),), f"uid {10**26} is out of range"),
        ((_member("x", gid=4294967295),), "gid 4294967295 is out of range"),
        ((_member("x", pax_headers={"mtime": "1e30"}),), "PAX mtime '1e30' is not a decimal"),
        ((_member("x", pax_headers={"uid": "abc"}),), "PAX uid 'abc' is not a decimal number"),
        ((_member("x", pax_headers={"size": "-1"}),), "PAX size '-1' is not a decimal number"),
        ((_member("x", pax_headers={"mtime": str(2**64)}),), "mtime 1.8446744073709552e+19 is out"),
    ],
)  # fmt: skip
def test_verify_flags_members_consumers_read_differently(
    tmp_path: Path, members: tuple[Any, ...], message: str
) -> None:
    image = _archive(tmp_path / "i.tar", [(_layer(*members), {"created_by": "tool"})])
    assert message in _problems(image)


def _with_mode_field(layer: bytes, field: bytes) -> bytes:
    """The layer with its first header's 8-byte mode field replaced (tarfile writes
    only the permission bits), and the header's checksum made right again."""
    block = bytearray(layer[:512])
    block[100:108] = field
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + layer[512:]


@pytest.mark.parametrize(
    ("field", "message"),
    [(b"1000644\0", "mode 1000644"), (b"\xff" * 8, "mode -1")],  # octal, and base-256 -1
)
def test_verify_flags_a_mode_beyond_a_files_bits(
    tmp_path: Path, field: bytes, message: str
) -> None:
    layer = _with_mode_field(_layer(_member("x")), field)
    image = _archive(tmp_path / "i.tar", [(layer, {"created_by": "tool"})])
    assert message in _problems(image)


# --- the outer archive's member names ------------------------------------------------


@pytest.mark.parametrize("name", ["../evil/layer.tar", "/abs/layer.tar", "a/../../layer.tar"])
def test_outer_member_names_that_climb_out(tmp_path: Path, name: str) -> None:
    image = _archive(tmp_path / "i.tar", [_store_layer()], layer_names=[name])
    assert f"holds the member {name}" in _problems(image)
    _input_error(run_nixlayer("inspect", image), str(image), name)
    result, out = _build(tmp_path, "--from", image)
    _input_error(result, str(image), name)
    assert not out.exists()


def test_verify_reads_names_as_consumers_clean_them(tmp_path: Path) -> None:
    """``./nix/./store/.wh.<path>`` is the same whiteout to containerd and umoci."""
    top = _layer(_member(f"./nix/./store/.wh.{HASH}-one"))
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, {"created_by": "tool"})])
    assert f"hides the store path {ONE}" in _problems(image)


def test_verify_flags_a_whiteout_that_deletes_the_folder_above(tmp_path: Path) -> None:
    top = _layer(_member("nix/", tarfile.DIRTYPE), _member("nix/store/", tarfile.DIRTYPE),
                 _member("nix/store/.wh.."))  # fmt: skip
    image = _archive(tmp_path / "i.tar", [_store_layer(), (top, {"created_by": "tool"})])
    assert "nix/store/.wh.. is a whiteout that consumers read differently" in _problems(image)


def test_verify_flags_a_pax_global_header_that_renames(tmp_path: Path) -> None:
    """tarfile and GNU tar apply a global ``path`` to every later member; Go's
    archive/tar, as containerd uses it, does not."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"path": "etc/passwd"}) as tar:  # fmt: skip
        tar.addfile(tarfile.TarInfo("harmless"), io.BytesIO(b""))
    image = _archive(tmp_path / "i.tar", [(buffer.getvalue(), {"created_by": "tool"})])
    assert "a PAX global header sets path" in _problems(image)


def test_verify_flags_a_store_path_a_nixlayer_layer_does_not_list(tmp_path: Path) -> None:
    layer, _ = _store_layer()
    image = _archive(
        tmp_path / "i.tar",
        [_store_layer(TWO), (layer, {"created_by": OURS, "comment": "customisation: mkdir /x"})],
    )
    assert f"holds the store path {ONE}, which its history does not list" in _problems(image)


def test_a_nul_in_a_flag_from_a_settings_file_is_refused(tmp_path: Path) -> None:
    root, _, path = _store(tmp_path)
    attrs = tmp_path / "attrs.json"
    attrs.write_text(json.dumps({
        "closure": [{"path": path, "references": [], "narSize": 1000}],
        "nixlayer": {"symlink": ["/x:/etc/a\0b"]},
    }))  # fmt: skip
    out = tmp_path / "image.tar"
    result = run_nixlayer("from-closure", attrs, "--store-root", root, "--settings-from-attrs",
                          "-o", out, "-q")  # fmt: skip
    # named as the settings file gave it, not by a flag the user never typed
    _input_error(result, f"{attrs}: attribute 'nixlayer': 'symlink' /x:/etc/a\\0b", "NUL")
    assert not out.exists()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ((_member("etc/.wh.passwd"),), "yet it holds the whiteout"),
        ((_member("etc/.wh.x"), _member("etc/y", tarfile.LNKTYPE, linkname="etc/.wh.x")),
         "hard link to the whiteout"),
    ],
)  # fmt: skip
def test_from_refuses_a_base_layer_verify_rejects(
    tmp_path: Path, layer: tuple[Any, ...], message: str
) -> None:
    history = {"created_by": OURS, "comment": "customisation: add /etc"}
    base = _archive(tmp_path / "base.tar", [_store_layer(), (_layer(*layer), history)])
    result, out = _build(tmp_path, "--from", base)
    _input_error(result, str(base), message)
    assert not out.exists()


def test_verify_ends_on_a_size_far_beyond_the_layer(tmp_path: Path) -> None:
    """tarfile skips a member's data by reading it, past the end for as long as the
    size says: 10**23 bytes was a hang."""
    layer = _layer(_member("x", pax_headers={"size": str(10**23)}), _member("y"))
    image = _archive(tmp_path / "i.tar", [(layer, {"created_by": "tool"})])
    command = [*nixlayer_command(), "verify", str(image)]
    result = subprocess.run(command, capture_output=True, check=False, timeout=60)
    assert result.returncode != 0
    assert b"size 100000000000000000000000 is out of range" in result.stdout
