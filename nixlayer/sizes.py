"""Sizes as people read and write them: the tables print ``1.5 MiB`` and the notes
say it, ``--fail-over 10M`` reads it back. A leaf module: every stage may use it."""

from __future__ import annotations

import re

from nixlayer.errors import NixlayerError


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# What parse_size reads after the number: the binary units human_size prints, and
# their one-letter forms; K is 1024, as in KiB, so that a size copied from a table
# means what the table meant. KB and MB are refused: they mean 1000 to some people.
_SIZE_UNITS = {"": 0, "b": 0, "k": 1, "kib": 1, "m": 2, "mib": 2, "g": 3, "gib": 3,
               "t": 4, "tib": 4}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+) ?([a-z]*)", re.ASCII | re.IGNORECASE)


def parse_size(value: str) -> int:
    """A number of bytes as people write it and the tables print it: ``1000``,
    ``10M``, ``10MiB``, ``1.5 GiB``, ``10 KiB`` (binary units; a fraction of a byte is
    dropped)."""
    from decimal import Decimal  # only --fail-over needs it: not on every start-up

    match = _SIZE.fullmatch(value.strip())
    if not match or match[2].lower() not in _SIZE_UNITS:
        raise NixlayerError(
            f"{value}: not a size (bytes, or a number and K, M, G, T or KiB, "
            "MiB, GiB, TiB: units of 1024)"
        )
    return int(Decimal(match[1]) * 1024 ** _SIZE_UNITS[match[2].lower()])
