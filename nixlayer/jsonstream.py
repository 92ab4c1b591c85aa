"""Strict JSON from a file of any size, with no more of its text in memory than one
entry of a closure.

``json.loads`` needs the whole text, then builds every object of the document beside
it: about 3.4 times the file in memory before nixlayer keeps a byte, so a 1 GB closure
would need 3.4 GB. Here the file is decoded as it is read, into a window of text; the
top two levels of the document (a closure's list or object, and the ``"info"`` object
or exportReferencesGraph lists inside it) are walked here, and each value below them
(one entry) is decoded by ``json``'s own C scanner, so values, numbers and error
messages are exactly ``json``'s. The text of an entry is dropped once it is decoded,
and ``compact`` makes each decoded object as small as its reader needs. Entries that lie
whole in the window are decoded together, a window at a time (see ``_Loader.batch``):
one call of the scanner instead of one an entry, and the same values.

JSON is strict: ``NaN`` and ``Infinity``, and a key twice in one object, are errors.
Every problem is a one-line ``NixlayerError`` naming the source and where in it.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from json.decoder import scanstring
from typing import IO, Any

from nixlayer.errors import NixlayerError, reason

Fields = dict[str, Any]
_CHUNK = 1 << 20  # bytes read and decoded at once
_WHITESPACE = " \t\n\r"
_SPACES = re.compile(r"[ \t\n\r]*").match
_SHOW = 80
_LONGEST_TOKEN = 16  # "-Infinity", a \uXXXX escape: what a cut may leave unfinished
# The most text one entry or line may span: a real one is a few KiB (a path with
# 10,000 references, under 1 MiB). Beyond it the input never ends (/dev/zero, a pipe
# that repeats) or is no closure, and is refused before the memory runs out.
_LONGEST_VALUE = 64 << 20
_BATCH = 1 << 16  # the least text worth decoding as a batch of members


class TextWindow:
    """The file's text, decoded as it is read: ``text[pos:]`` is what is not consumed
    yet. Consumed text is dropped when more is read, keeping positions for messages."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        self.source = source
        self.text = ""
        self.pos = 0
        self.eof = False
        self._file = file
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._bytes_read = 0
        self._dropped = 0  # characters before ``text``
        self._dropped_lines = 0  # newlines among them
        self._last_newline = -1  # absolute position of the last dropped newline
        self.ensure(1)
        self.text = self.text.removeprefix("\ufeff")  # editors on Windows add one

    def first_visible(self) -> str:
        """The first character that is not whitespace (any kind), without consuming
        anything; a file of whitespace alone is empty."""
        seen = 0  # characters after ``pos`` known to be whitespace
        while True:
            found = next((c for c in self.text[self.pos + seen :] if not c.isspace()), "")
            if found:
                return found
            seen = len(self.text) - self.pos
            if not self._more():
                raise NixlayerError(f"{self.source}: the file is empty")

    def _more(self) -> bool:
        """Read and decode the next chunk; False at the end of the file."""
        if self.eof:
            return False
        if len(self.text) - self.pos > _LONGEST_VALUE:
            raise NixlayerError(
                f"{self.source}: one value or line goes on for over "
                f"{_LONGEST_VALUE >> 20} MiB: not a closure"
            )
        try:
            data = self._file.read(max(_CHUNK, len(self.text) - self.pos))
        except OSError as error:
            raise NixlayerError(f"{self.source}: cannot read: {reason(error)}") from None
        try:
            decoded = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as error:
            offset = self._bytes_read + error.start - len(self._decoder.getstate()[0])
            raise NixlayerError(
                f"{self.source}: not valid UTF-8 "
                f"(byte 0x{error.object[error.start]:02x} at offset {max(offset, 0)})"
            ) from None
        self._bytes_read += len(data)
        self.eof = not data
        self._drop_consumed()
        self.text += decoded
        return True

    def _drop_consumed(self) -> None:
        consumed = self.text[: self.pos]
        newlines = consumed.count("\n")
        if newlines:
            self._dropped_lines += newlines
            self._last_newline = self._dropped + consumed.rindex("\n")
        self._dropped += self.pos
        self.text = self.text[self.pos :]
        self.pos = 0

    def ensure(self, count: int) -> bool:
        """At least ``count`` characters after ``pos``, unless the file ends first.
        Returns whether anything was read: if so, ``text`` has moved, and positions
        in it taken before are no longer valid."""
        read = False
        while len(self.text) - self.pos < count and self._more():
            read = True
        return read

    def skip_whitespace(self) -> str:
        """The next character that is not whitespace, or "" at the end of the file."""
        while True:
            text, pos = self.text, self.pos
            while pos < len(text) and text[pos] in _WHITESPACE:
                pos += 1
            self.pos = pos
            if pos < len(text):
                return text[pos]
            if not self._more():
                return ""

    def lines(self) -> Iterator[str]:
        """The text not consumed yet, a line at a time without its newline, read as it
        goes (for formats that are not JSON)."""
        while True:
            end = self.text.find("\n", self.pos)
            if end >= 0:
                line, self.pos = self.text[self.pos : end], end + 1
                yield line
            elif not self._more():
                if self.pos < len(self.text):
                    line, self.pos = self.text[self.pos :], len(self.text)
                    yield line
                return

    def offset(self, pos: int) -> int:
        """Position ``pos`` of ``text`` as a position in the whole text, which stays
        valid when ``text`` moves."""
        return self._dropped + pos

    def where(self, pos: int) -> tuple[int, int]:
        """Line and column (from 1) of position ``pos`` of ``text``."""
        before = self.text[:pos]
        newlines = before.count("\n")
        line = self._dropped_lines + newlines + 1
        if newlines:
            return line, pos - before.rindex("\n")
        return line, self._dropped + pos - self._last_newline

    def fail(self, message: str, pos: int) -> NixlayerError:
        """``json``'s message for a problem at ``pos``; at the end of the file (or
        inside a string there), the file was cut off."""
        if self.eof and (pos >= len(self.text.rstrip()) or message.startswith("Unterminated")):
            return NixlayerError(f"{self.source}: truncated JSON (the file ends inside a value)")
        line, column = self.where(pos)
        return NixlayerError(
            f"{self.source}: not valid JSON: {message} at line {line} column {column}"
        )


