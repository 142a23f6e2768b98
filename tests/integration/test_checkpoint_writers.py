"""Which files under a folder some process holds open for writing, read from the real /proc:
descriptors opened for writing, and writable shared mappings that outlive their descriptor."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kelpie.worker.checkpoints.writers import open_for_writing

MAP_SIZE = 4096


def writers(folder: Path) -> set[str]:
    return open_for_writing([str(folder.resolve())])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint"
    path.mkdir()
    return path


def test_a_file_open_for_writing_is_seen_until_closed(folder: Path) -> None:
    path = folder / "model.pt"
    with path.open("wb"):
        assert writers(folder) == {str(path.resolve())}
    assert writers(folder) == set()


@pytest.mark.parametrize("mode", ["r+b", "ab"])
def test_appending_and_updating_count_as_writing(folder: Path, mode: str) -> None:
    path = folder / "model.pt"
    path.write_bytes(b"x")
    with path.open(mode):
        assert writers(folder) == {str(path.resolve())}


def test_readers_and_files_elsewhere_do_not_count(folder: Path, tmp_path: Path) -> None:
    (folder / "model.pt").write_bytes(b"x")
    with (folder / "model.pt").open("rb"), (tmp_path / "elsewhere.pt").open("wb"):
        assert writers(folder) == set()


def test_another_process_writing_is_seen(folder: Path) -> None:
    path = folder / "model.pt"
    code = "import sys, time; f = open(sys.argv[1], 'wb'); print(flush=True); time.sleep(60)"
    with subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            process.stdout.readline()  # the file is open
            assert writers(folder) == {str(path.resolve())}
        finally:
            process.kill()
    assert writers(folder) == set()


def test_a_deleted_file_still_open_is_no_longer_in_the_folder(folder: Path) -> None:
    path = folder / "model.pt"
    with path.open("wb"):
        path.unlink()
        assert writers(folder) == set()


@pytest.fixture
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib


def mapped(libc: ctypes.CDLL, path: Path, flags: int, prot: int) -> Iterator[int]:
    """Map `path`, close the descriptor at once, yield the address, unmap."""
    fd = os.open(path, os.O_RDWR if prot & mmap.PROT_WRITE else os.O_RDONLY)
    try:
        address = libc.mmap(None, MAP_SIZE, prot, flags, fd, 0)
    finally:
        os.close(fd)
    assert address not in (None, ctypes.c_void_p(-1).value)
    try:
        yield address
    finally:
        libc.munmap(address, MAP_SIZE)


def test_a_shared_writable_mapping_counts_after_its_descriptor_is_closed(
    folder: Path, libc: ctypes.CDLL
) -> None:
    path = folder / "model.pt"
    path.write_bytes(b"\0" * MAP_SIZE)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    for _address in mapped(libc, path, mmap.MAP_SHARED, prot):
        assert writers(folder) == {str(path.resolve())}
    assert writers(folder) == set()


@pytest.mark.parametrize(
    ("flags", "prot"),
    [
        (mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE),  # copy-on-write: the file stays
        (mmap.MAP_SHARED, mmap.PROT_READ),
    ],
)
def test_private_or_read_only_mappings_do_not_count(
    folder: Path, libc: ctypes.CDLL, flags: int, prot: int
) -> None:
    path = folder / "model.pt"
    path.write_bytes(b"\0" * MAP_SIZE)
    for _address in mapped(libc, path, flags, prot):
        assert writers(folder) == set()
