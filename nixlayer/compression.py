"""Deterministic layer compression: the same bytes in, the same bytes out, anywhere.

gzip is framed here rather than by zlib's gzip mode, so that no mtime, file name or
operating-system byte can vary; zstd uses fixed parameters, no checksum or size
field that could differ, and one thread per stream (layers run in parallel
instead), so the number of threads never changes the output.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from nixlayer.errors import NixlayerError, carried_by

ALGORITHMS = ("none", "gzip", "zstd")
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
LEVEL_RANGES = {"gzip": (1, 9), "zstd": (1, 19)}
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
# What a stream compressed with each algorithm starts with.
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}

# A gzip member header: magic, deflate, no flags, mtime 0; then XFL and OS 255 (unknown).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


class Compressor(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclass(frozen=True)
class Compression:
    """An algorithm (``none``, ``gzip``, ``zstd``) and its level."""

    algorithm: str = "none"
    level: int | None = None

    @property
    def media_type(self) -> str:
        return layer_media_type(self.algorithm)

    def __bool__(self) -> bool:
        return self.algorithm != "none"

    def compressor(self) -> Compressor:
        if self.algorithm == "gzip":
            return _Gzip(self.level or DEFAULT_LEVELS["gzip"])
        if self.algorithm == "zstd":
            return _zstd(self.level or DEFAULT_LEVELS["zstd"])
        raise AssertionError(f"no compressor for {self.algorithm}")


def layer_media_type(algorithm: str | None) -> str:
    """The OCI media type of a layer blob compressed with ``algorithm`` (``none`` or
    None: a plain tar). The one place that maps compression to media type; see
    ``media_type_compression`` for the way back."""
    suffix = "" if algorithm in (None, "none") else f"+{algorithm}"
    return LAYER_MEDIA_TYPE + suffix


def media_type_compression(media_type: str) -> str | None:
    """``gzip`` or ``zstd`` where a layer's media type says so, in OCI's spelling
    (``...tar+gzip``) or Docker's (``...diff.tar.gzip``); None for a plain tar, or a
    media type that names no compression nixlayer reads."""
    for algorithm in ("gzip", "zstd"):
        if media_type.endswith((f"+{algorithm}", f".{algorithm}")):
            return algorithm
    return None


def magic_compression(head: bytes) -> str | None:
    """``gzip`` or ``zstd`` if ``head``, a stream's first bytes (four are enough),
    starts with that format's magic, else None."""
    return next((name for prefix, name in _MAGIC.items() if head.startswith(prefix)), None)


def parse_compression(algorithm: str, level: int | None) -> Compression:
    with carried_by("compression"):
        if algorithm not in ALGORITHMS:
            raise NixlayerError(f"{algorithm}: expected one of {', '.join(ALGORITHMS)}")
    with carried_by("compress_level"):
        if level is not None:
            if algorithm == "none":
                raise NixlayerError(f"{level}: needs gzip or zstd compression")
            low, high = LEVEL_RANGES[algorithm]
            if not low <= level <= high:
                raise NixlayerError(f"{level}: {algorithm} takes {low} to {high}")
    return Compression(algorithm, level)


class _Gzip:
    """One gzip member: fixed header, raw deflate, CRC-32 and length trailer."""

    def __init__(self, level: int) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._length = 0
        extra_flags = {9: 2, 1: 4}.get(level, 0)
        self._header: bytes | None = _GZIP_HEADER + bytes((extra_flags, 255))

    def compress(self, data: bytes | memoryview) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)
        out = self._deflate.compress(data)
        if self._header is not None:
            out, self._header = self._header + out, None
        return out

    def flush(self) -> bytes:
        header, self._header = self._header or b"", None
        trailer = struct.pack("<II", self._crc, self._length & 0xFFFFFFFF)
        return header + self._deflate.flush() + trailer


def _zstd(level: int) -> Compressor:
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=0, write_checksum=False, write_content_size=False, write_dict_id=False
    )
    return zstandard.ZstdCompressor(compression_params=params).compressobj()


class CompressedStream:
    """A writer that compresses all that passes through it into ``out``: a whole
    docker-archive compressed, as nixpkgs' ``compressor`` option does."""

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._out = out
        self._compressor = compression.compressor()

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(self._compressor.compress(data))
        return len(data)

    def finish(self) -> None:
        self._out.write(self._compressor.flush())