def load(
    window: TextWindow, compact: Callable[[Fields], Any], stream: Callable[[str], bool]
) -> Any:
    """The JSON document in ``window``, each object below the top level given to
    ``compact`` (its keys checked first), whose result stands for it.

    The top level, if a list or an object, is walked here member by member; so is a
    list or object that is a member of a top-level object under a key that
    ``stream`` accepts. Anything else is one value for ``json``'s scanner.
    """
    try:
        return _Loader(window, compact, stream).document()
    except RecursionError:
        raise NixlayerError(f"{window.source}: not valid JSON: nested too deeply") from None


class _Loader:
    def __init__(
        self, window: TextWindow, compact: Callable[[Fields], Any], stream: Callable[[str], bool]
    ) -> None:
        self.window = window
        self.stream = stream
        source = window.source

        def reject_constant(name: str) -> None:
            raise NixlayerError(f"{source}: not valid JSON: {name} is not a JSON number")

        def fields(pairs: list[tuple[str, Any]]) -> Any:
            self.members = pairs  # the outermost object decoded last is a batch's own
            unique = dict(pairs)
            if len(unique) != len(pairs):
                self.unique(pairs)  # raises
            return compact(unique)

        decoder = json.JSONDecoder(parse_constant=reject_constant, object_pairs_hook=fields)
        self._scan = decoder.scan_once
        self.members: list[tuple[str, Any]] = []
        self._no_batch_before = 0  # where a batch of this container failed: one by one up to here

    def unique(self, pairs: list[tuple[str, Any]]) -> Fields:
        """json keeps the last of two equal keys silently; a closure with a store path
        listed twice under one name must not lose one of them unnoticed."""
        fields = dict(pairs)
        if len(fields) != len(pairs):
            seen: set[str] = set()
            twice = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise NixlayerError(
                f"{self.window.source}: the key {show_json(twice)} appears twice in one object"
            )
        return fields

    def document(self) -> Any:
        window = self.window
        value = self.container(self.stream)
        if window.skip_whitespace():
            raise window.fail("Extra data", window.pos)
        return value

    def container(self, stream_members: Callable[[str], bool]) -> Any:
        """The value at ``pos``: walked member by member if a list or object, whose
        members are walked too if ``stream_members`` accepts their key."""
        first = self.window.skip_whitespace()
        # Where a batch of the container around failed is no matter for this one.
        held, self._no_batch_before = self._no_batch_before, 0
        try:
            if first == "[":
                return self.array()
            if first == "{":
                return self.object(stream_members)
            return self.value()
        finally:
            self._no_batch_before = held

    def cut(self, message: str, pos: int) -> bool:
        """Whether an error may be only the end of the window, which cuts a value
        short: then more text is read (twice as much, so that a long value costs
        linear time), and the caller tries again from ``pos``."""
        window = self.window
        near_end = pos >= len(window.text) - _LONGEST_TOKEN
        if window.eof or not (near_end or message.startswith("Unterminated")):
            return False
        return window.ensure(2 * (len(window.text) - window.pos) + 1)

    def batch(self, opening: str, closing: str) -> Any:
        """The members of a list (``[`` ``]``) or object (``{`` ``}``) from ``pos`` up to
        the window's last ``}``, decoded as one list or object by json's scanner, and
        ``pos`` moved past them; None, and ``pos`` kept, where that is not worth it or
        does not decode (then the members up to that ``}`` go one by one).

        It decodes exactly when the cut lies between two members of this container:
        inside a string the string would not end, inside a nested value the brackets
        would not match, and after the container's own end there would be text left.
        The members are then those the one-by-one walk finds, decoded by the same
        scanner with the same hooks. Where it does not decode (the window cuts a string
        holding a ``}``, or the input is in error), the walk one by one finds the error
        and words it as ever.
        """
        window = self.window
        text, pos = window.text, window.pos
        if window.offset(pos) < self._no_batch_before:
            return None
        cut = before = len(text)
        for _ in range(2):  # the window's last "}" may close this container: one before
            cut = text.rfind("}", pos, before) + 1
            before = cut - 1
            if cut - pos < _BATCH:
                break
            joined = opening + text[pos:cut] + closing
            try:
                value, end = self._scan(joined, 0)
            except (StopIteration, ValueError, NixlayerError, RecursionError):
                continue
            if end == len(joined):
                window.pos = cut
                return value
        self._no_batch_before = window.offset(max(cut, pos))
        return None

    def value(self) -> Any:
        """One value, by json's scanner; read on while it might go on past the window
        (a number cut at its end would otherwise be read short)."""
        window = self.window
        if window.pos >= len(window.text) or window.text[window.pos] in _WHITESPACE:
            window.skip_whitespace()
        while True:
            try:
                value, end = self._scan(window.text, window.pos)
            except StopIteration as stop:
                if self.cut("Expecting value", stop.value):
                    continue
                raise window.fail("Expecting value", stop.value) from None
            except json.JSONDecodeError as error:
                if self.cut(error.msg, error.pos):
                    continue
                raise window.fail(error.msg, error.pos) from None
            except ValueError:  # an integer beyond Python's digit limit
                raise NixlayerError(
                    f"{window.source}: not valid JSON: a number has too many digits"
                ) from None
            near_end = end > len(window.text) - _LONGEST_TOKEN  # "1." may go on "1.5"
            if not near_end or not window.ensure(len(window.text) - window.pos + 1):
                window.pos = end
                return value

    def array(self) -> list[Any]:
        window = self.window
        window.pos += 1
        items: list[Any] = []
        if window.skip_whitespace() == "]":
            window.pos += 1
            return items
        scan, spaces = self._scan, _SPACES
        while True:
            batch = self.batch("[", "]")
            if batch is not None:
                items += batch
                text, end = window.text, window.pos
            else:
                # Most items lie well inside the window: scanned here at once. One near
                # its end, or in error, goes the careful way (``value``).
                text, pos = window.text, window.pos
                limit = len(text) - _LONGEST_TOKEN
                try:
                    value, end = scan(text, pos) if pos < limit else (None, len(text))
                except (StopIteration, ValueError):
                    end = len(text)
                if end > limit:
                    value = self.value()
                    text, end = window.text, window.pos
                items.append(value)
            end = spaces(text, end).end()
            if end < len(text) and text[end] == ",":
                window.pos = spaces(text, end + 1).end()
                continue
            window.pos = end
            if self.ends("]"):
                return items

    def object(self, stream_members: Callable[[str], bool]) -> Fields:
        window = self.window
        window.pos += 1
        pairs: list[tuple[str, Any]] = []
        if window.skip_whitespace() == "}":
            window.pos += 1
            return {}
        while True:
            start = window.pos
            if self.batch("{", "}") is not None:
                if not any(stream_members(key) for key, _ in self.members):
                    pairs += self.members
                    if self.ends("}"):
                        return self.unique(pairs)
                    continue
                # A member to walk: one by one, as far as the batch went.
                self._no_batch_before = window.offset(window.pos)
                window.pos = start
            key = self.key()
            if window.skip_whitespace() != ":":
                raise window.fail("Expecting ':' delimiter", window.pos)
            window.pos += 1
            if stream_members(key):
                pairs.append((key, self.container(lambda key: False)))
            else:
                pairs.append((key, self.value()))
            if self.ends("}"):
                return self.unique(pairs)

    def ends(self, closing: str) -> bool:
        """Past what follows an item or member: True at the ``closing`` character of its
        container, False at the next one (after the comma and any whitespace)."""
        window = self.window
        following = self.next_visible()
        window.pos += 1
        if following == closing:
            return True
        if following != ",":
            raise window.fail("Expecting ',' delimiter", window.pos - 1)
        window.skip_whitespace()
        return False

    def next_visible(self) -> str:
        """``skip_whitespace``, quicker where the next character is visible already."""
        window = self.window
        if window.pos < len(window.text) and (c := window.text[window.pos]) not in _WHITESPACE:
            return c
        return window.skip_whitespace()

    def key(self) -> str:
        window = self.window
        if window.skip_whitespace() != '"':
            raise window.fail("Expecting property name enclosed in double quotes", window.pos)
        while True:
            try:
                key, end = scanstring(window.text, window.pos + 1)
            except json.JSONDecodeError as error:
                if self.cut(error.msg, error.pos):
                    continue
                raise window.fail(error.msg, error.pos) from None
            window.pos = end
            return key


def show_json(value: Any) -> str:
    """A value as JSON on one line of at most 80 characters, for an error message."""
    text = json.dumps(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."
