"""Streaming gzip in both directions, so no file is ever held whole in memory."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

GZIP_WBITS = 31  # zlib's "gzip header and trailer" mode
GZIP_LEVEL = 6
MAX_PIECE = 4 * 1024 * 1024  # bound on output per decompress step (a 1000:1 file stays small)


class Gunzip:
    """Decompresses a gzip stream fed in arbitrary chunks (several members are concatenated,
    as `gzip` and `cat a.gz b.gz` produce)."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(wbits=GZIP_WBITS)
        self._received = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the decompressed bytes `data` completes, at most MAX_PIECE at a time."""
        while data:
            self._received = True
            if self._inflater.eof:
                self._inflater = zlib.decompressobj(wbits=GZIP_WBITS)
            piece = self._inflater.decompress(data, MAX_PIECE)
            if piece:
                yield piece
            data = (
                self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
            )

    def finish(self) -> bytes:
        """The last bytes; raises EOFError if the stream stopped inside a member."""
        tail = self._inflater.flush()
        if self._received and not self._inflater.eof:
            raise EOFError("gzip stream ended before its end marker")
        return tail


class Gzip:
    """Compresses chunks into one gzip member."""

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        return self._deflater.compress(data)

    def finish(self) -> bytes:
        return self._deflater.flush()
