"""Write a checkpoint through a shared memory mapping, closing the descriptor first: the
mapping stays writable after close(fd). Each step: truncate the file to its full size, map it
(libc mmap through ctypes: Python's mmap module would keep a duplicate descriptor open),
close the descriptor, write the first half, pause PAUSE_S (longer than the worker's settle
time and sweep), write the second half, msync and unmap. No inotify event marks the writes
through the mapping and no descriptor is open; only the check of writable shared mappings
keeps the half-written file out of a generation.

CHECKPOINT_DIR/model.bin holds the step (checkpoint_format); CHECKPOINT_LOG gets `start`,
`mapped` and `complete` (after the unmap) per step.
"""

import ctypes
import mmap
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from tests.support.jobs.checkpoint_format import content, log, step_of

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MS_SYNC = 4
MAP_FAILED = ctypes.c_void_p(-1).value

folder = Path(os.environ["CHECKPOINT_DIR"])
journal = Path(os.environ["CHECKPOINT_LOG"])
steps = int(os.environ.get("STEPS", "1000"))
step_s = float(os.environ.get("STEP_S", "0.3"))
pause_s = float(os.environ.get("PAUSE_S", "1.5"))
size = int(os.environ.get("FILE_SIZE", str(1024 * 1024)))

path = folder / "model.bin"
resumed = step_of("model.bin", path.read_bytes()) if path.exists() else None
log(journal, event="start", resumed=resumed, intact=resumed is not None or not path.exists())
folder.mkdir(parents=True, exist_ok=True)
for step in range((resumed or 0) + 1, steps + 1):
    data = content("model.bin", step, size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address in (None, MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap failed")
    os.close(fd)
    log(journal, event="mapped", step=step)
    half = size // 2
    ctypes.memmove(address, data[:half], half)
    time.sleep(pause_s)
    ctypes.memmove(address + half, data[half:], size - half)
    libc.msync(address, size, MS_SYNC)
    libc.munmap(address, size)
    log(journal, event="complete", step=step)
    time.sleep(step_s)
