"""Streaming gzip: any chunking, several members, truncation detected."""

from __future__ import annotations

import gzip
import os

import pytest

from kelpie.storage.gzip_stream import MAX_PIECE, Gunzip, Gzip


def gunzip_in_chunks(data: bytes, chunk: int) -> bytes:
    gunzip = Gunzip()
    out = bytearray()
    for start in range(0, len(data), chunk):
        for piece in gunzip.feed(data[start : start + chunk]):
            assert len(piece) <= MAX_PIECE
            out += piece
    out += gunzip.finish()
    return bytes(out)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**9])
def test_gunzip_matches_gzip_module_for_any_chunking(chunk: int) -> None:
    original = os.urandom(20_000) + b"repetitive " * 5000
    assert gunzip_in_chunks(gzip.compress(original), chunk) == original


def test_concatenated_members_decompress_to_the_concatenation() -> None:
    data = gzip.compress(b"first\n") + gzip.compress(b"second\n")
    assert gunzip_in_chunks(data, 5) == b"first\nsecond\n"


def test_highly_compressible_data_comes_out_in_bounded_pieces() -> None:
    zeros = bytes(3 * MAX_PIECE + 5)
    assert gunzip_in_chunks(gzip.compress(zeros), 10**9) == zeros


def test_truncated_stream_is_an_error() -> None:
    data = gzip.compress(os.urandom(10_000))
    with pytest.raises(EOFError):
        gunzip_in_chunks(data[:-20], 1000)


def test_empty_input_is_an_empty_file() -> None:
    assert Gunzip().finish() == b""


def test_gzip_output_is_readable_by_the_gzip_module() -> None:
    compressor = Gzip()
    parts = [compressor.feed(b"abc" * 1000), compressor.feed(b"def"), compressor.finish()]
    assert gzip.decompress(b"".join(parts)) == b"abc" * 1000 + b"def"
