"""The one error type for problems with the user's input, and how its messages show
paths: every message is one line, however odd the names in it."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# A path longer than this is shown as its head and tail: a store tree can nest
# folders to PATH_MAX (4096 bytes), and a message must stay a line a person reads.
SHOWN_PATH = 160

_KINDS = {
    stat.S_IFREG: "a file",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


class NixlayerError(Exception):
    """A problem with the input (a file, a value, a store tree) that the user can fix.

    Raised where the problem is found, with a message that starts with the value or
    file and says what is wrong with it; paths in it go through ``show_path``. Where
    the value came in as an option of the API, ``option`` names that option's field
    (``max_layers``, ``base``), set by ``carried_by``: each front end names the option
    its own way (the CLI ``--max-layers``, a Nix build's settings ``max-layers``), so
    no flag is written into the library. The CLI prints one line and exits 2.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option
        self.in_file = False  # about what a file holds: see ``in_a_file``

    def __str__(self) -> str:
        return self.worded(str)

    def worded(self, name_of: Callable[[str], str]) -> str:
        """The message, after the option that carried the value as ``name_of`` names it;
        alone where it is about what a file holds (``in_a_file``)."""
        if self.option is None or self.in_file:
            return self.message
        space = "" if self.message.startswith(":") else " "  # ": empty": no value to show
        return f"{name_of(self.option)}{space}{self.message}"


@contextmanager
def carried_by(option: str) -> Iterator[None]:
    """Errors raised in this block about a value are about ``option``'s value, unless a
    deeper block said which option carried it."""
    try:
        yield
    except NixlayerError as error:
        if error.option is None:
            error.option = option
        raise


@contextmanager
def in_a_file() -> Iterator[None]:
    """Errors raised in this block are about what a file holds (a member of an image,
    the bytes of a store path), found once the value that led there was found to name
    it; their messages name that file (``x.tar: index.json is missing``), and are worded
    without an option before them. ``carried_by`` still records which option led there."""
    try:
        yield
    except NixlayerError as error:
        error.in_file = error.option is None  # else it is about the option's own value
        raise


def one_line(text: str) -> str:
    """``text`` with every character that would break the line or reach the terminal
    as a control escaped (a newline as ``\\n``), and each byte of a name that is not
    UTF-8 (``os.fsdecode`` keeps it as a lone surrogate) as ``\\xNN``."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1]


def show_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A path as an error message shows it: on one line (``one_line``) and at most
    ``SHOWN_PATH`` characters, an over-long one as its head (where it is) and its tail
    (what it is) around ``...``."""
    text = one_line(os.fsdecode(path))
    if len(text) <= SHOWN_PATH:
        return text
    half = (SHOWN_PATH - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def kind_of(mode: int) -> str:
    """The file type of an ``st_mode`` in words: 'a file', 'a character device'..."""
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def what_is(path: str | bytes | os.PathLike[str]) -> str:
    """What ``path`` leads to, in words, for saying why it is not what was expected:
    ``kind_of`` it (through symlinks), 'nothing', or why it cannot be looked at."""
    try:
        return kind_of(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return "nothing"
    except OSError as error:
        return f"out of reach ({error.strerror})"


def missing_folder(folder: str | os.PathLike[str]) -> str:
    """Why ``folder``, which is not a folder, is not: it does not exist, the nearest of
    its parents that exists is no folder (``-o file/out.tar`` when ``file`` is a file:
    "does not exist" would send the user looking for the wrong thing), or the way to it
    cannot be followed (a name too long, a folder that may not be searched)."""
    parent = os.path.abspath(folder)
    while True:
        try:
            mode = os.stat(parent).st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(parent)  # "/" always exists: the loop ends
        except OSError as error:
            return f"{show_path(parent)}: {error.strerror}"
    if stat.S_ISDIR(mode):
        return f"the folder {show_path(folder)} does not exist"
    return f"{show_path(parent)} is {kind_of(mode)}, not a folder"


def reason(error: Exception) -> str:
    """Why an operation failed, in words, for a message that names the file already:
    an ``OSError``'s ``strerror`` (not "[Errno 2] No such file or directory: 'x'"),
    and no bytes literal (gzip says "Not a gzipped file (b'...')")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, gzip.BadGzipFile):
        return "not a gzip stream"
    return one_line(str(error)) or type(error).__name__
